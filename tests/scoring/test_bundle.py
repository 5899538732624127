"""Bundle reading and verification (gsal_edge.scoring.bundle) on bundles written by export.bundle_writer.

The four engines are trivially small modules obeying ENGINE_SIGNATURES, really exported to ONNX and
run in ONNX Runtime, so these tests exercise hashing, signing, refusal and loading without the real
models (tests/test_export_pipeline.py does the real ones).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from export.bundle_writer import BundleWriter
from export.config import ExportConfig
from export.onnx_export import export_onnx
from export.signing import generate_keypair, load_private_key, public_key_path, sign_bundle
from gsal_edge.scoring.bundle import (
    LATEST,
    MANIFEST,
    SIGNATURE,
    BundleError,
    bundle_id_from_files,
    load_bundle,
    load_public_key,
    read_manifest,
    resolve_bundle_dir,
    verify_bundle,
)


class ToyVae(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.conv(image) * 0.5


class ToyUnet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, latent: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.conv(latent) * (1.0 + timestep.float().reshape(-1, 1, 1, 1) / 1000.0)


class ToyClip(nn.Module):
    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(image, 4).flatten(1)
        return nn.functional.normalize(self.fc(x), dim=-1)


class ToyDetector(nn.Module):
    """Three fixed boxes (fractions of H/W); scores depend on the image's mean intensity."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.register_buffer("frac", torch.tensor([[0.1, 0.1, 0.4, 0.4], [0.5, 0.2, 0.9, 0.6], [0.3, 0.6, 0.7, 0.95]]))
        self.head = nn.Linear(1, classes + 1)

    def forward(self, image: torch.Tensor):
        h, w = image.shape[-2], image.shape[-1]
        scale = torch.stack([w, h, w, h]).to(image.dtype) if isinstance(w, torch.Tensor) else torch.tensor(
            [w, h, w, h], dtype=image.dtype)
        boxes = self.frac * scale
        scores = torch.sigmoid(image.mean() * self.frac[:, 2] * 4 - 1)
        probs = torch.softmax(self.head(scores[:, None]), dim=-1)
        labels = probs[:, 1:].argmax(dim=-1) + 1
        return boxes, scores, labels, probs


def _spec(classes: list[str], concepts: list[str]) -> dict:
    from gsal_edge.scoring.scorer import ScorerSpec

    betas = np.linspace(1e-4, 0.02, 100)
    abar = np.cumprod(1 - betas)
    return ScorerSpec(classes=classes, concepts=concepts, alphas_cumprod=abar.tolist(), prior_resolution=16,
                      crop_resolution=8, clip_resolution=16, K=2, M=3, proposal_mode="latent_roi").to_dict()


def write_toy_bundle(out: Path, key_path: Path | None, seed: int = 0) -> Path:
    """Export the toy engines and write a (signed when key_path) bundle; return its folder."""
    from gsal_edge.acquisition.concept_graph import load_graph

    torch.manual_seed(seed)
    graph = load_graph("thin_film_ct")
    classes, concepts = list(graph.defects), list(graph.fine)
    cfg = ExportConfig()
    rng = np.random.default_rng(seed)
    mods = {"vae_encoder": ToyVae(), "unet": ToyUnet(), "clip_image": ToyClip(), "detector": ToyDetector(len(classes))}
    samples = {
        "vae_encoder": {"image": rng.uniform(-1, 1, (2, 3, 16, 16)).astype(np.float32)},
        "unet": {"latent": rng.standard_normal((2, 4, 8, 8)).astype(np.float32), "timestep": np.array([25, 25])},
        "clip_image": {"image": rng.standard_normal((2, 3, 16, 16)).astype(np.float32)},
        "detector": {"image": rng.uniform(0, 1, (1, 32, 32)).astype(np.float32)},
    }
    w = BundleWriter(out)
    engines = {}
    for name, mod in mods.items():
        e = export_onnx(name, mod, samples[name], w.path(f"models/{name}.onnx"), cfg)
        engines[name] = e.manifest_entry(f"models/{name}.onnx")
    emb = rng.standard_normal((len(concepts), 8)).astype(np.float32)
    w.add_scorer_parts(_spec(classes, concepts), graph.to_dict(), emb / np.linalg.norm(emb, axis=1, keepdims=True))
    key = load_private_key(key_path) if key_path else None
    return w.finalize({"engines": engines, "concept_graph": {"name": graph.name}}, key)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("keys")
    good, good_pub = generate_keypair(d / "good.pem")
    other, other_pub = generate_keypair(d / "other.pem")
    return {"good": good, "good_pub": good_pub, "other": other, "other_pub": other_pub}


