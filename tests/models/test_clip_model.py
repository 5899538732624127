"""Real-weights path for CLIP: tiny random open_clip models saved as checkpoints and loaded back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gsal_edge.data.model_inputs import prepare_clip_input
from gsal_edge.models.clip_model import (
    CLIP_META,
    ClipError,
    ClipModel,
    concept_text_embeddings,
)

TINY_VIT = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}
TINY_RN = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": [1, 1, 1, 1], "width": 8, "patch_size": None},
    "text_cfg": {"context_length": 12, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 1},
}


def _save_random(cfg: dict, name: str, d: Path, fmt: str) -> tuple[Path, Path, torch.nn.Module]:
    import open_clip
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    cfg_path = d / f"{name}.json"
    cfg_path.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    with torch.no_grad():  # make logit/positional params non-default so a failed load would show
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    sd = {k: v.contiguous() for k, v in model.state_dict().items()}
    ckpt = d / ("weights.safetensors" if fmt == "safetensors" else "weights.pt")
    if fmt == "safetensors":
        save_file(sd, str(ckpt))
    else:
        torch.save({"state_dict": sd}, ckpt)
    return cfg_path, ckpt, model.eval()


@pytest.mark.parametrize("cfg,name,fmt", [(TINY_VIT, "gsal-test-vit", "safetensors"), (TINY_RN, "gsal-test-rn", "pt")])
def test_load_checkpoint_matches_saved_model(tmp_path: Path, cfg: dict, name: str, fmt: str) -> None:
    cfg_path, ckpt, ref = _save_random(cfg, name, tmp_path, fmt)
    clip = ClipModel.from_checkpoint(cfg_path, ckpt)
    assert clip.model_name == name and clip.image_size == cfg["vision_cfg"]["image_size"]
    for (k, a), (_, b) in zip(ref.state_dict().items(), clip.model.state_dict().items()):
        torch.testing.assert_close(a, b, msg=k)
    rng = np.random.default_rng(0)
    crops = rng.random((3, 40, 40)).astype(np.float32)
    x = clip.prepare(crops)
    assert x.shape == (3, 3, clip.image_size, clip.image_size)
    emb = clip.encode_images(crops)
    with torch.no_grad():
        ref_emb = torch.nn.functional.normalize(ref.encode_image(torch.from_numpy(x)), dim=-1).numpy()
    np.testing.assert_allclose(emb, ref_emb, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    assert clip.embed_dim == 16
    # by registered name too
    again = ClipModel.from_checkpoint(name, ckpt)
    np.testing.assert_allclose(again.encode_images(crops), emb, rtol=1e-5, atol=1e-6)


def test_normalization_text_and_concepts(tmp_path: Path) -> None:
    import open_clip

    cfg_path, ckpt, ref = _save_random(TINY_VIT, "gsal-test-vit2", tmp_path, "safetensors")
    mean, std = (0.4, 0.4, 0.4), (0.2, 0.2, 0.2)
    clip = ClipModel.from_checkpoint(cfg_path, ckpt, image_mean=mean, image_std=std)
    crops = np.full((1, 16, 16), 0.6, np.float32)
    np.testing.assert_allclose(clip.prepare(crops), np.full((1, 3, 16, 16), 1.0), rtol=1e-5)
    np.testing.assert_allclose(prepare_clip_input(crops, 16, mean, std), clip.prepare(crops))

    prompts = {"void": ["a dark round void", "a small dark pore"], "background": ["plain layered film"]}
    tok = open_clip.get_tokenizer("gsal-test-vit2")
    with torch.no_grad():
        e = torch.nn.functional.normalize(ref.encode_text(tok(prompts["void"])), dim=-1).numpy().astype(np.float64)
    m = e.mean(0)
    emb = concept_text_embeddings(clip, prompts)
    assert set(emb) == {"void", "background"}
    np.testing.assert_allclose(emb["void"], m / np.linalg.norm(m), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb["background"]), 1.0, rtol=1e-5)
    with pytest.raises(ValueError, match="no prompt"):
        concept_text_embeddings(clip, {"void": []})


def test_from_folder_and_trace(tmp_path: Path) -> None:
    cfg_path, ckpt, _ = _save_random(TINY_VIT, "gsal-test-vit3", tmp_path, "safetensors")
    (tmp_path / CLIP_META).write_text(json.dumps({
        "model_name": "gsal-test-vit3", "config_file": cfg_path.name, "checkpoint": ckpt.name,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25]}))
    clip = ClipModel.from_folder(tmp_path)
    assert clip.image_mean == (0.5, 0.5, 0.5) and clip.info()["params"] > 0
    mod = clip.image_module()
    x = torch.randn(2, 3, 16, 16)
    traced = torch.jit.trace(mod, (x,), check_trace=False)
    y = torch.randn(5, 3, 16, 16)
    torch.testing.assert_close(traced(y), mod(y))


def test_errors_name_the_file(tmp_path: Path) -> None:
    cfg_path, ckpt, _ = _save_random(TINY_VIT, "gsal-test-vit4", tmp_path, "safetensors")
    with pytest.raises(ClipError, match="does not exist"):
        ClipModel.from_checkpoint(cfg_path, tmp_path / "missing.safetensors")
    with pytest.raises(ClipError, match="does not exist"):  # a tag name is never downloaded
        ClipModel.from_checkpoint("ViT-B-32", "openai")
    with pytest.raises(ClipError, match="unknown open_clip model config"):
        ClipModel.from_checkpoint("no-such-model", ckpt)
    bad = tmp_path / "bad-model.json"
    bad.write_text(json.dumps({"embed_dim": 16}))
    with pytest.raises(ClipError, match="lacks"):
        ClipModel.from_checkpoint(bad, ckpt)
    wrong = dict(TINY_VIT, embed_dim=24)
    with pytest.raises(ClipError, match="cannot load"):
        ClipModel.from_checkpoint(wrong, ckpt, name="gsal-test-wrong")
    with pytest.raises(ClipError, match=CLIP_META):
        ClipModel.from_folder(tmp_path / "empty")
