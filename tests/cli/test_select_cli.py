"""`gsal-edge select` and `gsal-edge graph` CLIs: round trip (CliRunner), errors naming file and line,
byte-identical output, and one subprocess call of the installed console script."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gsal_cli.commands import graph as graph_cmd
from gsal_cli.commands.select import select
from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.config import GSALConfig
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord
from gsal_edge.acquisition.score_pool import ScorePool
from gsal_edge.acquisition.selection import gsal_select

app = typer.Typer()
app.command("select")(select)


@app.callback()
def _group() -> None:
    """Keep `select` a named sub-command, as in gsal_cli.main."""


runner = CliRunner()


def records() -> list[ScoreRecord]:
    recs = [ScoreRecord(f"v{i}", float(i), float(i) / 10,
                        [ProposalScore((1, 1, 9, 9), 0.5, float(i), float(i) / 10, "void", {"void": 0.3, "crack": 0.1})],
                        {"entropy": i / 10}) for i in range(1, 10)]
    recs.append(ScoreRecord("r", 5.0, 0.5, [ProposalScore((10, 20, 30, 40), 0.7, 5.5, 0.55, "drill_hole")], {"entropy": 0.0}))
    recs.append(ScoreRecord("e", 1.0, 0.1, [], {"entropy": 0.05}))
    return recs


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    scores = tmp_path / "scores.jsonl"
    scores.write_text("".join(r.to_json() + "\n" for r in records()))
    counts = tmp_path / "counts.json"
    counts.write_text('{"void": 3, "inclusion": 3,\n "petal": 3, "crack": 3}\n')
    return {"scores": scores, "counts": counts, "dir": tmp_path}


def invoke(files: dict[str, Path], out: str, *extra: str):
    args = ["select", "--scores", str(files["scores"]), "--graph", "thin_film_ct", "--budget", "3",
            "--out", str(files["dir"] / out), *extra]
    if "--labeled" not in extra:
        args[1:1] = ["--counts", str(files["counts"])]
    return runner.invoke(app, args)


def test_round_trip_matches_library(files) -> None:
    res = invoke(files, "picks.json")
    assert res.exit_code == 0, res.output
    doc = json.loads((files["dir"] / "picks.json").read_text())
    assert [p["rank"] for p in doc["picks"]] == [1, 2, 3]
    assert set(doc["picks"][0]) == {"image_id", "rank", "acquisition", "rationale", "sentence"}
    assert doc["config"]["lambda"] == 0.5 and doc["config"]["percentile"] == 80.0
    counts = {"void": 3, "inclusion": 3, "petal": 3, "crack": 3}
    lib = gsal_select(ScorePool.from_records(records()), load_graph("thin_film_ct"), counts, GSALConfig(), 3)
    assert [p["image_id"] for p in doc["picks"]] == lib.image_ids
    assert [p["acquisition"] for p in doc["picks"]] == [p.acquisition for p in lib.picks]
    assert doc["picks"][0]["image_id"] == "r"
    assert doc["picks"][0]["sentence"] == "picked for a rare concept: drill_hole (0 labeled, tau_f = 3) in a hard region"


def test_output_is_byte_identical_and_set_applies(files) -> None:
    assert invoke(files, "a.json").exit_code == 0 and invoke(files, "b.json").exit_code == 0
    assert (files["dir"] / "a.json").read_bytes() == (files["dir"] / "b.json").read_bytes()
    res = invoke(files, "c.json", "--set", "gamma=0.25", "--set", "lambda=0")
    assert res.exit_code == 0, res.output
    cfg = json.loads((files["dir"] / "c.json").read_text())["config"]
    assert cfg["gamma"] == 0.25 and cfg["lambda"] == 0.0


def test_config_file_and_strategy(files) -> None:
    cfg = files["dir"] / "cfg.yaml"
    cfg.write_text("mu: 0.25\nbatch_aware: true\n")
    res = invoke(files, "d.json", "--config", str(cfg), "--strategy", "entropy")
    assert res.exit_code == 0, res.output
    doc = json.loads((files["dir"] / "d.json").read_text())
    assert doc["config"]["mu"] == 0.25 and doc["strategy"] == "entropy"
    assert [p["image_id"] for p in doc["picks"]] == ["v9", "v8", "v7"]  # entropy i/10, highest first


@pytest.mark.parametrize("mutate, pattern", [
    (lambda f: f["counts"].write_text('{"void": 3,\n "rust": 1}'), r"counts.json:2: concept 'rust' is not a fine node"),
    (lambda f: f["counts"].write_text('{"void": -3}'), r"counts.json:1: count of 'void' must be a number >= 0"),
    (lambda f: f["scores"].write_text(records()[0].to_json() + "\n{not json\n"), r"scores.jsonl:2: not valid JSON"),
    (lambda f: f["scores"].write_text(records()[0].to_json() + "\n" + records()[0].to_json() + "\n"),
     r"scores.jsonl:2: duplicate image_id 'v1' \(first at line 1\)"),
    (lambda f: f["scores"].write_text(records()[0].to_json() + "\n" + records()[1].to_json().replace('"void"', '"rust"', 1) + "\n"),
     r"scores.jsonl:2 \(image_id='v2'\) proposals\[0\]: concept 'rust' is not a fine node"),
    (lambda f: f["scores"].write_text('{"image_id": "x", "e_rec": "high", "v_den": 1}\n'),
     r"scores.jsonl:1 \(image_id='x'\): field 'e_rec' must be a number"),
])
def test_errors_name_file_and_line(files, mutate, pattern) -> None:
    mutate(files)
    res = invoke(files, "bad.json")
    assert res.exit_code == 2
    assert __import__("re").search(pattern, res.output), res.output
    assert not (files["dir"] / "bad.json").exists()


def test_unknown_set_name_and_missing_concept_mapping(files) -> None:
    res = invoke(files, "x.json", "--set", "bogus=1")
    assert res.exit_code == 2 and "unknown parameter 'bogus'" in res.output and "gamma" in res.output
    files["scores"].write_text(records()[1].to_json().replace('"void"', '"rust"', 1) + "\n")
    res = invoke(files, "y.json", "--set", "missing_concept=background")
    assert res.exit_code == 0, res.output


def test_labeled_coco_replaces_counts(files) -> None:
    coco = files["dir"] / "labeled.json"
    coco.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "void"}, {"id": 2, "name": "drill hole"}],
        "annotations": [{"id": k, "image_id": 1, "category_id": 1 if k < 3 else 2, "bbox": [0, 0, 1, 1],
                         "concept": "crack"} for k in range(4)],
    }))
    res = invoke(files, "l.json", "--labeled", str(coco))
    assert res.exit_code == 0, res.output
    assert json.loads((files["dir"] / "l.json").read_text())["counts"] == {"drill_hole": 1.0, "void": 3.0}
    res = invoke(files, "m.json", "--labeled", str(coco), "--set", "label_mode=binary")
    assert res.exit_code == 0, res.output
    assert json.loads((files["dir"] / "m.json").read_text())["counts"] == {"crack": 4.0}
    both = runner.invoke(app, ["select", "--scores", str(files["scores"]), "--graph", "thin_film_ct", "--budget", "1",
                               "--out", str(files["dir"] / "n.json")])
    assert both.exit_code == 2 and "exactly one of --counts" in both.output


def test_console_script_subprocess(files) -> None:
    exe = Path(sys.executable).parent / "gsal-edge"
    out = files["dir"] / "sub.json"
    proc = subprocess.run([str(exe), "select", "--scores", str(files["scores"]), "--graph", "thin_film_ct",
                           "--counts", str(files["counts"]), "--budget", "3", "--out", str(out)],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "picked for a rare concept: drill_hole" in proc.stdout
    assert invoke(files, "inproc.json").exit_code == 0
    assert out.read_bytes() == (files["dir"] / "inproc.json").read_bytes()  # same bytes across processes


def test_graph_show_and_validate(tmp_path: Path) -> None:
    png = tmp_path / "g.png"
    res = runner.invoke(graph_cmd.app, ["show", "thin_film_ct", "--png", str(png)])
    assert res.exit_code == 0, res.output
    assert "drill_hole" in res.output and "surface" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("fine:\n  void: {abstract: [dark], prompts: [p]}\n")
    res = runner.invoke(graph_cmd.app, ["validate", str(bad)])
    assert res.exit_code == 2 and "bad.yaml:2" in res.output and "missing coarse parent" in res.output
    assert runner.invoke(graph_cmd.app, ["validate", "voc"]).exit_code == 0