@pytest.fixture(scope="module")
def toy_bundle(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    return write_toy_bundle(tmp_path_factory.mktemp("bundles"), keys["good"])


@pytest.fixture
def bundle_copy(toy_bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / toy_bundle.name
    shutil.copytree(toy_bundle, dst)
    return dst


def test_manifest_lists_every_file_with_its_hash(toy_bundle: Path) -> None:
    m = read_manifest(toy_bundle)
    on_disk = sorted(p.relative_to(toy_bundle).as_posix() for p in toy_bundle.rglob("*") if p.is_file())
    assert sorted(m.files) == sorted(set(on_disk) - {MANIFEST, SIGNATURE})
    assert m.bundle_id == bundle_id_from_files(m.files)
    assert toy_bundle.name == "bundle-" + m.bundle_id.split(":")[1][:12]
    assert (toy_bundle.parent / LATEST).read_text().strip() == toy_bundle.name
    assert resolve_bundle_dir(toy_bundle.parent) == toy_bundle
    for key in ("created", "git_commit", "packages", "format_version"):
        assert key in m.data
    assert m.data["packages"]["onnxruntime"]
    assert m.engines["unet"]["outputs"][0]["shape"] == ["batch", 4, "h", "w"]


def test_good_bundle_loads_and_scores(toy_bundle: Path, keys: dict[str, Path]) -> None:
    scorer = load_bundle(toy_bundle, "onnxruntime", [keys["good_pub"]])
    assert scorer.bundle_id == read_manifest(toy_bundle).bundle_id
    assert {e.backend for e in scorer.engines.values()} == {"onnxruntime"}
    rng = np.random.default_rng(0)
    slices = [(rng.random((40, 48)) * 65535).astype(np.uint16) for _ in range(3)]
    recs = scorer.score(slices, ["a", "b", "c"])
    assert [r.image_id for r in recs] == ["a", "b", "c"]
    assert all(len(r.proposals) == 3 and np.isfinite(r.e_rec) and r.e_rec > 0 for r in recs)
    assert recs[0].model["bundle"] == scorer.bundle_id


def test_embed_regions_is_the_scorers_concept_assignment(toy_bundle: Path, keys: dict[str, Path]) -> None:
    scorer = load_bundle(toy_bundle, "onnxruntime", [keys["good_pub"]])
    rng = np.random.default_rng(1)
    slices = [(rng.random((40, 48)) * 65535).astype(np.uint16) for _ in range(2)]
    recs = scorer.score(slices, ["a", "b"])
    boxes = [[p.box for p in r.proposals] for r in recs]
    embs = scorer.embed_regions(slices, [boxes[0], []])
    assert embs[0].shape == (3, 8) and embs[1].shape == (0, 8)
    np.testing.assert_allclose(np.linalg.norm(embs[0], axis=1), 1.0, atol=1e-5)
    got = scorer.assigner(embs[0])
    assert list(got.concepts) == [p.concept for p in recs[0].proposals]
    for row, p in zip(got.similarity, recs[0].proposals):
        np.testing.assert_allclose(row, [p.similarity[c] for c in scorer.spec.concepts], atol=1e-6)
    # the record carries that very f_I per proposal (ScorerSpec.proposal_embedding, on by default)
    np.testing.assert_allclose([p.embedding for p in recs[0].proposals], embs[0], atol=1e-6)


def test_proposal_embedding_switch(toy_bundle: Path, keys: dict[str, Path]) -> None:
    """Off: no proposals[i].embedding (the record is an older station's); the spec dict names the field only
    when off, so a default bundle's spec and its digests are unchanged."""
    from gsal_edge.scoring.scorer import ScorerSpec

    scorer = load_bundle(toy_bundle, "onnxruntime", [keys["good_pub"]])
    assert "proposal_embedding" not in scorer.spec.to_dict()
    assert ScorerSpec.from_dict(scorer.spec.to_dict()) == scorer.spec
    x = [(np.random.default_rng(2).random((40, 48)) * 65535).astype(np.uint16)]
    on = scorer.score(x, ["a"])[0]
    scorer.spec.proposal_embedding = False
    off = scorer.score(x, ["a"])[0]
    assert all(p.embedding is None for p in off.proposals) and "embedding" not in off.to_json().split('"meta"')[0]
    assert [dataclasses.replace(p, embedding=None) for p in on.proposals] == off.proposals
    assert scorer.spec.to_dict()["proposal_embedding"] is False
    assert ScorerSpec.from_dict(scorer.spec.to_dict()) == scorer.spec


def test_tampered_model_byte_is_refused(bundle_copy: Path, keys: dict[str, Path]) -> None:
    f = bundle_copy / "models" / "unet.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"models/unet\.onnx: sha256 .* does not match"):
        load_bundle(bundle_copy, "onnxruntime", [keys["good_pub"]])


def test_wrong_key_is_refused(bundle_copy: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match=r"manifest\.sig: signed by key \w+, which is not among the trusted keys"):
        load_bundle(bundle_copy, "onnxruntime", [keys["other_pub"]])


def test_manifest_rewritten_to_match_tampered_file_is_refused(bundle_copy: Path, keys: dict[str, Path]) -> None:
    from gsal_edge.scoring.bundle import sha256_file

    f = bundle_copy / "concept_embeddings.npy"
    f.write_bytes(f.read_bytes()[:-4] + b"\x00\x00\x80\x3f")
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["files"]["concept_embeddings.npy"] = sha256_file(f)
    m["bundle_id"] = bundle_id_from_files(m["files"])
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"manifest\.sig: signature does not match manifest\.json"):
        verify_bundle(bundle_copy, [keys["good_pub"]])
    # re-signed by a key the station does not trust: still refused
    sign_bundle(bundle_copy, load_private_key(keys["other"]))
    with pytest.raises(BundleError, match="not among the trusted keys"):
        verify_bundle(bundle_copy, [keys["good_pub"]])


def test_missing_file_and_missing_signature(bundle_copy: Path, keys: dict[str, Path]) -> None:
    (bundle_copy / "models" / "detector.onnx").unlink()
    with pytest.raises(BundleError, match=r"models/detector\.onnx: listed in manifest\.json but missing"):
        verify_bundle(bundle_copy, [keys["good_pub"]])
    (bundle_copy / SIGNATURE).unlink()
    with pytest.raises(BundleError, match=r"manifest\.sig: bundle is not signed"):
        verify_bundle(bundle_copy, [keys["good_pub"]])


def test_no_trusted_keys_needs_explicit_allow_unsigned(tmp_path: Path) -> None:
    b = write_toy_bundle(tmp_path / "out", None)
    assert not (b / SIGNATURE).exists()
    with pytest.raises(BundleError, match="no trusted keys given"):
        load_bundle(b, "onnxruntime")
    m = verify_bundle(b, allow_unsigned=True)  # hashes are still checked
    assert m.root == b


def test_bad_inputs_name_the_file(tmp_path: Path, keys: dict[str, Path], bundle_copy: Path) -> None:
    with pytest.raises(BundleError, match="no such bundle folder"):
        read_manifest(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json missing"):
        read_manifest(tmp_path / "empty")
    m = json.loads((bundle_copy / MANIFEST).read_text())
    m["files"]["../../etc/passwd"] = "0" * 64
    (bundle_copy / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match="leaves the bundle folder"):
        read_manifest(bundle_copy)
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(BundleError, match=r"junk\.pem: not an Ed25519 public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(BundleError, match="unknown backend"):
        load_bundle(bundle_copy, "tflite", [keys["good_pub"]])


def test_torch_and_tensorrt_backends_explain_what_is_missing(toy_bundle: Path, keys: dict[str, Path]) -> None:
    with pytest.raises(BundleError, match="no 'torch' section"):
        load_bundle(toy_bundle, "torch", [keys["good_pub"]])
    with pytest.raises(BundleError, match="no engine has a TensorRT plan"):
        load_bundle(toy_bundle, "tensorrt", [keys["good_pub"]])


def test_keygen_writes_private_0600_and_public(tmp_path: Path) -> None:
    priv, pub = generate_keypair(tmp_path / "k.pem")
    assert pub == public_key_path(priv) and pub.name == "k.pub.pem"
    assert (priv.stat().st_mode & 0o777) == 0o600
    load_public_key(pub)
    with pytest.raises(FileExistsError):
        generate_keypair(tmp_path / "k.pem")
