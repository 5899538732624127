"""Embedded default CLIP: captions, the shifted corpus, the loss, and tiny real training runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gsal_edge.models.clip_model import ClipModel, concept_text_embeddings
from gsal_edge.models.clip_training import (
    ClipTrainConfig,
    CorpusConfig,
    background_boxes,
    build_corpus,
    caption,
    corpus_synth_config,
    multi_positive_clip_loss,
    proposal_view,
    train_clip,
)

TINY = {
    "steps": 3, "batch_size": 8, "checkpoint_every": 2,
    "corpus": {"n_slices": 4},
    "arch": {"embed_dim": 16, "image_size": 16, "patch_size": 8, "vision_width": 32, "vision_layers": 1,
             "head_width": 16, "context_length": 12, "text_width": 16, "text_heads": 2, "text_layers": 1},
}


def test_captions_follow_attributes() -> None:
    rng = np.random.default_rng(0)
    caps = [caption("void", {"polarity": "dark", "shape": "round", "cnr": 5.0, "side": 6.0}, rng) for _ in range(60)]
    assert all(any(n in c for n in ("void", "pore", "cavity")) for c in caps)
    assert not any("bright" in c for c in caps) and any("dark" in c for c in caps) and any("tiny" in c for c in caps)
    caps = [caption("crack", {"polarity": "dark", "shape": "jagged", "cnr": 7.0, "side": 30.0}, rng) for _ in range(60)]
    assert any("long" in c for c in caps) and any("high-contrast" in c for c in caps)
    dust = {caption("dust", {"polarity": "bright"}, rng) for _ in range(40)}
    assert not any("dark" in c for c in dust) and any("dust" in c for c in dust)
    assert all("defect" in c or "plain" in c or "uniform" in c or "clean" in c or "without" in c
               for c in (caption("background", {}, rng) for _ in range(30)))
    with pytest.raises(ValueError, match="vocabulary"):
        caption("unicorn", {}, rng)


def test_corpus_generator_is_shifted_from_pool() -> None:
    from gsal_edge.data.synthetic.config import SynthConfig

    pool, corp = SynthConfig(), corpus_synth_config(CorpusConfig())
    assert {p.name for p in pool.products}.isdisjoint({p.name for p in corp.products})
    assert set(corp.classes) == set(pool.classes)
    for name in pool.classes:
        assert corp.classes[name].frequency == pytest.approx(0.35)
        assert corp.classes[name].contrast[0] < pool.classes[name].contrast[0]
        assert corp.classes[name].contrast[1] > pool.classes[name].contrast[1]
    assert CorpusConfig().seed != pool.seed


def test_corpus_crops() -> None:
    cfg = ClipTrainConfig.model_validate(TINY)
    c = build_corpus(cfg)
    n = len(c["kinds"])
    assert c["crops"].shape == (n, 16, 16) and c["crops"].dtype == np.float16 and n == len(c["attrs"])
    assert 0 <= float(c["crops"].min()) and float(c["crops"].max()) <= 1
    assert "background" in c["kinds"]
    again = build_corpus(cfg)
    np.testing.assert_array_equal(c["crops"], again["crops"])


def test_proposal_views_cover_the_region_centre_at_proposal_scales() -> None:
    rng = np.random.default_rng(0)
    box = (40.0, 50.0, 46.0, 54.0)  # 6 x 4, centre (43, 52)
    views = np.array([proposal_view(box, rng, (0.7, 3.5), 0.8) for _ in range(2000)])
    w, h = views[:, 2] - views[:, 0], views[:, 3] - views[:, 1]
    assert w.min() >= 6 * 0.7 - 1e-9 and w.max() <= 6 * 3.5 + 1e-9 and h.min() >= 4 * 0.7 - 1e-9
    assert (w > 12).mean() > 0.3 and (w < 6).mean() > 0.1  # loose and partial views both occur
    assert np.all((views[:, 0] < 43) & (43 < views[:, 2]) & (views[:, 1] < 52) & (52 < views[:, 3]))
    off = np.abs((views[:, 0] + views[:, 2]) / 2 - 43) / (w / 2)
    assert off.max() <= 0.8 + 1e-9 and off.max() > 0.6  # off centre, up to the shift
    assert proposal_view(box, np.random.default_rng(1), (1.0, 1.0), 0.0) == pytest.approx(box)


def test_corpus_views_add_proposal_like_crops_of_each_region() -> None:
    one = build_corpus(ClipTrainConfig.model_validate(TINY))
    three = build_corpus(ClipTrainConfig.model_validate({**TINY, "corpus": {"n_slices": 4, "views": 3}}))
    from collections import Counter

    c1, c3 = Counter(one["kinds"]), Counter(three["kinds"])
    assert c3 == Counter({k: 3 * n for k, n in c1.items()})  # every region 3 crops, background 3x boxes
    first = next(i for i, k in enumerate(three["kinds"]) if k != "background")
    assert not np.array_equal(three["crops"][first], three["crops"][first + 1])  # a view differs from its box
    with pytest.raises(ValueError, match="view_scale"):
        CorpusConfig(view_scale=(2.0, 1.0))


def test_background_boxes_stay_clear_and_hard_ones_find_structure() -> None:
    img = np.full((160, 160), 0.5, np.float32)
    img[40:, :] = 0.9  # one layer interface at y = 40; elsewhere flat
    defect = (10.0, 10.0, 20.0, 20.0)
    for share, expect_edge in ((0.0, False), (1.0, True)):
        taken = [defect]
        boxes = background_boxes(img, taken, [(8.0, 8.0)], 6, np.random.default_rng(0), hard_share=share,
                                 candidates=64)
        assert len(boxes) == 6 and taken[1:] == boxes
        for b in boxes:
            assert 0 <= b[0] and b[2] <= 160 and 0 <= b[1] and b[3] <= 160
            assert not (b[0] < 24 and 6 < b[2] and b[1] < 24 and 6 < b[3])  # 4 px clear of the defect
        on_edge = np.mean([b[1] < 40 < b[3] for b in boxes])
        assert (on_edge >= 0.5) if expect_edge else (on_edge <= 0.2), on_edge
    scaled = background_boxes(img, [], [(8.0, 8.0)], 60, np.random.default_rng(1), scale=(0.5, 2.0))
    sides = np.array([b[2] - b[0] for b in scaled])
    assert sides.min() >= 4.0 and sides.max() <= 16.0 + 1e-9 and sides.std() > 1.5


def test_loss_reduces_to_clip_and_hand_cases() -> None:
    torch.manual_seed(0)
    img = F.normalize(torch.randn(6, 8), dim=-1)
    txt = F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(math.log(10.0))
    logits = 10.0 * img @ txt.t()
    ref = 0.5 * (F.cross_entropy(logits, torch.arange(6)) + F.cross_entropy(logits.t(), torch.arange(6)))
    torch.testing.assert_close(multi_positive_clip_loss(img, txt, scale, torch.arange(6)), ref)
    # every caption identical and every embedding equal: uniform logits, loss = log B
    same = F.normalize(torch.ones(4, 8), dim=-1)
    loss = multi_positive_clip_loss(same, same, scale, torch.zeros(4, dtype=torch.long))
    assert float(loss) == pytest.approx(math.log(4), rel=1e-5)


def test_train_save_load_and_resume(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = ClipTrainConfig.model_validate(TINY)
    s = train_clip(tmp_path / "a", cfg, progress=False)
    meta = json.loads((tmp_path / "a" / "gsal_clip.json").read_text())
    assert meta["model_name"] == "gsal-ct-clip-s" and meta["image_std"][0] > 0
    assert s["train"]["loss"]["last"] > 0
    clip = ClipModel.from_folder(tmp_path / "a")
    assert clip.image_size == 16 and clip.image_mean == tuple(meta["image_mean"])
    emb = clip.encode_images(np.random.default_rng(0).random((3, 30, 30)).astype(np.float32))
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)
    text = concept_text_embeddings(clip, {"void": ["a dark round void", "a small dark pore inside the film"]})
    assert text["void"].shape == (16,)

    r = train_clip(tmp_path / "b", cfg, progress=False, stop_after=2)
    assert r["stopped"] and r["step"] == 2
    train_clip(tmp_path / "b", cfg, progress=False)
    from safetensors.torch import load_file

    a, b = load_file(str(tmp_path / "a" / "open_clip_model.safetensors")), load_file(
        str(tmp_path / "b" / "open_clip_model.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)
    with pytest.raises(RuntimeError, match="another config"):
        train_clip(tmp_path / "b", ClipTrainConfig.model_validate({**TINY, "steps": 4}), progress=False)
    r = train_clip(tmp_path / "b", cfg, progress=False, key_extra="v2", on_mismatch="restart", stop_after=1)
    assert r == {"stopped": True, "step": 1}


@pytest.mark.slow
def test_clip_learns_captions(tmp_path: Path) -> None:
    """200 real steps: the contrastive loss falls below chance level log(B) (images tell captions apart)."""
    torch.set_num_threads(1)
    arch = {"embed_dim": 32, "image_size": 16, "patch_size": 4, "vision_width": 32, "vision_layers": 2,
            "head_width": 16, "context_length": 12, "text_width": 32, "text_heads": 2, "text_layers": 2}
    cfg = ClipTrainConfig.model_validate({"steps": 200, "batch_size": 32, "lr": 2e-3, "warmup": 10,
                                          "corpus": {"n_slices": 30}, "arch": arch})
    s = train_clip(tmp_path / "c", cfg, progress=False)
    assert s["train"]["loss"]["last"] < math.log(32) - 0.3, s["train"]["loss"]
