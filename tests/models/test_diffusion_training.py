"""Embedded default prior training: tiny real runs, the saved folder loads, resume == uninterrupted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gsal_edge.models.diffusion_prior import DiffusionPrior
from gsal_edge.models.diffusion_training import (
    DiffusionTrainConfig,
    data_fingerprint,
    list_images,
    load_unlabeled,
    lr_at,
    train_diffusion,
)


def _tiny_cfg(vae_steps: int = 3, unet_steps: int = 3) -> DiffusionTrainConfig:
    return DiffusionTrainConfig.model_validate({
        "seed": 5, "resolution": 32, "crop_resolution": 16, "checkpoint_every": 2, "crop_share": 0.0,
        "vae": {"block_out_channels": [8, 8, 16], "norm_num_groups": 4, "steps": vae_steps, "batch_size": 2,
                "patch": 16},
        "unet": {"block_out_channels": [16, 32], "norm_num_groups": 8, "attention_head_dim": 8, "steps": unet_steps,
                 "batch_size": 4, "latent_patch": None, "num_train_timesteps": 50},
    })


@pytest.fixture(scope="module")
def slices_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gsal_edge.data.synthetic.config import SynthConfig
    from gsal_edge.data.synthetic.generator import generate_dataset

    d = tmp_path_factory.mktemp("pool")
    generate_dataset(d, 5, 3, SynthConfig(), progress=False)
    (d / "annotations.json").write_text("{ labels are never read")  # would break any label reader
    return d


def test_train_save_load(tmp_path: Path, slices_dir: Path) -> None:
    torch.set_num_threads(1)
    out = tmp_path / "prior"
    s = train_diffusion(slices_dir, out, _tiny_cfg(), progress=False)
    assert s["resolution"] == 32 and s["train"]["images"] == 5
    assert set(s["train"]["loss"]) == {"vae", "unet"} and s["train"]["loss"]["unet"]["last"] > 0
    meta = json.loads((out / "gsal_prior.json").read_text())
    assert meta["scaling_factor"] == pytest.approx(1.0 / meta["latent_std"])
    assert (out / "run.json").is_file()

    prior = DiffusionPrior.from_pretrained(out)
    assert prior.resolution == 32 and prior.crop_resolution == 16 and prior.downsample == 4
    assert prior.num_train_timesteps == 50 and not prior.info()["conditional"]
    assert prior.scaling_factor == pytest.approx(s["scaling_factor"])
    # z0 of the training slices (and their mirror images) has unit std: the scaling factor's definition
    imgs, _ = load_unlabeled(slices_dir, 32, 100, 5)
    z = np.concatenate([prior.encode(imgs), prior.encode(imgs[:, :, ::-1].copy())])
    assert z.shape == (10, 4, 8, 8)
    assert float(z.std()) == pytest.approx(1.0, rel=1e-3)
    eps = prior.predict_eps(z[:2], np.array([3, 40]))
    assert eps.shape == (2, 4, 8, 8) and np.isfinite(eps).all()


def test_resume_equals_uninterrupted(tmp_path: Path, slices_dir: Path) -> None:
    torch.set_num_threads(1)
    cfg = _tiny_cfg(3, 3)
    train_diffusion(slices_dir, tmp_path / "a", cfg, progress=False)
    r = train_diffusion(slices_dir, tmp_path / "b", cfg, progress=False, stop_after=2)
    assert r["stopped"] and r["stage"] == "vae"
    r = train_diffusion(slices_dir, tmp_path / "b", cfg, progress=False, stop_after=2)  # VAE done, UNet step 1
    assert r["stopped"] and r["stage"] == "unet"
    train_diffusion(slices_dir, tmp_path / "b", cfg, progress=False)
    for sub in ("vae", "unet"):
        from safetensors.torch import load_file

        a = load_file(str(tmp_path / "a" / sub / "diffusion_pytorch_model.safetensors"))
        b = load_file(str(tmp_path / "b" / sub / "diffusion_pytorch_model.safetensors"))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=f"{sub}.{k}")
    # another config on the same checkpoint is refused, naming it
    with pytest.raises(RuntimeError, match="another config"):
        train_diffusion(slices_dir, tmp_path / "b", _tiny_cfg(4, 3), progress=False)
    # a new code version: refused by default, started over on request (train-defaults does this)
    with pytest.raises(RuntimeError, match="another code version"):
        train_diffusion(slices_dir, tmp_path / "b", cfg, progress=False, key_extra="v2")
    r = train_diffusion(slices_dir, tmp_path / "b", cfg, progress=False, key_extra="v2", on_mismatch="restart",
                        stop_after=1)
    assert r == {"stopped": True, "stage": "vae", "step": 1}


def test_vae_learns(tmp_path: Path, slices_dir: Path) -> None:
    torch.set_num_threads(1)
    cfg = _tiny_cfg(80, 1)
    cfg = cfg.model_copy(update={"vae": cfg.vae.model_copy(update={"lr": 3e-3, "batch_size": 4})})
    s = train_diffusion(slices_dir, tmp_path / "p", cfg, progress=False)
    loss = s["train"]["loss"]["vae"]
    assert loss["last"] < 0.75 * loss["first"], loss


def test_helpers(tmp_path: Path, slices_dir: Path) -> None:
    assert lr_at(0, 100, 1.0, 10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(10, 100, 1.0, 10) == pytest.approx(1.0)
    assert lr_at(100, 100, 1.0, 10) == pytest.approx(0.05)
    paths = list_images(slices_dir)
    assert len(paths) == 5 and all(p.suffix == ".png" for p in paths)
    fp = data_fingerprint(paths, slices_dir)
    assert fp == data_fingerprint(paths, slices_dir) and fp != data_fingerprint(paths[:4], slices_dir)
    with pytest.raises(FileNotFoundError, match="no images"):
        list_images(tmp_path)
    with pytest.raises(ValueError, match="multiples"):
        DiffusionTrainConfig.model_validate({"resolution": 30})
    with pytest.raises(ValueError, match="t_range"):
        DiffusionTrainConfig.model_validate({"unet": {"t_range": [0.5, 0.2]}})


@pytest.mark.slow
def test_train_defaults_is_cached(tmp_path: Path, slices_dir: Path) -> None:
    """`models train-defaults` end to end on tiny configs: builds both, loads both, second call is a no-op."""
    import yaml
    from typer.testing import CliRunner

    from gsal_cli.commands.models import app
    from gsal_edge.models.clip_model import ClipModel

    cfg = {
        "parallel": False,
        "diffusion": json.loads(_tiny_cfg(2, 2).model_dump_json()),
        "clip": {"steps": 2, "batch_size": 8, "corpus": {"n_slices": 3},
                 "arch": {"embed_dim": 16, "image_size": 16, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
                          "head_width": 16, "context_length": 12, "text_width": 16, "text_heads": 2,
                          "text_layers": 1}},
    }
    cfg_path = tmp_path / "models.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "models"
    runner = CliRunner()
    args = ["train-defaults", "--out", str(out), "--data", str(slices_dir), "--config", str(cfg_path)]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "defaults.json").read_text())
    DiffusionPrior.from_pretrained(out / "diffusion")
    ClipModel.from_folder(out / "clip")
    stamp = (out / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns
    r = runner.invoke(app, args)
    assert r.exit_code == 0 and "up to date" in r.output, r.output
    assert (out / "diffusion" / "unet" / "diffusion_pytorch_model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((out / "defaults.json").read_text())["key"] == rec["key"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"diffusion": {"vae": {"stepz": 1}}}))
    r = runner.invoke(app, ["train-defaults", "--out", str(out), "--config", str(bad)])
    assert r.exit_code == 2 and "bad.yaml" in r.output and "stepz" in r.output


def test_crop_share_training(tmp_path: Path, slices_dir: Path) -> None:
    """[ours] magnified region crops join the VAE and UNet batches; their latents are cached too."""
    torch.set_num_threads(1)
    d = _tiny_cfg(2, 2).model_dump()
    d.update({"crop_share": 0.5, "crops_per_image": 2, "crop_side_range": [8.0, 64.0]})
    d["unet"]["latent_patch"] = 4
    cfg = DiffusionTrainConfig.model_validate(d)
    train_diffusion(slices_dir, tmp_path / "p", cfg, progress=False)
    crop_lat = np.load(tmp_path / "p" / "checkpoints" / "crop_latents.npy")
    assert crop_lat.shape == (5 * 2 * 2, 4, 4, 4)  # 5 slices x 2 crops x (original + mirror), 16 px -> 4x4
    prior = DiffusionPrior.from_pretrained(tmp_path / "p")
    assert prior.encode(np.zeros((1, 16, 16), np.float32), size=16).shape == (1, 4, 4, 4)
    d["unet"]["latent_patch"] = 8
    with pytest.raises(ValueError, match="latent_patch"):
        DiffusionTrainConfig.model_validate(d)


def test_defaults_key_ignores_comments_and_docs(tmp_path: Path) -> None:
    from gsal_edge.models.defaults import DefaultsConfig, _normalized_source, defaults_key

    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text('"""doc"""\nx = 1  # comment\n\n\ndef f():\n    """doc"""\n    return x\n')
    b.write_text("x=1\ndef f():\n    return x\n")
    c.write_text("x=2\ndef f():\n    return x\n")
    assert _normalized_source(a) == _normalized_source(b) != _normalized_source(c)
    cfg = DefaultsConfig()
    assert defaults_key(cfg, "d1") == defaults_key(cfg.model_copy(update={"parallel": False}), "d1")
    assert defaults_key(cfg, "d1") != defaults_key(cfg, "d2")
    assert defaults_key(cfg, "d1") != defaults_key(cfg.lengthened(2.0), "d1")


def test_prior_from_checkpoint_is_the_finished_prior(tmp_path: Path, slices_dir: Path) -> None:
    from gsal_edge.models.diffusion_training import prior_from_checkpoint

    torch.set_num_threads(1)
    cfg = _tiny_cfg(2, 2)
    with pytest.raises(RuntimeError, match="stage"):  # still in the VAE stage
        train_diffusion(slices_dir, tmp_path / "p", cfg, progress=False, stop_after=1)
        prior_from_checkpoint(tmp_path / "p", cfg)
    train_diffusion(slices_dir, tmp_path / "p", cfg, progress=False)  # resumes and finishes
    done, ck = DiffusionPrior.from_pretrained(tmp_path / "p"), prior_from_checkpoint(tmp_path / "p", cfg)
    assert ck.scaling_factor == pytest.approx(done.scaling_factor) and ck.resolution == done.resolution
    np.testing.assert_allclose(ck.alphas_cumprod, done.alphas_cumprod)
    imgs, _ = load_unlabeled(slices_dir, 32, 100, 5)
    z = done.encode(imgs[:2])
    np.testing.assert_allclose(ck.encode(imgs[:2]), z, atol=1e-5)
    np.testing.assert_allclose(ck.predict_eps(z, np.array([3, 7])), done.predict_eps(z, np.array([3, 7])), atol=1e-5)
    with pytest.raises(RuntimeError, match="config"):
        prior_from_checkpoint(tmp_path / "p", _tiny_cfg(2, 3))
