"""Station side of a GSAL bundle: manifest reading, sha256 + ed25519 verification, loading.

A bundle is a folder written by ``export/bundle_writer.py`` (the station never imports ``export/``)::

    bundle-<id12>/
      manifest.json            # signatures, shapes, sha256 of every file, sources, versions, bundle_id
      manifest.sig             # {"algorithm": "ed25519", "key_id": .., "signature": base64}
      scorer_spec.json         # gsal_edge.scoring.scorer.ScorerSpec.to_dict()
      concept_graph.json       # the concept graph the embeddings were made for
      concept_embeddings.npy   # [n_concepts, d] precomputed CLIP text embeddings (rows = spec.concepts)
      models/<engine>.onnx     # the four engines (ENGINE_SIGNATURES names)
      models/<engine>.plan     # optional TensorRT engines (GPU-specific)
      torch/...                # optional PyTorch sources (backend="torch")

``bundle_id = "sha256:" + sha256("".join(f"{path}\\t{sha256}\\n" for path in sorted(files)))`` over the
manifest's ``files`` table, so the id names the content, not the time it was written. The signature
covers the exact bytes of ``manifest.json``, which covers every file through its hash.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.errors import GSALError

FORMAT = "gsal-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
LATEST = "LATEST"  # in a bundles folder: the name of the newest bundle
SPEC_FILE = "scorer_spec.json"
GRAPH_FILE = "concept_graph.json"
EMBEDDINGS_FILE = "concept_embeddings.npy"
ENGINE_NAMES = ("detector", "vae_encoder", "unet", "clip_image")
BACKENDS = ("onnxruntime", "torch", "tensorrt")

# a key file path (PEM or raw 32 bytes), PEM/raw bytes, or a cryptography Ed25519PublicKey
PublicKeyLike = str | Path | bytes | Any


class BundleError(GSALError, RuntimeError):
    """A bundle is missing, malformed, tampered with, or not signed by a trusted key."""


# ----------------------------------------------------------------------------- hashing
def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def bundle_id_from_files(files: dict[str, str]) -> str:
    """``sha256:<hex>`` over the sorted ``path<TAB>sha256`` lines of a manifest's file table."""
    text = "".join(f"{p}\t{files[p]}\n" for p in sorted(files))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def manifest_bytes(obj: Any) -> bytes:
    """The bytes a bundle's JSON files are written as (sorted keys, 2-space indent, trailing newline).

    Readable, not the compact :func:`gsal_edge.jsonio.canonical_json`: the signature covers these exact
    bytes of ``manifest.json``, so the encoding must never change."""
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


# ----------------------------------------------------------------------------- keys
def load_public_key(key: PublicKeyLike) -> Any:
    """An Ed25519 public key from a PEM/raw-32-byte file path, PEM bytes, raw bytes, or a key object."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if isinstance(key, Ed25519PrivateKey):
        return key.public_key()
    where = "public key bytes"
    if isinstance(key, (str, Path)):
        where = str(key)
        try:
            data = Path(key).read_bytes()
        except OSError as e:
            raise BundleError(f"{where}: cannot read public key ({e.strerror})") from e
    else:
        data = bytes(key)
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            pub = serialization.load_pem_public_key(data)
        elif len(data) == 32:
            pub = Ed25519PublicKey.from_public_bytes(data)
        else:
            raise ValueError(f"{len(data)} bytes, neither PEM nor a raw 32-byte key")
    except ValueError as e:
        raise BundleError(f"{where}: not an Ed25519 public key ({e})") from e
    if not isinstance(pub, Ed25519PublicKey):
        raise BundleError(f"{where}: {type(pub).__name__} is not an Ed25519 public key")
    return pub


def key_id(public_key: Any) -> str:
    """Short fingerprint of an Ed25519 public key: first 16 hex of sha256(raw bytes)."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ----------------------------------------------------------------------------- manifest
