"""Real-weights path: tiny random SD-layout folders saved to disk and loaded through DiffusionPrior."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gsal_edge.acquisition.diffusion_difficulty import difficulty, reconstruct
from gsal_edge.data.model_inputs import prepare_vae_input, resize_batch
from gsal_edge.models.diffusion_prior import DiffusionPrior, PriorError


def _tiny_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
        latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=0.3,
    )


def _write_tokenizer(d: Path) -> None:
    d.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["ca"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\nc a\n")
    (d / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 8, "tokenizer_class": "CLIPTokenizer", "pad_token": "<|endoftext|>"}))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Stable-Diffusion-like folder: conditional UNet, v-prediction, text encoder, tokenizer."""
    from diffusers import DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("sd")
    _tiny_vae().save_pretrained(root / "vae")
    torch.manual_seed(1)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8,
    ).save_pretrained(root / "unet")
    DDIMScheduler(num_train_timesteps=50, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                  prediction_type="v_prediction").save_pretrained(root / "scheduler")
    torch.manual_seed(2)
    CLIPTextModel(CLIPTextConfig(vocab_size=60, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                 num_attention_heads=2, max_position_embeddings=8)).save_pretrained(root / "text_encoder")
    _write_tokenizer(root / "tokenizer")
    return root


@pytest.fixture(scope="module")
def uncond_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    root = tmp_path_factory.mktemp("uncond")
    _tiny_vae().save_pretrained(root / "vae")
    torch.manual_seed(3)
    UNet2DModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
                down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                norm_num_groups=8).save_pretrained(root / "unet")
    DDPMScheduler(num_train_timesteps=40).save_pretrained(root / "scheduler")
    (root / "gsal_prior.json").write_text(json.dumps({"scaling_factor": 0.5, "resolution": 16, "crop_resolution": 8}))
    return root


def test_conditional_sd_folder(sd_folder: Path) -> None:
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    prior = DiffusionPrior.from_pretrained(sd_folder)
    info = prior.info()
    assert info["conditional"] and info["prediction_type"] == "v_prediction"
    assert prior.num_train_timesteps == 50 and prior.resolution == 32 and prior.downsample == 2
    assert prior.scaling_factor == pytest.approx(0.3)
    # abar_t matches the scheduler's own
    ref_sched = DDIMScheduler.from_pretrained(sd_folder / "scheduler")
    np.testing.assert_allclose(prior.alphas_cumprod, ref_sched.alphas_cumprod.numpy(), rtol=1e-6)

    # the empty-prompt embedding is the text encoder's output for ""
    tok = CLIPTokenizer.from_pretrained(sd_folder / "tokenizer")
    enc = CLIPTextModel.from_pretrained(sd_folder / "text_encoder")
    ids = tok([""], padding="max_length", max_length=8, return_tensors="pt").input_ids
    assert ids[0, 0].item() == 0 and ids[0, 1].item() == 1
    with torch.no_grad():
        ref_ehs = enc(input_ids=ids).last_hidden_state
    torch.testing.assert_close(prior.encoder_hidden_states, ref_ehs)

    # vae_encoder = posterior mean * scaling factor
    rng = np.random.default_rng(0)
    imgs = rng.random((2, 32, 32)).astype(np.float32)
    x = prepare_vae_input(imgs)
    assert x.shape == (2, 3, 32, 32) and x.min() >= -1 and x.max() <= 1
    vae = AutoencoderKL.from_pretrained(sd_folder / "vae")
    with torch.no_grad():
        ref_z = vae.encode(torch.from_numpy(x)).latent_dist.mean * 0.3
    z0 = prior.encode(imgs)
    assert z0.shape == (2, 4, 16, 16)
    np.testing.assert_allclose(z0, ref_z.numpy(), rtol=1e-4, atol=1e-5)

    # unet engine returns eps converted from the v-prediction: eps = sqrt(a) v + sqrt(1-a) z_t
    unet = UNet2DConditionModel.from_pretrained(sd_folder / "unet")
    t = np.array([10, 30], dtype=np.int64)
    eps = prior.predict_eps(z0, t)
    with torch.no_grad():
        v = unet(torch.from_numpy(z0), torch.from_numpy(t), encoder_hidden_states=ref_ehs.expand(2, -1, -1)).sample
    a = torch.from_numpy(prior.alphas_cumprod[t]).float().view(-1, 1, 1, 1)
    np.testing.assert_allclose(eps, (a.sqrt() * v + (1 - a).sqrt() * torch.from_numpy(z0)).numpy(),
                               rtol=1e-4, atol=1e-5)


