"""Detector builder, presets, grayscale handling, engine wrapper, checkpoints, ONNX export, CLI."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from torchvision.ops import roi_align

from gsal_edge.models.detector import (
    DetectorWrapper,
    build_detector,
    count_parameters,
    load_checkpoint,
    predict,
    save_checkpoint,
)
from gsal_edge.models.detector_config import (
    AGNOSTIC_CLASS,
    PRESET_NAMES,
    DetectorConfig,
    DetectorConfigError,
    get_config,
    load_config,
)
from gsal_edge.models.detector_layers import CTTransform, SeparableRoIAlign


def _images(n: int, size: int = 64, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = (0.4 + 0.05 * rng.standard_normal((size, size))).astype(np.float32)
        y, x = rng.integers(5, size - 20, 2)
        img[y:y + 12, x:x + 12] += 0.4
        out.append(np.clip(img, 0, 1))
    return out


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return build_detector("tiny", 3, seed=0).eval()


def test_presets_validate_and_build() -> None:
    counts = {}
    for name in PRESET_NAMES:
        cfg = get_config(name)
        assert cfg.name == name
        counts[name] = count_parameters(build_detector(cfg, 5, seed=0))
    assert 0.4e6 < counts["cpu"] < 1.5e6  # "~1M parameters"
    assert counts["tiny"] < 20_000
    assert counts["tiny"] < counts["cpu"] < counts["edge"] < counts["paper"]
    assert get_config("paper").min_size == 600 and get_config("paper").train.batch_size == 16
    assert get_config("paper").train.lr == 0.02 and get_config("paper").train.weight_decay == 1e-4
    assert min(min(a) for a in get_config("cpu").anchor_sizes) <= 8  # small defects need small anchors
    # `auto` without training boxes covers down to 4 px
    assert min(min(a) for a in build_detector("cpu", 5, anchor_sizes="auto").config.anchor_sizes) <= 4


def test_seeded_build_is_reproducible() -> None:
    a = build_detector("tiny", 2, seed=3).state_dict()
    b = build_detector("tiny", 2, seed=3).state_dict()
    c = build_detector("tiny", 2, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_config_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(DetectorConfigError, match="unknown detector preset"):
        get_config("huge")
    with pytest.raises(DetectorConfigError, match="image_mean"):
        get_config("cpu", {"image_mean": [0.5, 0.5]})
    with pytest.raises(DetectorConfigError, match="feature maps"):
        build_detector("paper", 2, anchor_sizes=[[16], [32]])
    with pytest.raises(DetectorConfigError, match="train"):
        get_config("cpu", {"train": {"lr_milestones": [0.9, 0.5]}})
    f = tmp_path / "bad.yaml"
    f.write_text("preset: cpu\nmin_sise: 3\n")
    with pytest.raises(DetectorConfigError, match="bad.yaml"):
        load_config(f)
    f.write_text("preset: cpu\nmin_size: 320\nmax_size: 320\ntrain: {lr: 0.005}\n")
    cfg = load_config(f)
    assert cfg.min_size == 320 and cfg.train.lr == 0.005 and cfg.train.batch_size == get_config("cpu").train.batch_size


def test_ct_transform_replicates_gray_only_for_3_channel_backbones() -> None:
    x = torch.rand(1, 32, 32)
    t3 = CTTransform(32, 32, [0.1, 0.2, 0.3], [0.5, 0.5, 0.5], in_channels=3)
    y = t3.normalize(x)
    assert y.shape == (3, 32, 32)
    assert torch.allclose(y[1], (x[0] - 0.2) / 0.5)
    t1 = CTTransform(32, 32, [0.45], [0.25], in_channels=1)
    assert torch.allclose(t1.normalize(x), (x - 0.45) / 0.25)
    with pytest.raises(TypeError, match="float"):
        t1.normalize(torch.zeros(1, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels"):
        t1.normalize(torch.zeros(2, 4, 4))


@pytest.mark.parametrize("sampling", [1, 2])
def test_separable_roi_align_equals_torchvision(sampling: int) -> None:
    g = torch.Generator().manual_seed(0)
    feat = torch.randn(2, 3, 16, 20, generator=g, dtype=torch.float64, requires_grad=True)
    boxes = []
    for _ in range(2):
        xy = torch.rand(30, 2, generator=g, dtype=torch.float64) * 180 - 20  # some outside the image
        wh = torch.rand(30, 2, generator=g, dtype=torch.float64) * 70
        boxes.append(torch.cat([xy, xy + wh], 1))
    pool = SeparableRoIAlign("0", 5, sampling, 1 / 8).train()
    mine = pool({"0": feat}, boxes, [(128, 160)] * 2)
    ref = roi_align(feat, boxes, 5, 1 / 8, sampling, False)
    assert torch.allclose(mine, ref, atol=1e-10)
    w = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (g1,) = torch.autograd.grad((mine * w).sum(), feat)
    (g2,) = torch.autograd.grad((ref * w).sum(), feat)
    assert torch.allclose(g1, g2, atol=1e-10)
    with torch.no_grad():  # inference takes torchvision's kernel: the same numbers
        assert torch.allclose(pool.eval()({"0": feat}, boxes, [(128, 160)] * 2), ref, atol=1e-10)


def test_wrapper_signature_and_class_probs(tiny) -> None:
    wrapper = DetectorWrapper(tiny)
    boxes, scores, labels, probs = wrapper(torch.from_numpy(_images(1)[0])[None])
    n = scores.shape[0]
    assert n > 0  # score threshold 0 in `tiny`: there are always detections to score
    assert boxes.shape == (n, 4) and labels.dtype == torch.int64 and probs.shape == (n, 4)
    assert torch.allclose(probs.sum(1), torch.ones(n), atol=1e-5)
    # a detection's score is the softmax probability of its label in its class_probs row
    assert torch.allclose(probs[torch.arange(n), labels], scores, atol=1e-6)
    assert (labels >= 1).all() and (labels <= 3).all()
    assert (boxes[:, 2] <= 64).all() and (boxes[:, 0] >= 0).all()


def test_predict_matches_wrapper_and_checks_inputs(tiny) -> None:
    imgs = _images(3, size=80)
    preds = predict(tiny, imgs, batch_size=2)
    assert len(preds) == 3
    with torch.no_grad():
        b, _s, lab, p = DetectorWrapper(tiny)(torch.from_numpy(imgs[2])[None])
    assert np.allclose(preds[2].boxes, b.detach().numpy(), atol=1e-4)
    assert np.array_equal(preds[2].labels, lab.numpy()) and np.allclose(preds[2].class_probs, p.numpy(), atol=1e-6)
    assert preds[0].boxes[:, 2].max() <= 80  # boxes in the input image's own pixels
    with pytest.raises(ValueError, match="image 1.*float32"):
        predict(tiny, [imgs[0], (imgs[1] * 65535).astype(np.uint16)])


def test_class_agnostic_has_one_class() -> None:
    m = build_detector("tiny", 5, seed=0, class_agnostic=True).eval()
    _, _, labels, probs = DetectorWrapper(m)(torch.from_numpy(_images(1)[0])[None])
    assert probs.shape[1] == 2 and set(labels.tolist()) <= {1}


def test_checkpoint_round_trip(tmp_path, tiny) -> None:
    cfg = tiny.config
    path = save_checkpoint(tmp_path / "d.pt", tiny, cfg, ["void", "inclusion", "crack"],
                           {"window": [0, 65535], "input_size": [64, 64]}, extra={"note": "x"})
    model, meta = load_checkpoint(path)
    assert meta["classes"] == ["void", "inclusion", "crack"] and model.classes == meta["classes"]
    assert meta["preprocessing"]["window"] == [0, 65535] and meta["extra"]["note"] == "x"
    assert meta["config"] == cfg
    x = torch.from_numpy(_images(1)[0])[None]
    for a, b in zip(DetectorWrapper(tiny)(x), DetectorWrapper(model)(x)):
        assert torch.allclose(a.float(), b.float())
    with pytest.raises(DetectorConfigError, match="class names"):
        save_checkpoint(tmp_path / "e.pt", tiny, cfg, ["void"], {})
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DetectorConfigError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    with pytest.raises(DetectorConfigError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_local_full_weights_load_all_but_the_class_predictor(tmp_path) -> None:
    src = build_detector("tiny", 7, seed=1)
    torch.save(src.state_dict(), tmp_path / "coco.pth")
    m = build_detector("tiny", 2, seed=2, weights=str(tmp_path / "coco.pth"))
    sd_src, sd = src.state_dict(), m.state_dict()
    assert torch.equal(sd["backbone.body.0.0.weight"], sd_src["backbone.body.0.0.weight"])
    assert torch.equal(sd["roi_heads.box_head.fc6.weight"], sd_src["roi_heads.box_head.fc6.weight"])
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 3  # own classes, fresh
    with pytest.raises(DetectorConfigError, match="never downloaded"):
        build_detector("tiny", 2, weights=str(tmp_path / "missing.pth"))


@pytest.mark.slow
def test_local_backbone_weights_for_mobilenet(tmp_path) -> None:
    from torchvision.models import mobilenet_v3_large

    torch.manual_seed(0)
    body = mobilenet_v3_large(weights=None)
    torch.save(body.state_dict(), tmp_path / "mnv3.pth")
    m = build_detector("edge", 2, weights_backbone=str(tmp_path / "mnv3.pth"))
    assert torch.equal(m.backbone.body["0"][0].weight, body.features[0][0].weight)
    # pretrained backbone: batch norm frozen, early layers not trained
    assert not m.backbone.body["0"][0].weight.requires_grad
    torch.save({"foo": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(DetectorConfigError, match="wrong.pth"):
        build_detector("edge", 2, weights_backbone=str(tmp_path / "wrong.pth"))


@pytest.mark.slow
def test_onnx_export_matches_torch(tmp_path) -> None:
    import onnxruntime as ort

    from gsal_edge.data.synthetic.generator import generate_dataset
    from gsal_edge.models.detector_training import train_detector

    ds = generate_dataset(tmp_path / "data", 8, seed=0, progress=False)
    model = train_detector(ds, "tiny", epochs=1, seed=0, progress=False)  # a few real steps: untied scores
    wrapper = DetectorWrapper(model).eval()
    x = torch.from_numpy(_images(1, size=128)[0])[None]
    f = io.BytesIO()
    torch.onnx.export(wrapper, (x,), f, opset_version=17, dynamo=False, input_names=["image"],
                      output_names=["boxes", "scores", "labels", "class_probs"],
                      dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "n"}, "scores": {0: "n"},
                                    "labels": {0: "n"}, "class_probs": {0: "n"}})
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    for size in (128, 96, 160, 200):
        img = _images(1, size=size, seed=size)[0][None]
        if size == 200:  # not square: the feature map's shape differs from the traced one
            img = np.ascontiguousarray(img[:, :, :120])
        got = sess.run(None, {"image": img})
        want = [t.detach().numpy() for t in wrapper(torch.from_numpy(img))]
        assert got[2].dtype == np.int64 and got[3].shape[1] == model.num_classes + 1
        assert got[0].shape == want[0].shape, size
        assert np.allclose(got[0], want[0], atol=1e-3) and np.allclose(got[3], want[3], atol=1e-4)


def test_cli_presets_and_eval(tmp_path, tiny) -> None:
    from typer.testing import CliRunner

    from gsal_cli.commands.detector import app
    from gsal_edge.data.synthetic.generator import generate_dataset

    runner = CliRunner()
    r = runner.invoke(app, ["presets"])
    assert r.exit_code == 0 and "cpu" in r.output and " parameters" in r.output
    ds = generate_dataset(tmp_path / "data", 4, seed=0, progress=False)
    ckpt = save_checkpoint(tmp_path / "d.pt", build_detector("tiny", len(ds.classes), seed=0), get_config("tiny"),
                           ds.classes, {"window": None})
    r = runner.invoke(app, ["eval", "--ckpt", str(ckpt), "--data", str(tmp_path / "data"), "--json",
                            str(tmp_path / "m.json")])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "m.json").read_text())
    assert set(m["per_class"]) == set(ds.classes) and m["n_images"] == 4
    for name in ds.classes:
        assert name in r.output
    r = runner.invoke(app, ["eval", "--ckpt", str(tmp_path / "missing.pt"), "--data", str(tmp_path / "data")])
    assert r.exit_code == 2 and "missing.pt" in r.output


def test_agnostic_class_name() -> None:
    assert AGNOSTIC_CLASS == "defect"
    assert DetectorConfig().in_channels == 1 and get_config("edge").in_channels == 3


def test_builder_overrides_are_validated() -> None:
    with pytest.raises(DetectorConfigError, match="image_std"):
        build_detector("tiny", 2, image_std=[0.0])
    m = build_detector("tiny", 2, train={"lr": 0.123})
    assert m.config.train.lr == 0.123 and m.config.train.batch_size == get_config("tiny").train.batch_size
