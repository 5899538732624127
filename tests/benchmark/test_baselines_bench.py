"""`gsal-edge bench --preset tiny --strategies badge,ppal,random` end to end: real tiny models, real training,
the box-head round inputs, picks with rationale, and the report's tables with the new rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.slow
def test_badge_and_ppal_run_through_the_bench_cli(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from gsal_cli.commands.bench import bench
    from gsal_edge.models.tiny_models import write_tiny_models

    write_tiny_models(tmp_path / "models")
    conf = tmp_path / "fields.yaml"
    conf.write_text(f"data:\n  cache_dir: {tmp_path / 'data'}\n")
    app = typer.Typer()
    app.command()(bench)
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["--out", str(run), "--preset", "tiny", "--strategies", "badge,ppal,random",
                                   "--models", str(tmp_path / "models"), "--config", str(conf), "--threads", "1",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    info = json.loads((run / "run.json").read_text())
    assert info["strategies"] == ["badge", "ppal", "random"]
    pool = set(json.loads((run / "split.json").read_text())["pool"])
    for name in ("badge", "ppal"):
        st = json.loads((run / "results" / name / "seed-0.json").read_text())
        assert st["finished"] and len(st["labeled"]) == info["labeled_sizes"][-1] and set(st["labeled"]) <= pool
        first = st["rounds"][0]
        b = info["labeled_sizes"][1] - info["labeled_sizes"][0]
        assert len(first["picks"]) == b and first["times"]["score"] > 0  # the box-head pass counts as scoring
        sel = json.loads((run / "picks" / name / "seed-0" / "round-00.json").read_text())
        assert [p["rationale"]["strategy"] for p in sel["picks"]] == [name] * b
        assert all(p["sentence"].startswith(f"picked by {name}") for p in sel["picks"])
    ppal = json.loads((run / "picks" / "ppal" / "seed-0" / "round-00.json").read_text())
    assert set(ppal["info"]["class_weights"]) == set(info["classes"])
    assert all(1.0 <= w <= 1.2 + 1e-9 for w in ppal["info"]["class_weights"].values())
    report = (run / "report.md").read_text()
    for name in ("badge", "ppal", "random"):
        assert f"| {name} |" in report
