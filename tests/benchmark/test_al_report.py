"""Benchmark report: tables (mean ± std over seeds, best in bold, partial runs), plots and gallery,
from a hand-made run folder whose numbers are known."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gsal_edge.benchmark.report import metric_table, write_report
from gsal_edge.benchmark.run_data import RunData, instances_f1_correlation, load_run
from gsal_edge.data.synthetic.generator import write_png16


def _round(r: int, budget: float, f1: float, covered: int, picks: list[dict] | None = None) -> dict:
    rec = {"round": r, "budget": budget, "n_labeled": 10 * (r + 1),
           "metrics": {"f1": f1, "map50": f1 / 2, "ap": f1 / 4,
                       "per_class": {"void": {"ap50": f1, "ap": f1 / 3}, "petal": {"ap50": None, "ap": None}}},
           "instances_per_class": {"void": 5 + r, "petal": covered}, "instances": 5 + r + covered,
           "rare": {"classes": ["petal"], "covered": ["petal"] * covered, "n_covered": covered, "n_rare": 1,
                    "instances": covered},
           "times": {"train": 2.0, "eval": 1.0, "score": 3.0 if picks is not None else 0.0, "select": 0.01,
                     "epochs": 1},
           "shared_round0": False}
    if picks is not None:
        rec["picks"] = picks
    return rec


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    img = tmp_path / "slice.png"
    write_png16(img, (np.linspace(0, 60000, 64 * 64).reshape(64, 64)).astype(np.uint16))
    pick = {"image_id": "s1", "rank": 1, "acquisition": 2.5, "path": str(img),
            "sentence": "picked for a rare concept: petal (count 0 < tau 1)", "gt": [[[10, 10, 20, 20], "petal"]]}
    info = {
        "strategies": ["gsal", "random", "gsal[gamma=1]"],
        "strategy_slugs": {"gsal": "gsal", "random": "random", "gsal[gamma=1]": "gsal__gamma=1"},
        "label_modes": {"gsal": "typed", "random": "typed", "gsal[gamma=1]": "typed"},
        "budgets": [0.1, 0.2], "labeled_sizes": [10, 20], "seeds": [0, 1],
        "config": {"preset": "test", "detector": "tiny", "train_iters": 4, "step": 0.1, "rare_fraction": 0.2,
                   "gallery_picks": 2, "sweep_base": "gsal", "data": {"window": None}},
        "sweep": {"gamma": [[0.5, "gsal"], [1.0, "gsal[gamma=1]"]]},
        "data": {"path": None, "n_images": 100, "root": str(tmp_path)}, "pool_size": 80, "test_size": 20,
        "classes": ["void", "petal"], "pool_class_counts": {"void": 50, "petal": 3}, "rare_classes": ["petal"],
        "graph": "thin-film-ct", "models": {"prior": "p", "prior_fingerprint": "abc", "clip": "c"},
        "git": {"commit": "deadbeef", "dirty": False}, "versions": {"torch": "x"}, "threads": 1,
    }
    (run / "results" / "gsal").mkdir(parents=True)
    (run / "results" / "random").mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(info))
    for seed, (a, b) in enumerate([(0.2, 0.4), (0.4, 0.6)]):
        st = {"strategy": "gsal", "seed": seed, "rounds": [_round(0, 0.1, a, 0, [pick]), _round(1, 0.2, b, 1)]}
        (run / "results" / "gsal" / f"seed-{seed}.json").write_text(json.dumps(st))
    st = {"strategy": "random", "seed": 0, "rounds": [_round(0, 0.1, 0.35, 0, [pick])]}
    (run / "results" / "random" / "seed-0.json").write_text(json.dumps(st))
    return run


def test_table_mean_std_best_and_partial(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert run.strategies == ["gsal", "random"]
    rows = metric_table(run, lambda r: r["metrics"]["f1"])
    assert rows[0] == ["gsal", "0.300 ± 0.100", "0.500 ± 0.100"]  # alone in its column: not bold
    assert rows[1] == ["random", "**0.350 ± 0.000 (n=1)**", "–"]


def test_write_report_files_and_sections(run_dir: Path) -> None:
    path = write_report(run_dir)
    text = path.read_text()
    assert "**Partial run**" in text and "random 1/4" in text
    assert "| gsal | 0.300 ± 0.100 | 0.500 ± 0.100 |" in text
    assert "| gsal | 0.150 ± 0.050 |" in text  # mAP@50 = F1 / 2 in the fixture
    assert "- gsal: 20%, 20%" in text and "- random: not yet" in text
    assert "## Sensitivity" in text and "| 1.0 | `gsal[gamma=1]` | – |" in text
    assert "label mode: typed" in text
    assert "## Labeled instances and F1" in text
    assert "| gsal | **5.0 ± 0.0** | 7.0 ± 0.0 |" in text  # 5 + round + rare instances covered
    assert "follows the labeled instance count" not in text  # one strategy per (seed, round): no comparison
    for png in ("learning_curves.png", "rare_retrieval.png", "sensitivity.png", "instances_f1.png", "gallery.png"):
        assert (run_dir / png).stat().st_size > 5000, png


def test_instances_f1_correlation_compares_strategies_within_seed_and_round() -> None:
    def run_with(f1_of) -> RunData:
        run = RunData(Path("."), {"strategies": ["a", "b", "c"], "budgets": [0.1, 0.2, 0.3], "seeds": [0, 1]})
        for k, s in enumerate(run.info["strategies"]):
            for seed in (0, 1):
                # every seed and round shifts both numbers: the centring must take that out
                run.results.setdefault(s, {})[seed] = [
                    {"round": r, "instances": 10 * r + 3 * k + 50 * seed,
                     "metrics": {"f1": 0.2 * r + 0.3 * seed + f1_of(k)}} for r in range(3)]
        return run

    up = instances_f1_correlation(run_with(lambda k: 0.01 * k))
    assert up is not None and up["n"] == 12  # rounds 1 and 2 of 3 strategies x 2 seeds
    assert up["pearson"] == pytest.approx(1.0) and up["spearman"] == pytest.approx(1.0)
    down = instances_f1_correlation(run_with(lambda k: -0.01 * k))
    assert down is not None and down["spearman"] == pytest.approx(-1.0)
    assert instances_f1_correlation(run_with(lambda k: 0.0)) is None  # F1 does not vary between strategies


def test_sensitivity_includes_the_base_at_its_own_value(run_dir: Path) -> None:
    from gsal_edge.benchmark.run_data import sensitivity_rows

    info = json.loads((run_dir / "run.json").read_text())
    info["sweep"] = {"gamma": [[1.0, "gsal[gamma=1]"], [0.25, "gsal[gamma=0.25]"]]}  # the base value not swept
    info["gsal_configs"] = {"gsal": {"gamma": 0.5, "alpha": 0.5}}
    (run_dir / "run.json").write_text(json.dumps(info))
    rows = sensitivity_rows(load_run(run_dir))["gamma"]
    assert [(v, k) for v, k, _ in rows] == [(0.25, "gsal[gamma=0.25]"), (0.5, "gsal"), (1.0, "gsal[gamma=1]")]
    assert rows[1][2] == [0.4, 0.6] and rows[0][2] == []  # the base's final F1 per seed; a missing point stays empty
    info["sweep"] = {"gamma": [[0.5, "gsal"], [1.0, "gsal[gamma=1]"]]}  # already named: not added twice
    (run_dir / "run.json").write_text(json.dumps(info))
    assert [k for _, k, _ in sensitivity_rows(load_run(run_dir))["gamma"]] == ["gsal", "gsal[gamma=1]"]


def test_missing_run_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run.json"):
        write_report(tmp_path)


def _pick(box: list[float], concept: str) -> dict:
    return {"rationale": {"proposal": {"box": box, "concept": concept}}}


def test_rationale_check_splits_certain_and_uncertain_concepts(run_dir: Path) -> None:
    folder = run_dir / "picks" / "gsal" / "seed-0"
    folder.mkdir(parents=True)
    picks = [{"image_id": "s1", "rationale": {"proposal": {"box": [10, 10, 20, 20], "concept": c, "margin": m}}}
             for c, m in (("petal", 0.3), ("void", 0.02), ("petal", 0.05))]
    (folder / "round-00.json").write_text(json.dumps({"picks": picks}))
    text = write_report(run_dir).read_text()
    # default rationale_margin 0.1: one certain pick (right), two uncertain (one right)
    assert "| gsal | 3 | 1.00 | 0.67 | 2 | 1.00 | 1.00 (n=1) | 0.50 (n=2) |" in text


def test_check_driver_judges_the_driving_proposal() -> None:
    from gsal_edge.benchmark.report import check_driver

    gt = [[[10, 10, 20, 20], "petal"], [[50, 50, 60, 60], "void"]]
    c2c, rare = {"petal": "petal", "void": "void"}, {"petal"}
    right = check_driver({**_pick([11, 11, 21, 21], "petal"), "gt": gt}, c2c, rare)
    assert right == {"on_defect": True, "concept_right": True, "claims_rare": True, "rare_right": True,
                     "margin": None}
    # a rare claim on the void box: on a defect, wrong concept
    wrong = check_driver({**_pick([50, 50, 59, 61], "petal"), "gt": gt}, c2c, rare)
    assert wrong == {"on_defect": True, "concept_right": False, "claims_rare": True, "rare_right": False,
                     "margin": None}
    # on background (IoU 0 with both boxes), and a pick with no driving proposal
    assert check_driver({**_pick([100, 100, 110, 110], "void"), "gt": gt}, c2c, rare)["on_defect"] is False
    assert check_driver({"rationale": {"driver": "hard image"}, "gt": gt}, c2c, rare) is None
    # the class -> concept map applies to the truth
    mapped = check_driver({**_pick([10, 10, 20, 20], "petal"), "gt": [[[10, 10, 20, 20], "Petal"]]},
                          {"Petal": "petal"}, rare)
    assert mapped["rare_right"]


def test_rationale_check_section_reads_the_pick_files(run_dir: Path) -> None:
    folder = run_dir / "picks" / "gsal" / "seed-0"
    folder.mkdir(parents=True)
    picks = [{"image_id": "s1", **_pick([10, 10, 20, 20], "petal")},
             {"image_id": "s1", **_pick([100, 100, 120, 120], "petal")}]
    (folder / "round-00.json").write_text(json.dumps({"picks": picks}))
    text = write_report(run_dir).read_text()
    assert "## Rationale check" in text
    assert "| gsal | 2 | 0.50 | 0.50 | 2 | 0.50 | – | – |" in text  # picks without similarities: no split


def test_check_driver_judges_badge_and_ppal_by_the_detector_class() -> None:
    from gsal_edge.benchmark.report import check_driver

    gt = [[[10, 10, 20, 20], "Petal"]]
    c2c, rare = {"Petal": "petal", "Void": "void"}, {"petal"}
    pick = {"rationale": {"driving_proposal": {"box": [10, 10, 20, 20], "label": "Petal", "score": 0.4}}, "gt": gt}
    assert check_driver(pick, c2c, rare) == {"on_defect": True, "concept_right": True, "claims_rare": True,
                                             "rare_right": True, "margin": None}
    pick["rationale"]["driving_proposal"]["label"] = "Void"
    assert check_driver(pick, c2c, rare)["concept_right"] is False