def test_unconditional_folder_and_difficulty(uncond_folder: Path) -> None:
    from diffusers import UNet2DModel

    prior = DiffusionPrior.from_pretrained(uncond_folder)
    assert not prior.info()["conditional"] and prior.encoder_hidden_states is None
    assert prior.scaling_factor == 0.5 and prior.resolution == 16 and prior.crop_resolution == 8
    imgs = np.random.default_rng(1).random((3, 40, 40)).astype(np.float32)
    z0 = prior.encode(imgs)  # resized 40 -> 16, latent 8x8
    assert z0.shape == (3, 4, 8, 8)
    unet = UNet2DModel.from_pretrained(uncond_folder / "unet")
    t = np.array([5, 5, 39], dtype=np.int64)
    with torch.no_grad():
        ref = unet(torch.from_numpy(z0), torch.from_numpy(t)).sample.numpy()
    np.testing.assert_allclose(prior.predict_eps(z0, t), ref, rtol=1e-4, atol=1e-5)
    zhat = reconstruct(z0, ["a", "b", "c"], prior.predict_eps, prior.alphas_cumprod, K=2, t_index=10, base_seed=0)
    E, V, e_map, _ = difficulty(z0, zhat)
    assert np.all(np.isfinite(E)) and np.all(E > 0) and np.all(V > 0) and e_map.shape == (3, 8, 8)


def test_wrappers_trace(uncond_folder: Path) -> None:
    prior = DiffusionPrior.from_pretrained(uncond_folder)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    vae_mod = prior.vae_encoder_module()
    traced = torch.jit.trace(vae_mod, (x,))
    torch.testing.assert_close(traced(x), vae_mod(x))
    z = torch.randn(2, 4, 8, 8)
    t = torch.tensor([3, 7], dtype=torch.int64)
    unet_mod = prior.unet_module()
    traced = torch.jit.trace(unet_mod, (z, t))
    torch.testing.assert_close(traced(z, torch.tensor([1, 2])), unet_mod(z, torch.tensor([1, 2])))


def test_missing_parts_are_named(tmp_path: Path, sd_folder: Path, uncond_folder: Path) -> None:
    with pytest.raises(PriorError, match="does not exist"):
        DiffusionPrior.from_pretrained(tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "vae").symlink_to(sd_folder / "vae")
    (broken / "scheduler").symlink_to(sd_folder / "scheduler")
    with pytest.raises(PriorError, match="unet/"):
        DiffusionPrior.from_pretrained(broken)
    (broken / "unet").symlink_to(sd_folder / "unet")
    with pytest.raises(PriorError, match="text_encoder/"):
        DiffusionPrior.from_pretrained(broken)
    bad_meta = tmp_path / "badmeta"
    bad_meta.mkdir()
    for s in ("vae", "unet", "scheduler"):
        (bad_meta / s).symlink_to(uncond_folder / s)
    (bad_meta / "gsal_prior.json").write_text("{not json")
    with pytest.raises(PriorError, match="gsal_prior.json"):
        DiffusionPrior.from_pretrained(bad_meta)


def test_resize_batch_keeps_mean() -> None:
    x = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (2, 64, 1))
    y = resize_batch(x, 16)
    assert y.shape == (2, 16, 16)
    assert math.isclose(float(y.mean()), float(x.mean()), rel_tol=1e-3)
