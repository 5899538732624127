"""Content-addressed slice images on disk, written atomically (temp + fsync + rename + dir fsync).

A stored image is named by the sha256 of its bytes: ``<root>/<aa>/<sha256>.<ext>``. Writing the same
bytes twice is a no-op, so a retried ingest never duplicates a file, and a file left behind by a crash
between the image write and the database commit is harmless (the retry finds it in place).

Raw pixel arrays are stored losslessly: 2-D uint8/uint16 as PNG (viewable by annotation tools and read
by the detector's data loader), float32 as TIFF.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gsal_edge.data.image_io import load_image
from gsal_edge.errors import GSALError
from gsal_edge.jsonio import fsync_dir

FSYNC_THREADS = 16  # concurrent fsyncs per image batch
#: formats the store accepts, by file extension
IMAGE_FORMATS = ("png", "tiff", "npy")
_MAGIC = {
    "png": (b"\x89PNG\r\n\x1a\n",),
    "tiff": (b"II*\x00", b"MM\x00*"),
    "npy": (b"\x93NUMPY",),
}


class ImageError(GSALError, ValueError):
    """Image bytes or pixels cannot be stored; the message names the item."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sniff_format(data: bytes, where: str = "image") -> str:
    """The stored format ("png" | "tiff" | "npy") of encoded bytes, from their magic number."""
    for fmt, magics in _MAGIC.items():
        if any(data.startswith(m) for m in magics):
            return fmt
    raise ImageError(f"{where}: bytes are not PNG, TIFF or NPY (first bytes {data[:8]!r})")


def encode_pixels(pixels: np.ndarray, where: str = "image") -> tuple[bytes, str]:
    """Encode a 2-D slice losslessly: uint8/uint16 -> PNG, float32 -> TIFF. Returns (bytes, format)."""
    if pixels.ndim == 3 and pixels.shape[-1] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim != 2 or pixels.size == 0:
        raise ImageError(f"{where}: expected a non-empty 2-D slice, got shape {tuple(pixels.shape)}")
    if pixels.dtype == np.uint8 or pixels.dtype == np.uint16:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG")
        return buf.getvalue(), "png"
    if pixels.dtype == np.float32:
        if not np.isfinite(pixels).all():
            raise ImageError(f"{where}: float32 pixels contain NaN or Inf")
        import tifffile

        buf = io.BytesIO()
        tifffile.imwrite(buf, np.ascontiguousarray(pixels))
        return buf.getvalue(), "tiff"
    raise ImageError(f"{where}: unsupported dtype {pixels.dtype} (uint8, uint16, float32)")


def decode_image(path: str | Path) -> np.ndarray:
    """Read a stored image back as a 2-D array (its stored dtype), with the project's one image reader."""
    return load_image(path)


def to_display_uint8(pixels: np.ndarray) -> np.ndarray:
    """A uint8 view for annotators: uint8 as is, others min-max scaled per slice."""
    if pixels.dtype == np.uint8:
        return pixels
    x = pixels.astype(np.float64)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.uint8)
    return np.round((x - lo) / (hi - lo) * 255.0).astype(np.uint8)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees either nothing or the whole file, durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)


def _durable_write_many(files: dict[Path, bytes], max_threads: int = FSYNC_THREADS) -> None:
    """Write each file to a temp name, fsync all (concurrently), rename, fsync the directories."""
    from concurrent.futures import ThreadPoolExecutor

    staged: list[tuple[int, str, Path]] = []
    try:
        for dest, data in files.items():
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=dest.suffix)
            staged.append((fd, tmp, dest))
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        with ThreadPoolExecutor(min(max_threads, len(staged))) as ex:
            list(ex.map(os.fsync, [fd for fd, _, _ in staged]))
        for fd, tmp, dest in staged:
            os.close(fd)
            os.replace(tmp, dest)
        staged = []
        dirs = sorted({dest.parent for dest in files})
        with ThreadPoolExecutor(min(max_threads, len(dirs))) as ex:
            list(ex.map(fsync_dir, dirs))
    finally:
        for fd, tmp, _ in staged:  # only on failure: nothing half-written stays visible
            try:
                os.close(fd)
            except OSError:
                pass
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


class ImageStore:
    """A directory of content-addressed image files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def relpath(self, sha: str, fmt: str) -> str:
        return f"{sha[:2]}/{sha}.{fmt}"

    def path(self, sha: str, fmt: str) -> Path:
        return self.root / self.relpath(sha, fmt)

    def put(self, data: bytes, fmt: str | None = None, where: str = "image") -> tuple[str, str]:
        """Store ``data`` durably (idempotent); returns (sha256, format)."""
        return self.put_many([(data, fmt, where)])[0]

    def put_many(self, items: Sequence[tuple[bytes, str | None, str]]) -> list[tuple[str, str]]:
        """Store several images durably; returns (sha256, format) per item, in order.

        Same guarantees as one :func:`atomic_write` per file (content fsynced before the rename, the
        directory fsynced after it), but the fsyncs of a batch run concurrently: on a journaling file
        system concurrent fsyncs share journal commits, so a batch costs a few commits, not 2 per image.
        """
        out: list[tuple[str, str]] = []
        todo: dict[Path, bytes] = {}
        for data, fmt, where in items:
            if not data:
                raise ImageError(f"{where}: empty image bytes")
            fmt = fmt or sniff_format(data, where)
            if fmt not in IMAGE_FORMATS:
                raise ImageError(f"{where}: unsupported image format {fmt!r} (one of {IMAGE_FORMATS})")
            sha = sha256_bytes(data)
            out.append((sha, fmt))
            dest = self.path(sha, fmt)
            if not (dest.exists() and dest.stat().st_size == len(data)):
                todo[dest] = data
        if todo:
            _durable_write_many(todo)
        return out

    def put_pixels(self, pixels: np.ndarray, where: str = "image") -> tuple[str, str]:
        data, fmt = encode_pixels(pixels, where)
        return self.put(data, fmt, where)