@dataclass(frozen=True)
class Manifest:
    """A parsed ``manifest.json`` plus the folder it came from."""

    root: Path
    data: dict[str, Any]

    @property
    def bundle_id(self) -> str:
        return str(self.data["bundle_id"])

    @property
    def files(self) -> dict[str, str]:
        return dict(self.data["files"])

    @property
    def engines(self) -> dict[str, dict[str, Any]]:
        return dict(self.data["engines"])

    def path(self, rel: str) -> Path:
        return self.root / rel


def resolve_bundle_dir(path: str | Path) -> Path:
    """A bundle folder itself, or a bundles folder whose ``LATEST`` file names one."""
    p = Path(path)
    if (p / MANIFEST).is_file():
        return p
    if (p / LATEST).is_file():
        name = (p / LATEST).read_text().strip()
        if name and (p / name / MANIFEST).is_file():
            return p / name
        raise BundleError(f"{p / LATEST}: names {name!r}, which has no {MANIFEST}")
    if not p.exists():
        raise BundleError(f"{p}: no such bundle folder")
    raise BundleError(f"{p}: not a bundle ({MANIFEST} missing) and no {LATEST} file")


def read_manifest(path: str | Path) -> Manifest:
    """Parse and structurally check ``manifest.json`` (no hashing; see :func:`verify_bundle`)."""
    root = resolve_bundle_dir(path)
    mpath = root / MANIFEST
    try:
        data = json.loads(mpath.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{mpath}: unreadable manifest ({e})") from e
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise BundleError(f"{mpath}: not a {FORMAT} manifest (field 'format')")
    if data.get("format_version") != FORMAT_VERSION:
        raise BundleError(
            f"{mpath}: format_version {data.get('format_version')!r}, this station reads {FORMAT_VERSION}"
        )
    for key, typ in (("files", dict), ("engines", dict), ("bundle_id", str)):
        if not isinstance(data.get(key), typ):
            raise BundleError(f"{mpath}: field {key!r} missing or not a {typ.__name__}")
    for rel in data["files"]:
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            raise BundleError(f"{mpath}: file entry {rel!r} leaves the bundle folder")
    missing = [e for e in ENGINE_NAMES if e not in data["engines"]]
    if missing:
        raise BundleError(f"{mpath}: field 'engines' lacks {missing}")
    return Manifest(root=root, data=data)


def verify_hashes(manifest: Manifest) -> None:
    """Raise :class:`BundleError` naming the first file that is missing or whose sha256 differs."""
    files = manifest.files
    for rel in sorted(files):
        p = manifest.path(rel)
        if not p.is_file():
            raise BundleError(f"{p}: listed in {MANIFEST} but missing")
        got = sha256_file(p)
        if got != files[rel]:
            raise BundleError(f"{p}: sha256 {got[:16]}… does not match {MANIFEST} ({files[rel][:16]}…)")
    want = bundle_id_from_files(files)
    if manifest.bundle_id != want:
        raise BundleError(f"{manifest.path(MANIFEST)}: bundle_id {manifest.bundle_id} is not the hash of its files")


def verify_signature(manifest: Manifest, trusted_keys: Sequence[PublicKeyLike]) -> str:
    """Check ``manifest.sig`` against ``trusted_keys``; return the key id that signed it."""
    from cryptography.exceptions import InvalidSignature

    spath = manifest.path(SIGNATURE)
    if not spath.is_file():
        raise BundleError(f"{spath}: bundle is not signed")
    try:
        sig = json.loads(spath.read_text())
        signature = base64.b64decode(sig["signature"], validate=True)
        kid = str(sig["key_id"])
        if sig.get("algorithm") != "ed25519":
            raise ValueError(f"algorithm {sig.get('algorithm')!r}, expected 'ed25519'")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BundleError(f"{spath}: malformed signature file ({e})") from e
    keys = {key_id(k): k for k in (load_public_key(k) for k in trusted_keys)}
    if kid not in keys:
        raise BundleError(
            f"{spath}: signed by key {kid}, which is not among the trusted keys {sorted(keys) or '(none)'}"
        )
    try:
        keys[kid].verify(signature, manifest.path(MANIFEST).read_bytes())
    except InvalidSignature as e:
        raise BundleError(f"{spath}: signature does not match {MANIFEST} (key {kid})") from e
    return kid


def verify_bundle(
    path: str | Path, trusted_keys: Sequence[PublicKeyLike] | None = None, allow_unsigned: bool = False
) -> Manifest:
    """Read the manifest, check every file's sha256 and (unless ``allow_unsigned``) the ed25519 signature.

    The signature is checked first, so a manifest edited to match a tampered file is refused as well.
    """
    manifest = read_manifest(path)
    if not allow_unsigned:
        if not trusted_keys:
            raise BundleError(f"{manifest.root}: no trusted keys given (pass trusted_keys or allow_unsigned)")
        verify_signature(manifest, trusted_keys)
    verify_hashes(manifest)
    return manifest


# ----------------------------------------------------------------------------- loading
def _engine_file(manifest: Manifest, name: str, field: str) -> Path:
    entry = manifest.engines[name]
    rel = entry.get(field)
    if not rel:
        raise BundleError(f"{manifest.path(MANIFEST)}: engines.{name}.{field} missing")
    if rel not in manifest.files:
        raise BundleError(f"{manifest.path(MANIFEST)}: engines.{name}.{field} = {rel!r} is not in 'files'")
    return manifest.path(rel)


def _onnx_engines(manifest: Manifest, providers: Sequence[Any] | None, threads: int | None) -> dict[str, Any]:
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine

    return {
        n: OrtEngine(n, _engine_file(manifest, n, "onnx"), providers=providers, threads=threads)
        for n in ENGINE_NAMES
    }


def _tensorrt_engines(manifest: Manifest, threads: int | None, device: int) -> dict[str, Any]:
    """TensorRT plans where the bundle has them; the rest on ORT (CUDA EP first), as the manifest records."""
    from gsal_edge.scoring.runtime.onnxruntime_backend import OrtEngine, gpu_providers
    from gsal_edge.scoring.runtime.tensorrt_backend import TrtEngine

    engines: dict[str, Any] = {}
    for n in ENGINE_NAMES:
        if manifest.engines[n].get("tensorrt"):
            engines[n] = TrtEngine(n, _engine_file(manifest, n, "tensorrt"), device=device)
        else:
            engines[n] = OrtEngine(n, _engine_file(manifest, n, "onnx"), providers=gpu_providers(), threads=threads)
    if not any(getattr(e, "backend", "") == "tensorrt" for e in engines.values()):
        raise BundleError(f"{manifest.path(MANIFEST)}: no engine has a TensorRT plan (export with --tensorrt on)")
    return engines


def build_torch_modules(
    sources: dict[str, str], device: str = "cpu", loaded: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The four engine ``nn.Module`` wrappers from PyTorch sources (the same ones ``export/`` exports).

    ``sources``: ``detector`` (a ``gsal_edge.models.detector`` checkpoint), ``prior`` (an SD-layout folder),
    ``clip`` (a folder with ``gsal_clip.json``). ``loaded`` may hold an already loaded ``prior`` /
    ``clip`` object to reuse.
    """
    from gsal_edge.models.clip_model import ClipModel
    from gsal_edge.models.detector import DetectorWrapper, load_checkpoint
    from gsal_edge.models.diffusion_prior import DiffusionPrior

    loaded = loaded or {}
    det, _ = load_checkpoint(sources["detector"], map_location=device)
    prior = loaded.get("prior") or DiffusionPrior.from_pretrained(sources["prior"], device=device)
    clip = loaded.get("clip") or ClipModel.from_folder(sources["clip"], device=device)
    return {
        "detector": DetectorWrapper(det).eval(),
        "vae_encoder": prior.vae_encoder_module(),
        "unet": prior.unet_module(),
        "clip_image": clip.image_module(),
    }


def _torch_engines(manifest: Manifest, device: str, allow_tf32: bool = False) -> dict[str, Any]:
    """Rebuild the PyTorch wrappers from the bundle's ``torch/`` sources (the same ones that were exported)."""
    from gsal_edge.scoring.runtime.torch_backend import TorchEngine

    sources = manifest.data.get("torch")
    mpath = manifest.path(MANIFEST)
    if not isinstance(sources, dict) or not sources:
        raise BundleError(f"{mpath}: no 'torch' section (the bundle was exported without PyTorch weights)")
    for key, rel in sources.items():
        if not any(f == rel or f.startswith(rel.rstrip("/") + "/") for f in manifest.files):
            raise BundleError(f"{mpath}: torch.{key} = {rel!r} is not covered by 'files'")
    try:
        modules = build_torch_modules({k: str(manifest.path(v)) for k, v in sources.items()}, device=device)
    except (OSError, ValueError, KeyError) as e:
        raise BundleError(f"{manifest.root / 'torch'}: cannot rebuild the PyTorch models ({e})") from e
    return {n: TorchEngine(n, modules[n], device=device, allow_tf32=allow_tf32) for n in ENGINE_NAMES}


def load_concepts(manifest: Manifest) -> tuple[dict[str, Any], np.ndarray]:
    """The scorer spec dict and the concept embedding matrix of a verified bundle."""
    spec_path = manifest.path(SPEC_FILE)
    emb_path = manifest.path(EMBEDDINGS_FILE)
    for p in (spec_path, emb_path):
        if p.name not in manifest.files:
            raise BundleError(f"{p}: not listed in {MANIFEST} 'files'")
    try:
        spec = json.loads(spec_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{spec_path}: unreadable scorer spec ({e})") from e
    try:
        emb = np.load(emb_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise BundleError(f"{emb_path}: unreadable embeddings ({e})") from e
    return spec, emb


def load_bundle(
    path: str | Path,
    backend: str = "onnxruntime",
    trusted_keys: Sequence[PublicKeyLike] | None = None,
    *,
    allow_unsigned: bool = False,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
    device: str = "cpu",
    station: str = "",
    allow_tf32: bool = False,
) -> Any:
    """Verify a bundle and return a ready :class:`gsal_edge.scoring.scorer.GSALScorer` on ``backend``.

    Refuses (:class:`BundleError` naming the file) a bundle whose hashes or signature do not match.
    ``device`` is the torch device for ``backend="torch"``; for TensorRT, ``"cuda:N"`` picks GPU N.
    ``allow_tf32``: let ``backend="torch"`` on CUDA round convolutions to TF32 (off: records match the CPU's).
    """
    from gsal_edge.scoring.scorer import GSALScorer, ScorerSpec

    if backend not in BACKENDS:
        raise BundleError(f"unknown backend {backend!r}; known: {list(BACKENDS)}")
    manifest = verify_bundle(path, trusted_keys, allow_unsigned=allow_unsigned)
    spec_dict, emb = load_concepts(manifest)
    try:
        spec = ScorerSpec.from_dict(spec_dict)
    except (TypeError, ValueError) as e:
        raise BundleError(f"{manifest.path(SPEC_FILE)}: {e}") from e
    if backend == "onnxruntime":
        engines = _onnx_engines(manifest, providers, threads)
    elif backend == "tensorrt":
        gpu = int(device.split(":")[1]) if device.startswith("cuda:") else 0
        engines = _tensorrt_engines(manifest, threads, gpu)
    else:
        engines = _torch_engines(manifest, device, allow_tf32)
    graph_name = str(manifest.data.get("concept_graph", {}).get("name", ""))
    try:
        return GSALScorer(
            engines, spec, emb, bundle_id=manifest.bundle_id, station=station, backend=backend, graph_name=graph_name
        )
    except ValueError as e:
        raise BundleError(f"{manifest.root}: scorer refused the bundle ({e})") from e


def trusted_keys_from(paths: Iterable[str | Path]) -> list[Any]:
    """Load several public key files (e.g. from a station config) into key objects."""
    return [load_public_key(p) for p in paths]
