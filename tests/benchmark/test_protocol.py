"""The benchmark protocol (issue 16): the labeled validation split, F1 thresholds chosen on it, macro F1,
the prior trained on the pool only (cache key, never the test ids), train-defaults' own data seed, the
round cost ratio against entropy and the detector schedule hook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from gsal_edge.benchmark.config import BenchError, load_preset, preset_names
from gsal_edge.benchmark.pool_prior import (
    pool_images_fingerprint,
    pool_prior_config,
    pool_prior_key,
    stage_pool_images,
    train_pool_prior,
)
from gsal_edge.benchmark.run_data import RunData, cost_ratio_lines, round_cost_ratios
from gsal_edge.benchmark.split import pool_test_split, validation_split
from gsal_edge.data.dataset import Annotation, DetectionDataset, ImageEntry

# a DiffusionTrainConfig small enough to train in seconds (the scorer reads its resolution from the folder)
TINY_PRIOR = {"seed": 5, "resolution": 32, "crop_resolution": 16, "checkpoint_every": 50, "crop_share": 0.0,
              "vae": {"block_out_channels": [8, 8, 16], "norm_num_groups": 4, "steps": 3, "batch_size": 2,
                      "patch": 16},
              "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 8, "steps": 3,
                       "batch_size": 4, "latent_patch": None, "num_train_timesteps": 50}}


def _dataset(n: int = 60) -> DetectionDataset:
    classes = ["void", "petal"]
    images = []
    for i in range(n):
        anns = [Annotation((1, 1, 5, 5), "void")] if i % 2 else []
        if i % 10 == 0:
            anns.append(Annotation((8, 8, 12, 12), "petal"))
        images.append(ImageEntry(f"img{i:03d}", f"img{i:03d}.png", 16, 16, anns))
    return DetectionDataset(Path("."), classes, images)


# ------------------------------------------------------------------------------- validation split
def test_validation_split_is_disjoint_deterministic_and_sized() -> None:
    ds = _dataset(60)
    test, rest = pool_test_split(ds, 0.2, split_seed=3)
    val, pool = validation_split(ds, rest, 0.1, 0.2, split_seed=3)
    assert not set(val) & set(pool) and not set(val) & set(test) and not set(pool) & set(test)
    assert sorted(val + pool + test) == sorted(e.image_id for e in ds.images)
    assert 5 <= len(val) <= 7  # 10% of 60 images, stratified rounding
    assert validation_split(ds, rest, 0.1, 0.2, split_seed=3) == (val, pool)  # fixed by the split seed
    other, _ = validation_split(ds, rest, 0.1, 0.2, split_seed=4)
    assert other != val
    # the rare class reaches the validation split (stratified)
    assert any(int(i[3:]) % 10 == 0 for i in val)
    assert validation_split(ds, rest, 0.0, 0.2, 3) == ([], sorted(rest))


def test_config_refuses_validation_thresholds_without_a_validation_split() -> None:
    with pytest.raises(BenchError, match="val_fraction"):
        load_preset("tiny", {"data": {"val_fraction": 0.0}})
    cfg = load_preset("tiny", {"data": {"val_fraction": 0.0}, "f1_threshold": "test_oracle"})
    assert cfg.f1_threshold == "test_oracle"
    with pytest.raises(BenchError, match="pool"):
        load_preset("tiny", {"data": {"val_fraction": 0.5, "test_fraction": 0.45}})


# ------------------------------------------------------------------------------- prior on the pool
def _image_dataset(tmp_path: Path, n: int = 12) -> DetectionDataset:
    from gsal_edge.data.synthetic.generator import write_png16

    rng = np.random.default_rng(0)
    images = []
    for i in range(n):
        name = f"s{i:02d}.png"
        write_png16(tmp_path / name, (rng.random((32, 32)) * 60000).astype(np.uint16))
        images.append(ImageEntry(f"s{i:02d}", name, 32, 32, [Annotation((1, 1, 6, 6), "void")]))
    return DetectionDataset(tmp_path, ["void"], images)


def test_pool_prior_key_follows_the_pool_images(tmp_path: Path) -> None:
    from gsal_edge.data.synthetic.generator import write_png16

    ds = _image_dataset(tmp_path)
    pool = [f"s{i:02d}" for i in range(8)]
    fp = pool_images_fingerprint(ds, pool)
    assert pool_images_fingerprint(ds, list(reversed(pool))) == fp  # order does not matter
    assert pool_images_fingerprint(ds, pool[:-1]) != fp  # one image fewer
    assert pool_images_fingerprint(ds, [*pool[:-1], "s09"]) != fp  # another image
    k = pool_prior_key(fp, "cfg", "code")
    assert pool_prior_key(fp, "cfg2", "code") != k and pool_prior_key(fp, "cfg", "code2") != k
    write_png16(tmp_path / "s03.png", np.zeros((32, 32), np.uint16))  # same ids, other pixels
    assert pool_images_fingerprint(ds, pool) != fp
    staged = stage_pool_images(ds, pool, tmp_path / "staged")
    assert len(staged) == 8 and all(p.resolve().parent == tmp_path for p in staged)
    stage_pool_images(ds, pool[:5], tmp_path / "staged")  # restaging drops what left the pool
    assert len(list((tmp_path / "staged").iterdir())) == 5


def test_pool_prior_trains_on_pool_ids_only_and_is_reused(tmp_path: Path) -> None:
    from gsal_edge.benchmark.config import BenchModels
    from gsal_edge.models.diffusion_training import data_fingerprint, list_images

    data = tmp_path / "data"
    data.mkdir()
    ds = _image_dataset(data)
    pool, test = [f"s{i:02d}" for i in range(8)], [f"s{i:02d}" for i in range(8, 12)]
    m = BenchModels(prior_source="pool", prior_overrides=TINY_PRIOR, prior_cache_dir=str(tmp_path / "priors"))
    said: list[str] = []
    prior = train_pool_prior(m, ds, pool, window=(0.0, 65535.0), progress=False, say=said.append)
    meta = json.loads((prior / "gsal_prior.json").read_text())
    assert meta["train"]["images"] == len(pool)
    staged = list_images(prior.parent / "images")
    assert meta["train"]["data_fingerprint"] == data_fingerprint(staged, prior.parent / "images")
    read = {p.resolve().name for p in staged}
    assert read == {f"{i}.png" for i in pool} and not read & {f"{i}.png" for i in test}
    assert json.loads((prior.parent / "pool_ids.json").read_text()) == sorted(pool)
    cfg = pool_prior_config(m, (0.0, 65535.0), 1)
    assert list(cfg.window) == [0.0, 65535.0] and cfg.vae.steps == 3  # the run's window, the overrides
    mtime = (prior / "unet").stat().st_mtime_ns
    again = train_pool_prior(m, ds, list(reversed(pool)), window=(0.0, 65535.0), progress=False, say=said.append)
    assert again == prior and (prior / "unet").stat().st_mtime_ns == mtime and "reusing" in said[-1]
    other = train_pool_prior(m, ds, pool[:-1], window=(0.0, 65535.0), progress=False, say=said.append)
    assert other != prior  # another pool -> another prior


def test_train_defaults_data_seed_is_no_bench_preset_seed() -> None:
    from gsal_edge.models.defaults import load_models_config

    cfg = load_models_config()
    bench_seeds = {load_preset(n).data.synthetic.seed for n in preset_names()}
    assert cfg.pool_seed not in bench_seeds, (cfg.pool_seed, bench_seeds)
    assert cfg.clip.corpus.seed not in bench_seeds


# ------------------------------------------------------------------------------- cost ratio
def _rec(r: int, train: float, score: float, select: float, n_cand: int | None = 100) -> dict:
    rec = {"round": r, "times": {"train": train, "eval": 9.0, "score": score, "select": select}}
    if n_cand is not None:
        rec["picks"] = [{}]
        rec["n_candidates"] = n_cand
    return rec


def test_round_cost_ratio_against_entropy() -> None:
    info = {"strategies": ["gsal", "entropy", "random"], "budgets": [0.1, 0.2, 0.3], "seeds": [0]}
    run = RunData(Path("."), info, {
        "gsal": {0: [_rec(0, 2, 6, 0.5), _rec(1, 2, 8, 0.5), _rec(2, 2, 0, 0, None)]},
        "entropy": {0: [_rec(0, 2, 2, 0.0), _rec(1, 2, 2, 0.0), _rec(2, 2, 0, 0, None)]},
        "random": {0: [_rec(0, 2, 0, 0.0)]},
    })
    c = round_cost_ratios(run)
    # gsal: (2+6+.5) + (2+8+.5) = 19 vs entropy 8 over the 2 selection rounds; eval and the last round left out
    assert c["gsal"]["ratio"] == pytest.approx(19 / 8) and c["gsal"]["rounds"] == 2
    assert c["gsal"]["score_ratio"] == pytest.approx(14 / 4)
    assert c["entropy"]["ratio"] == pytest.approx(1.0)
    assert c["random"]["ratio"] == pytest.approx(2 / 4) and c["random"]["rounds"] == 1
    lines = cost_ratio_lines(run)
    assert any(line.startswith("round cost gsal / entropy: 2.38x") for line in lines)
    assert not round_cost_ratios(RunData(Path("."), info, {"gsal": run.results["gsal"]}))


# ------------------------------------------------------------------------------- schedule hook
def test_iterations_for_hook_uses_the_config(tmp_path: Path) -> None:
    from gsal_edge.benchmark.training import DetectorRounds

    cfg = load_preset("tiny", {"train_iters": 77, "finetune_iters": 33})
    d = DetectorRounds(cfg, _dataset(), ["img000"], tmp_path, "cpu", ["img001"])
    assert d.iterations_for(10, from_scratch=True) == 77
    assert d.iterations_for(500, from_scratch=False) == 33
    # the detector's `schedule: scaled` makes it grow with the labeled-set size (fine-tuning in proportion)
    dcfg = d.detector_config("typed")
    assert d.iterations_for(10, from_scratch=True, dcfg=dcfg) == 77  # schedule: epochs -> the config
    scaled = dcfg.model_copy(update={"train": dcfg.train.model_copy(update={"schedule": "scaled"})})
    few, many = d.iterations_for(20, True, scaled), d.iterations_for(400, True, scaled)
    assert 200 <= few < many <= 3000
    assert d.iterations_for(400, False, scaled) == round(many * 33 / 77)
    with pytest.raises(BenchError, match="validation split"):
        DetectorRounds(cfg, _dataset(), ["img000"], tmp_path, "cpu", [])


def test_train_defaults_regenerates_a_pool_made_with_another_seed(tmp_path: Path) -> None:
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset
    from gsal_edge.models.defaults import POOL_RECORD, ensure_generated_pool

    pool = tmp_path / "pool"
    generate_dataset(pool, 3, 0, SynthConfig(), progress=False)  # an older pool: seed 0, no record
    old = (pool / "annotations.json").read_text()
    said: list[str] = []
    ensure_generated_pool(pool, 3, 4242, said.append)
    assert json.loads((pool / POOL_RECORD).read_text()) == {"n": 3, "seed": 4242}
    assert (pool / "annotations.json").read_text() != old and "seed 4242" in said[0]
    ensure_generated_pool(pool, 3, 4242, said.append)  # up to date: nothing regenerated
    assert len(said) == 1


# ------------------------------------------------------------------------------- tiny end to end
def test_tiny_run_thresholds_on_validation_macro_f1_pool_prior_and_cost(tmp_path: Path) -> None:
    from gsal_edge.benchmark.rounds import Benchmark
    from gsal_edge.benchmark.training import DetectorRounds
    from gsal_edge.models.detector import load_checkpoint
    from gsal_edge.models.tiny_models import write_tiny_models

    models = tmp_path / "models"
    write_tiny_models(models)
    cache = tmp_path / "priors"
    cfg = load_preset("tiny", {"models": {"dir": str(models), "prior_source": "pool", "prior_overrides": TINY_PRIOR,
                                          "prior_cache_dir": str(cache)},
                               "data": {"cache_dir": str(tmp_path / "data")}, "threads": 1,
                               "strategies": ["gsal", "entropy", "random"]})
    said: list[str] = []
    run = tmp_path / "run"
    bench = Benchmark(cfg, run, progress=False, say=said.append)
    bench.run()
    split = json.loads((run / "split.json").read_text())
    val, pool, test = set(split["val"]), set(split["pool"]), set(split["test"])
    assert val and not val & pool and not val & test
    info = json.loads((run / "run.json").read_text())
    assert info["val_size"] == len(val) and info["pool_size"] == len(pool)
    # the prior was trained on exactly the pool: never a validation or test slice
    prior = Path(info["models"]["prior"])
    assert prior.is_relative_to(cache.resolve())
    assert set(json.loads((prior.parent / "pool_ids.json").read_text())) == pool
    assert json.loads((prior / "gsal_prior.json").read_text())["train"]["images"] == len(pool)
    for slug in ("gsal", "entropy", "random"):
        st = json.loads((run / "results" / slug / "seed-0.json").read_text())
        assert not set(st["labeled"]) & val
        for rec in st["rounds"]:
            m = rec["metrics"]
            assert m["threshold_source"] == "validation" and "f1_macro" in m
            assert m["validation"]["n_images"] == len(val)
            assert m["threshold"] == m["validation"]["thresholds"]["overall"]
            assert m["f1_oracle"] >= m["f1"] - 1e-12  # the best threshold on test is an upper bound
    report = (run / "report.md").read_text()
    assert "## macro F1@0.5 on the held-out test split" in report and "validation split" in report
    assert "## Round cost relative to entropy" in report
    cost = report.split("## Round cost relative to entropy")[1]
    assert "| gsal |" in cost.split("##")[0]
    assert any(line.startswith("round cost gsal / entropy: ") for line in said)
    # the legacy option scores the same detector at the best threshold on the test split: the recorded oracle
    r0 = json.loads((run / "results" / "gsal" / "seed-0.json").read_text())["rounds"][0]["metrics"]
    model, _ = load_checkpoint(next((run / "shared" / "seed-0").glob("typed-*/detector.pt")))
    legacy = DetectorRounds(cfg.model_copy(update={"f1_threshold": "test_oracle"}), bench.dataset,
                            bench.test_ids, run, "cpu").evaluate(model)
    assert legacy["f1"] == pytest.approx(r0["f1_oracle"]) and legacy["threshold_source"] == "test_oracle"


def test_cli_prior_source_is_validated(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from gsal_cli.commands.bench import bench

    app = typer.Typer()
    app.command()(bench)
    res = CliRunner().invoke(app, ["--preset", "tiny", "--out", str(tmp_path / "r"), "--prior-source", "test"])
    assert res.exit_code == 2 and "prior_source" in res.output
