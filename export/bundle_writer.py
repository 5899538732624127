"""Write a bundle folder: stage files, hash them, write ``manifest.json``, sign, move into place.

The reading side (hash + signature verification, loading) is ``gsal_edge.scoring.bundle``; this module only
writes. A bundle is staged in ``OUT/.staging-*`` and renamed to ``OUT/bundle-<id12>`` once complete,
so a station never sees a half-written bundle; ``OUT/LATEST`` names the newest.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from gsal_edge.provenance import git_commit, package_versions
from gsal_edge.scoring.bundle import (
    EMBEDDINGS_FILE,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILE,
    LATEST,
    MANIFEST,
    SIGNATURE,
    SPEC_FILE,
    bundle_id_from_files,
    manifest_bytes,
    sha256_file,
)

#: the packages that shape an export, listed in the manifest when installed (absent ones left out)
PACKAGES = (
    "gsal-edge", "torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "diffusers",
    "open_clip_torch", "numpy", "cryptography", "tensorrt",
)


class BundleWriter:
    """Stage files for one bundle, then :meth:`finalize` it into ``out_dir/bundle-<id12>``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.stage = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.out_dir))

    # ------------------------------------------------------------------ staging
    def path(self, rel: str) -> Path:
        p = self.stage / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def add_json(self, rel: str, obj: Any) -> Path:
        p = self.path(rel)
        p.write_bytes(manifest_bytes(obj))
        return p

    def add_array(self, rel: str, arr: np.ndarray) -> Path:
        p = self.path(rel)
        with open(p, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
        return p

    def add_file(self, src: str | Path, rel: str) -> Path:
        return Path(shutil.copy2(src, self.path(rel)))

    def add_scorer_parts(self, spec: dict[str, Any], graph: dict[str, Any], embeddings: np.ndarray) -> None:
        """The scorer spec, the concept graph, and its precomputed CLIP text embeddings."""
        if embeddings.shape[0] != len(spec["concepts"]):
            raise ValueError(f"{embeddings.shape[0]} embedding rows for {len(spec['concepts'])} concepts")
        self.add_json(SPEC_FILE, spec)
        self.add_json(GRAPH_FILE, graph)
        self.add_array(EMBEDDINGS_FILE, embeddings.astype(np.float32))

    def abort(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)

    # ------------------------------------------------------------------ finishing
    def file_table(self) -> dict[str, str]:
        """sha256 of every staged file except the manifest and its signature."""
        return {
            p.relative_to(self.stage).as_posix(): sha256_file(p)
            for p in sorted(self.stage.rglob("*"))
            if p.is_file() and p.name not in (MANIFEST, SIGNATURE)
        }

    def finalize(self, fields: dict[str, Any], signing_key: Any | None = None) -> Path:
        """Write the manifest (``fields`` + files, ids, versions), sign it, and move the bundle into place."""
        from export.signing import sign_bundle

        files = self.file_table()
        bundle_id = bundle_id_from_files(files)
        manifest = {
            **fields,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bundle_id": bundle_id,
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "packages": package_versions(PACKAGES),
            "files": files,
        }
        (self.stage / MANIFEST).write_bytes(manifest_bytes(manifest))
        if signing_key is not None:
            sign_bundle(self.stage, signing_key)
        final = self.out_dir / f"bundle-{bundle_id.split(':', 1)[1][:12]}"
        if final.exists():  # same content exported again: replace it
            trash = Path(tempfile.mkdtemp(prefix=".old-", dir=self.out_dir))
            final.rename(trash / final.name)
            shutil.rmtree(trash, ignore_errors=True)
        self.stage.rename(final)
        (self.out_dir / LATEST).write_text(final.name + "\n")
        return final


def dir_size(path: str | Path) -> int:
    """Bytes of all files under ``path``."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())

