"""Active-learning benchmark: strategy specs, schedule, the diffusion cache, tiny end-to-end runs,
resumption after a kill, COCO/YOLO inputs and the binary label mode. Real models (tiny, random-init,
built by the real builders), real training steps, real scoring, real files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gsal_edge.benchmark.config import BenchConfig, BenchError, expand_strategies, load_preset, parse_strategy
from gsal_edge.benchmark.diffusion_cache import DiffusionCache
from gsal_edge.benchmark.fingerprints import folder_fingerprint
from gsal_edge.benchmark.rounds import Benchmark
from gsal_edge.benchmark.run import run_benchmark
from gsal_edge.benchmark.split import budget_schedule, rare_classes

# ------------------------------------------------------------------------------------ fast units


def test_parse_strategy_with_overrides() -> None:
    s = parse_strategy("gsal[proposal_mode=latent_roi, levels=[fine,coarse]]")
    assert s.base == "gsal"
    assert s.overrides == (("proposal_mode", "latent_roi"), ("levels", "[fine,coarse]"))
    assert s.key == "gsal[proposal_mode=latent_roi,levels=[fine,coarse]]"
    assert "/" not in s.slug and "[" not in s.slug
    assert parse_strategy("entropy").key == "entropy"
    with pytest.raises(BenchError, match="unknown name 'nope'"):
        parse_strategy("nope")
    with pytest.raises(BenchError, match="unknown parameter 'gama'"):
        parse_strategy("gsal[gama=1]")
    with pytest.raises(BenchError, match="not name=value"):
        parse_strategy("gsal[gamma]")


def test_sweep_expands_one_at_a_time() -> None:
    cfg = load_preset("tiny", {"strategies": ["gsal", "random"],
                               "sweep": {"gamma": [0.25, 0.5], "alpha_beta": [0.25]}})
    keys = [s.key for s in expand_strategies(cfg)]
    assert keys == ["gsal", "random", "gsal[gamma=0.25]", "gsal[gamma=0.5]", "gsal[alpha=0.25,beta=0.75]"]
    with pytest.raises(BenchError, match="not sweepable"):
        load_preset("tiny", {"sweep": {"label_mode": ["binary"]}})


def test_budget_schedule_and_rare_classes() -> None:
    fracs, sizes = budget_schedule(1500, 0.01, 0.01, 0.10)
    assert len(fracs) == 10 and fracs[0] == 0.01 and fracs[-1] == 0.1
    assert sizes == [15, 30, 45, 60, 75, 90, 105, 120, 135, 150]
    with pytest.raises(BenchError, match="too small"):
        budget_schedule(20, 0.01, 0.01, 0.05)
    counts = {"void": 300, "inclusion": 250, "crack": 180, "petal": 25, "drill_hole": 20}
    assert rare_classes(counts, 0.2) == ["drill_hole"]
    assert rare_classes(counts, 0.4) == ["drill_hole", "petal"]


def test_model_fingerprint_ignores_training_provenance(tmp_path: Path) -> None:
    m = tmp_path / "prior"
    (m / "unet").mkdir(parents=True)
    (m / "checkpoints").mkdir()
    (m / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-1")
    desc = {"resolution": 128, "scaling_factor": 0.27, "train": {"wall_seconds": {"unet": 261.9}}}
    (m / "gsal_prior.json").write_text(json.dumps(desc))
    (m / "run.json").write_text('{"wall_seconds": 1}')
    (m / "checkpoints" / "last.pt").write_bytes(b"a")
    fp, legacy = folder_fingerprint(m), folder_fingerprint(m, provenance=True)
    # a retrain with bit-identical weights: other timings, run record and checkpoints
    (m / "gsal_prior.json").write_text(json.dumps({**desc, "train": {"wall_seconds": {"unet": 250.0}}}, indent=2))
    (m / "run.json").write_text('{"wall_seconds": 2}')
    (m / "checkpoints" / "last.pt").write_bytes(b"b")
    assert folder_fingerprint(m) == fp and folder_fingerprint(m, provenance=True) != legacy
    (m / "gsal_prior.json").write_text(json.dumps({**desc, "scaling_factor": 0.3}))  # what loading reads
    assert folder_fingerprint(m) != fp
    (m / "gsal_prior.json").write_text(json.dumps(desc))
    assert folder_fingerprint(m) == fp
    (m / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"weights-2")
    assert folder_fingerprint(m) != fp


def test_config_errors_name_the_field() -> None:
    with pytest.raises(BenchError, match="unknown benchmark preset"):
        load_preset("huge")
    with pytest.raises(BenchError, match="init"):
        load_preset("tiny", {"init": 0.5, "budget": 0.3})
    with pytest.raises(BenchError, match="strategies"):
        load_preset("tiny", {"strategies": ["gsal", "gsal"]})


# --------------------------------------------------------------------------- shared real pieces


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gsal_edge.models.tiny_models import write_tiny_models

    root = tmp_path_factory.mktemp("models")
    paths = write_tiny_models(root)
    assert (paths.prior, paths.clip) == (root / "prior", root / "clip")
    return root


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bench_data")


def _cfg(models: Path, cache: Path, **over: object) -> BenchConfig:
    ov = {"models": {"dir": str(models)}, "data": {"cache_dir": str(cache)}, "threads": 1, **over}
    if "data" in over:
        ov["data"] = {"cache_dir": str(cache), **over["data"]}  # type: ignore[dict-item]
    return load_preset("tiny", ov)


def _state(run: Path, slug: str, seed: int = 0) -> dict:
    return json.loads((run / "results" / slug / f"seed-{seed}.json").read_text())


def test_diffusion_cache_is_exact_and_skips_crops(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    bench = Benchmark(_cfg(tiny_models, data_cache), tmp_path / "run", progress=False)
    bench.prepare()
    from gsal_edge.models.detector import build_detector

    det = build_detector("tiny", len(bench.dataset.classes), seed=0)
    det.classes = list(bench.dataset.classes)
    gcfg = bench.gsal_cfgs["gsal"]
    ids = bench.pool_ids[:6]
    plain = bench.scorer_for(gcfg, det)
    first = bench.score_pool(plain, ids)
    misses = bench.diffusion_cache.misses
    assert misses == len(ids) and bench.diffusion_cache.hits == 0
    again = bench.score_pool(plain, ids)
    assert bench.diffusion_cache.hits == len(ids) and bench.diffusion_cache.misses == misses
    assert [r.to_dict() for r in first] == [r.to_dict() for r in again]
    # the same scorer without the cache gives the same numbers
    from gsal_edge.scoring.torch_scorer import scorer_from_models

    fresh = scorer_from_models(det, list(det.classes), bench.prior, bench.clip, bench.graph,
                               **{k: getattr(gcfg, k) for k in ("K", "M", "proposal_mode")}, base_seed=gcfg.seed)
    ref = fresh.score([bench.raw(i) for i in ids], ids, [{k: str(v) for k, v in bench.by_id[i].meta.items()}
                                                         for i in ids])
    for a, b in zip(first, ref):
        assert a.e_rec == pytest.approx(b.e_rec, rel=1e-6)
        assert a.v_den == pytest.approx(b.v_den, rel=1e-6)
    # crop mode: proposal crops are never stored; the cache persists and reloads
    crop = bench.scorer_for(gcfg.replace(proposal_mode="crop"), det)
    n_entries = len(bench.diffusion_cache.entries)
    bench.score_pool(crop, ids)
    assert len(bench.diffusion_cache.entries) == n_entries
    bench.diffusion_cache.save()
    assert len(DiffusionCache(bench.diffusion_cache.path).entries) == n_entries


# ----------------------------------------------------------------------------- end to end (slow)


@pytest.mark.slow
def test_tiny_end_to_end_report(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(tiny_models, data_cache, strategies=["gsal", "random"], seeds=[0])
    run_benchmark(cfg, run, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["strategies"] == ["gsal", "random"]
    assert info["versions"]["torch"] and "commit" in info["git"]
    assert info["config"]["seeds"] == [0] and info["labeled_sizes"] == [6, 9]
    split = json.loads((run / "split.json").read_text())
    assert not set(split["test"]) & set(split["pool"])
    assert split["val"] and not set(split["val"]) & (set(split["pool"]) | set(split["test"]))
    g, r = _state(run, "gsal"), _state(run, "random")
    for st in (g, r):
        assert st["finished"] and [x["round"] for x in st["rounds"]] == [0, 1]
        assert len(st["labeled"]) == 9 and len(set(st["labeled"])) == 9
        assert set(st["labeled"]) <= set(split["pool"])
        assert st["labeled"][:6] == split["init"]["0"]
        picks = st["rounds"][0]["picks"]
        assert len(picks) == 3 and all(p["sentence"] for p in picks)
        assert not {p["image_id"] for p in picks} & set(split["init"]["0"])
        rec = st["rounds"][1]
        assert set(rec["metrics"]) >= {"f1", "f1_macro", "map50", "ap", "per_class", "validation"}
        assert set(rec["times"]) >= {"train", "eval", "score", "select"}
        assert sum(rec["instances_per_class"].values()) == rec["instances"]
    # same initial labeled set -> round 0 trained once and shared
    assert g["rounds"][0]["metrics"] == r["rounds"][0]["metrics"]
    assert r["rounds"][0]["shared_round0"] and not g["rounds"][0]["shared_round0"]
    assert g["rounds"][0]["times"]["score"] > 0 and r["rounds"][0]["times"]["score"] == 0
    sel = json.loads((run / "picks" / "gsal" / "seed-0" / "round-00.json").read_text())
    assert [p["image_id"] for p in sel["picks"]] == [p["image_id"] for p in g["rounds"][0]["picks"]]
    assert "rationale" in sel["picks"][0]
    report = (run / "report.md").read_text()
    assert "| gsal |" in report and "| random |" in report and "label mode: typed" in report
    for png in ("learning_curves.png", "rare_retrieval.png", "gallery.png"):
        assert (run / png).stat().st_size > 5000
    # --report-only regenerates it from the files alone
    (run / "report.md").unlink()
    import typer
    from typer.testing import CliRunner

    from gsal_cli.commands.bench import bench

    app = typer.Typer()
    app.command()(bench)
    res = CliRunner().invoke(app, ["--report-only", str(run)])
    assert res.exit_code == 0, res.output
    assert (run / "report.md").read_text() == report


class _Kill(RuntimeError):
    pass


@pytest.mark.slow
def test_resume_after_kill_repeats_no_round(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(tiny_models, data_cache, strategies=["gsal"], seeds=[0], budget=0.4)
    seen: list[int] = []

    def kill_after_round_1(ev: dict) -> None:
        seen.append(ev["round"])
        if ev["round"] == 1:
            raise _Kill("simulated kill between rounds")

    with pytest.raises(_Kill):
        run_benchmark(cfg, run, progress=False, on_round_end=kill_after_round_1)
    before = _state(run, "gsal")
    assert seen == [0, 1] and not before["finished"] and len(before["rounds"]) == 2
    assert not (run / "report.md").exists()
    # resume through the CLI with only --out: the stored config is used, only round 3 of 3 runs
    import typer
    from typer.testing import CliRunner

    from gsal_cli.commands.bench import bench

    app = typer.Typer()
    app.command()(bench)
    res = CliRunner().invoke(app, ["--out", str(run), "--quiet"])
    assert res.exit_code == 0, res.output
    assert "resuming" in res.output and "round 3/3" in res.output
    assert "round 1/3" not in res.output and "round 2/3" not in res.output, "a finished round ran again"
    after = _state(run, "gsal")
    again: list[int] = []
    assert [x["round"] for x in after["rounds"]] == [0, 1, 2] and after["finished"]
    assert after["rounds"][:2] == before["rounds"]  # same records, times included: nothing recomputed
    assert after["labeled"][: len(before["labeled"])] == before["labeled"]
    assert after["rounds"][2]["n_labeled"] == len(before["labeled"])
    # a finished run does nothing more; another config in the same folder is refused
    run_benchmark(cfg, run, progress=False, on_round_end=lambda ev: again.append(ev["round"]))
    assert again == []
    with pytest.raises(BenchError, match="another config"):
        run_benchmark(cfg.model_copy(update={"train_iters": 5}), run, progress=False)


def test_finetune_rounds_resume_from_the_saved_detector(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    cfg = _cfg(tiny_models, data_cache, strategies=["gsal", "coreset"], seeds=[0], budget=0.4, retrain="finetune",
               finetune_iters=2, candidates=10)

    def kill_after_gsal_round_1(ev: dict) -> None:
        if ev["strategy"] == "gsal" and ev["round"] == 1:
            raise _Kill("simulated kill between rounds")

    with pytest.raises(_Kill):
        run_benchmark(cfg, run, progress=False, on_round_end=kill_after_gsal_round_1)
    models = sorted(p.name for p in (run / "results" / "gsal").glob("*.pt"))
    assert models == ["seed-0-detector-r01.pt"], "round 1's detector is kept for the resume, round 0's is gone"
    run_benchmark(cfg, run, progress=False)
    st = _state(run, "gsal")
    assert st["finished"] and [r["retrain"] for r in st["rounds"]] == ["scratch", "finetune", "finetune"]
    assert [r.get("n_candidates") for r in st["rounds"][:-1]] == [10, 10]
    assert all(r["times"]["epochs"] >= 1 for r in st["rounds"])
    assert not list((run / "results" / "gsal").glob("*.pt")), "no detector is left behind after the last round"
    # every pick is one of that round's candidates, drawn from the unlabeled pool with the (seed, round) rule
    bench = Benchmark(cfg, run, progress=False)
    bench.prepare()
    for name in ("gsal", "coreset"):
        st = _state(run, name)
        for r, rnd in enumerate(st["rounds"][:-1]):
            labeled = st["labeled"][: rnd["n_labeled"]]
            unlabeled = [i for i in bench.pool_ids if i not in set(labeled)]
            cand = bench.candidate_ids(unlabeled, 0, r)
            assert len(cand) == 10 and {p["image_id"] for p in rnd["picks"]} <= set(cand)
    co = _state(run, "coreset")["rounds"][0]
    assert co["assigner_sources"] is None  # core-set read only the cached whole-slice embeddings
    text = (run / "report.md").read_text()
    assert "fine-tuned from that strategy's previous-round detector" in text and "10 unlabeled images" in text


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["coco", "yolo"])
def test_dataset_formats_and_binary_mode(fmt: str, tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    from gsal_edge.benchmark.inputs import synthetic_dataset
    from gsal_edge.data.formats import save_dataset

    src = synthetic_dataset(load_preset("tiny").data.synthetic, data_cache, progress=False)
    written = save_dataset(src, tmp_path / fmt, fmt)
    data_path = written if fmt == "coco" else tmp_path / fmt
    strategies = ["entropy"] if fmt == "coco" else ["gsal[label_mode=binary]"]
    run = tmp_path / "run"
    run_benchmark(_cfg(tiny_models, data_cache, strategies=strategies, seeds=[0],
                       data={"path": str(data_path)}), run, progress=False)
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["path"] == str(data_path) and info["data"]["n_images"] == len(src.images)
    assert sorted(info["classes"]) == sorted(src.classes)
    assert info["pool_size"] + info["val_size"] + info["test_size"] == len(src.images)
    st = _state(run, expand_strategies(BenchConfig(strategies=strategies))[0].slug)
    assert st["finished"] and len(st["labeled"]) == info["labeled_sizes"][-1]
    if fmt == "yolo":  # binary: class-agnostic detector, counts from CLIP concepts of the labeled boxes
        assert info["label_modes"] == {"gsal[label_mode=binary]": "binary"}
        assert "per_class" not in st["rounds"][0]["metrics"]
        counts = st["rounds"][0]["counts"]
        n_boxes = st["rounds"][0]["instances"]
        assert sum(counts.values()) == n_boxes  # every labeled box counts for a defect concept (never background)
        assert "label mode: binary" in (run / "report.md").read_text()
    else:
        assert "per_class" in st["rounds"][0]["metrics"]
        assert st["rounds"][0]["counts"]["void"] == st["rounds"][0]["instances_per_class"]["void"]


def test_models_folder_layouts(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    import shutil

    defaults = tmp_path / "models"  # the `models train-defaults` layout: diffusion/ + clip/
    shutil.copytree(tiny_models / "prior", defaults / "diffusion")
    shutil.copytree(tiny_models / "clip", defaults / "clip")
    bench = Benchmark(_cfg(defaults, data_cache), tmp_path / "run", progress=False)
    bench.prepare()
    assert bench.prior_dir == defaults / "diffusion"
    with pytest.raises(BenchError, match="train-defaults"):
        Benchmark(_cfg(tmp_path / "empty", data_cache), tmp_path / "run2", progress=False).prepare()


def test_binary_mode_refuses_prototype_assigner(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_models, data_cache, strategies=["gsal[label_mode=binary,assigner=hybrid]"])
    with pytest.raises(BenchError, match="binary has no class labels"):
        Benchmark(cfg, tmp_path / "run", progress=False).prepare()


def test_cli_requires_out_and_reports_errors(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from gsal_cli.commands.bench import bench

    app = typer.Typer()
    app.command()(bench)
    res = CliRunner().invoke(app, ["--preset", "tiny"])
    assert res.exit_code == 2 and "--out" in res.output
    res = CliRunner().invoke(app, ["--out", str(tmp_path / "r"), "--preset", "tiny", "--strategies", "gsal,bogus"])
    assert res.exit_code == 2 and "bogus" in res.output
    res = CliRunner().invoke(app, ["--report-only", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "run.json" in res.output
    bad = tmp_path / "fields.yaml"
    bad.write_text("train_iterz: 5\n")
    res = CliRunner().invoke(app, ["--out", str(tmp_path / "r"), "--preset", "tiny", "--config", str(bad)])
    assert res.exit_code == 2 and "train_iterz" in res.output


@pytest.mark.slow
def test_coreset_hybrid_and_mc_dropout_strategies_run(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    strategies = ["coreset", "gsal[assigner=hybrid,hybrid_k=1]", "mc_dropout"]
    run_benchmark(_cfg(tiny_models, data_cache, strategies=strategies, seeds=[0]), run, progress=False)
    info = json.loads((run / "run.json").read_text())
    for key in strategies:
        st = _state(run, info["strategy_slugs"][key])
        assert st["finished"] and len(st["labeled"]) == info["labeled_sizes"][-1]
    hyb = _state(run, info["strategy_slugs"]["gsal[assigner=hybrid,hybrid_k=1]"])["rounds"][0]
    labeled_concepts = {c for c, n in hyb["counts"].items() if n > 0}
    assert labeled_concepts and {c for c, s in hyb["assigner_sources"].items() if s == "prototype"} == labeled_concepts
    sel = json.loads((run / "picks" / info["strategy_slugs"]["mc_dropout"] / "seed-0" / "round-00.json").read_text())
    assert all("mc_dropout" in p["sentence"] for p in sel["picks"])


def test_device_option_and_older_run_folders(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:
    from gsal_edge.benchmark.config import resolve_device

    with pytest.raises(ValueError, match="device"):
        _cfg(tiny_models, data_cache, device="gpu0")
    assert resolve_device("cpu") == "cpu"
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(BenchError, match="no GPU"):
            resolve_device("cuda")
    # a run folder written before the newer fields existed resumes: absent fields count as their defaults
    run = tmp_path / "run"
    cfg = _cfg(tiny_models, data_cache, strategies=["random"], seeds=[0], budget=0.3)
    run_benchmark(cfg, run, progress=False)
    info = json.loads((run / "run.json").read_text())
    for k in ("retrain", "finetune_iters", "candidates", "device"):
        info["config"].pop(k)
    (run / "run.json").write_text(json.dumps(info))
    run_benchmark(cfg.model_copy(update={"device": "auto"}), run, progress=False)
    with pytest.raises(BenchError, match="retrain"):
        run_benchmark(cfg.model_copy(update={"retrain": "finetune"}), run, progress=False)
