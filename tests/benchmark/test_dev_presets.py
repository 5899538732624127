"""The `dev` presets (issue 16): generator configs unlike the default, with their own seeds, loadable and
runnable end to end (shrunk); and a 12-bit-in-16-bit data set reaching the detector, the prior and the
gallery windowed, not near-black."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_al_benchmark import _cfg, data_cache, tiny_models  # noqa: F401 - shared module fixtures

from gsal_edge.acquisition.concept_graph import load_graph
from gsal_edge.benchmark.config import BenchError, load_preset, preset_names
from gsal_edge.benchmark.plots import plot_gallery
from gsal_edge.benchmark.rounds import Benchmark
from gsal_edge.benchmark.run import run_benchmark
from gsal_edge.benchmark.run_data import load_run
from gsal_edge.data.synthetic.config import SynthConfig
from gsal_edge.models.detector_training import load_slice

DEV = ("dev-a", "dev-b")


def test_dev_presets_differ_from_the_default_and_own_their_seeds() -> None:
    assert set(DEV) <= set(preset_names())
    quick = load_preset("quick")
    seeds = set()
    for name in DEV:
        cfg = load_preset(name)
        syn = cfg.data.synthetic
        assert syn.seed not in (0, quick.data.synthetic.seed) and cfg.data.split_seed != quick.data.split_seed
        seeds.add(syn.seed)
        scfg = SynthConfig.model_validate(syn.synth)
        default = SynthConfig()
        assert scfg.products != default.products and (scfg.height, scfg.width) != (default.height, default.width)
        assert (scfg.bit_depth, scfg.flip, scfg.invert, list(scfg.classes)) != \
            (default.bit_depth, default.flip, default.invert, list(default.classes))
        assert set(scfg.classes) <= set(load_graph(cfg.graph).defects)  # every class is a graph node
        assert cfg.data.window == "auto" and cfg.budget == quick.budget and cfg.step == quick.step
        assert syn.n < quick.data.synthetic.n
    assert len(seeds) == len(DEV)
    with pytest.raises(BenchError, match="window"):
        load_preset("dev-a", {"data": {"window": "bits:40"}})


def _shrunk_dev_a(models: Path, cache: Path, **over: object) -> object:
    """dev-a at 40 slices with the tiny machinery (detector, iterations, strategies) of the `tiny` preset."""
    dev = load_preset("dev-a")
    tiny = _cfg(models, cache)
    data = {**dev.data.model_dump(), "cache_dir": str(cache),
            "synthetic": {**dev.data.synthetic.model_dump(), "n": 40}}
    return load_preset("dev-a", {"data": data, "models": {"dir": str(models), "prior_source": "files"},
                                 "strategies": ["gsal", "random"], "seeds": [0], "init": tiny.init, "step": tiny.step, "budget": tiny.budget,
                                 "detector": "tiny", "detector_overrides": {}, "train_iters": tiny.train_iters,
                                 "retrain": "scratch", "candidates": None, "gsal": tiny.gsal, "threads": 1,
                                 "score_batch": 16, "gallery_picks": 2, "rare_fraction": 0.5, **over})


def _thumb_mean(png: Path) -> float:
    """Mean gray of the gallery's image pixels: everything that is neither white page nor black-ish text."""
    g = np.asarray(Image.open(png).convert("L"), dtype=np.float64) / 255
    return float(g[g < 0.97].mean())


@pytest.mark.slow
def test_dev_a_12_bit_runs_end_to_end_windowed(tiny_models: Path, data_cache: Path, tmp_path: Path) -> None:  # noqa: F811
    run = tmp_path / "run"
    cfg = _shrunk_dev_a(tiny_models, data_cache)
    run_benchmark(cfg, run, progress=False)
    info = json.loads((run / "run.json").read_text())
    lo, hi = info["config"]["data"]["window"]  # 'auto' resolved once, from pool slices only
    assert 0 <= lo < hi <= 4095
    assert info["graph"] == "thin-film-ct-dev" and "delamination" in info["classes"]
    for slug in ("gsal", "random"):
        st = json.loads((run / "results" / slug / "seed-0.json").read_text())
        assert st["finished"] and len(st["rounds"]) == len(info["labeled_sizes"])

    # the detector checkpoints record it: `gsal-edge export` copies it into the bundle's ScorerSpec.window
    from gsal_edge.models.detector import load_checkpoint

    ckpts = sorted(run.rglob("detector.pt"))
    assert ckpts and all(load_checkpoint(p)[1]["preprocessing"]["window"] == [lo, hi] for p in ckpts)

    bench = Benchmark(load_preset("dev-a", cfg.model_dump(exclude={"preset"})), run, progress=False)
    bench.prepare()  # resumes the finished folder: the same resolved window
    assert bench.cfg.data.window == (lo, hi)
    ids = bench.pool_ids[:6]
    det_in = np.stack([load_slice(bench.dataset, bench.by_id[i], bench.cfg.data.window) for i in ids])
    prior_in = np.stack([bench.scoring.unit(i) for i in ids])
    assert det_in.mean() > 0.3 and prior_in.mean() > 0.3  # windowed, not near-black
    # the 16-bit version of the same slices lands on the same scale
    from gsal_edge.data.preprocessing import resolve_window, to_unit_float
    from gsal_edge.data.synthetic.generator import generate_slice, slice_seed

    s16 = SynthConfig.model_validate({**cfg.data.synthetic.synth, "bit_depth": 16})
    idx = [int(i.split("-")[-1]) for i in ids]
    raw16 = [generate_slice(s16, slice_seed(cfg.data.synthetic.seed, k), k).image for k in idx]
    w16 = resolve_window("auto", raw16)
    assert abs(np.mean([to_unit_float(r, w16).mean() for r in raw16]) - det_in.mean()) < 0.05
    assert to_unit_float(bench.scoring.raw(ids[0])).mean() < 0.05  # what a dtype window would have fed

    windowed = _thumb_mean(run / "gallery.png")
    info["config"]["data"]["window"] = None  # the same gallery through the dtype range: near-black
    (run / "run.json").write_text(json.dumps(info))
    dark = plot_gallery(load_run(run), tmp_path, per_strategy=2)
    assert dark is not None
    assert windowed > 0.3 and _thumb_mean(dark) < 0.1


@pytest.mark.parametrize("name", DEV)
def test_dev_synth_yaml_matches_its_preset(name: str) -> None:
    from gsal_edge.config_files import CONFIGS_DIR

    cfg = load_preset(name)
    want = SynthConfig.model_validate({**cfg.data.synthetic.synth, "seed": cfg.data.synthetic.seed})
    assert SynthConfig.from_yaml(CONFIGS_DIR / f"synth_{name.replace('-', '_')}.yaml") == want
