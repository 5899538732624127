"""`gsal-edge graph induce`: records with proposal embeddings + a real CLIP text tower -> a loadable graph file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gsal_cli.main import app
from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.acquisition.records import ProposalScore, ScoreRecord, read_jsonl

VOCAB = """
name: test-vocab
fine:
  void: ["a dark round void"]
  crack: ["a thin dark jagged line"]
  inclusion: ["a bright foreign particle"]
  background: ["plain layered film"]
coarse:
  compact_defect: ["a compact defect"]
  linear_defect: ["a straight linear defect"]
abstract:
  dark: ["a dark region"]
  bright: ["a bright region"]
  round: ["a round shape"]
"""


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gsal_edge.models.tiny_models import write_tiny_models

    return write_tiny_models(tmp_path_factory.mktemp("tiny")).clip


def _records(path: Path, clip_dir: Path, vocab: Path, planted: dict[str, int]) -> None:
    """Records whose proposal embeddings sit around the CLIP text embeddings of the planted fine words."""
    from gsal_edge.acquisition.graph_induction import load_vocabulary
    from gsal_edge.models.clip_model import ClipModel, concept_text_embeddings

    v = load_vocabulary(vocab)
    text = concept_text_embeddings(ClipModel.from_folder(clip_dir), v.words["fine"])
    rng = np.random.default_rng(0)
    lines, i = [], 0
    for word, n in planted.items():
        for _ in range(n):
            e = text[word] + 0.02 * rng.standard_normal(text[word].shape)
            rec = ScoreRecord(f"s{i:04d}.png", 0.1, 0.01, [ProposalScore((1.0, 1.0, 5.0, 5.0), 0.5, 0.1, 0.01, "void",
                                                                          {"void": 0.1})],
                              model={"bundle": "sha256:test", "station": ""})
            d = rec.to_dict()
            d["proposals"][0]["embedding"] = [round(float(x), 6) for x in e / np.linalg.norm(e)]
            lines.append(json.dumps(d, separators=(",", ":")))
            i += 1
    path.write_text("\n".join(lines) + "\n")


def test_induce_writes_a_reviewable_graph_the_loader_accepts(clip_dir: Path, tmp_path: Path) -> None:
    vocab = tmp_path / "vocab.yaml"
    vocab.write_text(VOCAB)
    recs = tmp_path / "r.jsonl"
    _records(recs, clip_dir, vocab, {"void": 20, "crack": 15, "background": 30})
    assert len(list(read_jsonl(recs))) == 65  # still ordinary score records
    out, rep = tmp_path / "proposed.yaml", tmp_path / "report.json"
    args = ["graph", "induce", "--records", str(recs), "--clip", str(clip_dir), "--vocab", str(vocab),
            "--out", str(out), "--k", "5", "--coarse", "2", "--name", "tiny", "--report", str(rep)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    g = load_graph(out)
    assert g.name == "tiny" and set(g.defects) == {"void", "crack"}
    report = json.loads(rep.read_text())
    assert report["assigned"] == {"void": 20, "crack": 15, "background": 30}
    text = out.read_text()
    assert "REVIEW before use" in text and "20 proposals" in text and "from 65 proposals" in r.output
    first = out.read_bytes()
    assert CliRunner().invoke(app, args).exit_code == 0 and out.read_bytes() == first  # same seed, same file


def test_induce_explains_missing_embeddings_and_bad_options(clip_dir: Path, tmp_path: Path) -> None:
    recs = tmp_path / "plain.jsonl"
    rec = ScoreRecord("a.png", 0.1, 0.01, [ProposalScore((1.0, 1.0, 5.0, 5.0), 0.5, 0.1, 0.01, "void")])
    recs.write_text(rec.to_json() + "\n")
    out = tmp_path / "p.yaml"
    r = CliRunner().invoke(app, ["graph", "induce", "--records", str(recs), "--clip", str(clip_dir),
                                 "--out", str(out)])
    assert r.exit_code == 2 and "--with-embeddings" in r.output and not out.exists()
    r = CliRunner().invoke(app, ["graph", "induce", "--records", str(recs), "--out", str(out)])
    assert r.exit_code == 2 and "exactly one of --clip" in r.output
