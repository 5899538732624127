"""Which image references each station may make, and the one way the trainer reads one.

A ``SliceRef`` names pixels a station keeps instead of sending them. Unchecked, it let any station make the
trainer read and hand to annotators any file on the trainer host (issue 18). Now a reference is stored at
ingest only when

1. :func:`gsal_wire.validation.check_ref_uri` accepts it (scheme, no loopback / link-local host, no
   credentials, no ``..``),
2. it carries its sha256 (64 hex digits), and
3. it lies under one of *that station's own* roots, configured in ``<store>/ref_roots.json``
   (``gsal-edge trainer ref-roots --add STATION=ROOT``). A root is an absolute directory (for ``file://``
   references) or a URL prefix (``https://host/prefix/``, ``s3://bucket/prefix/``). No root, no refs.

The stored form is ``<uri>#sha256=<hex>`` (pip's hash-fragment convention), so the hash travels with the
row. Reading a reference (:class:`RefFetcher`: exports, Label Studio / FiftyOne pushes, concept crops)
checks it again against the policy of that moment, resolves symlinks (the real path must stay under the
real root), reads only a regular file of at most ``max_bytes``, and compares the bytes with the sha256.
Verified bytes are copied into the store's content-addressed images and read from there. This trainer has
no HTTP / S3 client: such references are stored (checked) but reading them is refused with that reason.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from gsal_edge.data.slices import DEFAULT_LIMITS, SliceError
from gsal_edge.jsonio import write_json_atomic
from gsal_wire import STATION_ID_RE
from gsal_wire.validation import check_ref_uri, is_internal_host
from trainer.images import IMAGE_FORMATS, ImageStore, sha256_bytes
from trainer.store.types import StoreError

if TYPE_CHECKING:
    from trainer.store.pool_store import PoolStore
    from trainer.store.types import SliceInfo

POLICY_FILE = "ref_roots.json"
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_FRAGMENT = "#sha256="


class RefRefused(StoreError):
    """A reference is outside the policy, or its file is missing, changed or not readable; ``field`` names it.

    A :class:`StoreError` (so a ``ValueError``): callers that skip unreadable slices skip these too.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def stored_ref(uri: str, sha256: str) -> str:
    """The form a checked reference is stored in: ``<uri>#sha256=<hex>``."""
    return f"{uri}{_FRAGMENT}{sha256}"


def split_stored_ref(ref: str) -> tuple[str, str | None]:
    """(uri, sha256 or None for a reference stored before hashes were required)."""
    uri, sep, sha = ref.rpartition(_FRAGMENT)
    if sep and SHA256_RE.match(sha):
        return uri, sha
    return ref, None


def _check_root(root: str) -> str:
    """A root as stored: a normalized absolute directory, or a URL prefix ending in '/'."""
    if "://" in root:
        try:
            check_ref_uri(root, "root")
        except SliceError as e:
            raise RefRefused("root", str(e)) from None
        u = urlsplit(root)
        if u.scheme == "file":
            return _check_root(unquote(u.path))
        if u.scheme in ("http", "https") and is_internal_host(u.hostname or ""):  # pragma: no cover - checked above
            raise RefRefused("root", f"root {root!r} names an internal host")
        return root if root.endswith("/") else root + "/"
    p = PurePosixPath(root)
    if not p.is_absolute() or any(part in (".", "..") for part in root.split("/")):
        raise RefRefused("root", f"root {root!r} must be an absolute directory without '.' or '..'")
    return str(p)


@dataclass(frozen=True)
class RefPolicy:
    """Per-station reference roots (see the module doc). The empty policy accepts no reference."""

    roots: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    max_bytes: int = DEFAULT_LIMITS.max_bytes

    # -- the policy file

    @classmethod
    def load(cls, store_root: str | Path) -> RefPolicy:
        """The policy of a store directory (empty when it has no ``ref_roots.json``)."""
        path = Path(store_root) / POLICY_FILE
        if not path.exists():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            roots = {str(st): tuple(_check_root(str(r)) for r in rs) for st, rs in raw["roots"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise RefRefused("policy", f"{path}: unreadable reference policy ({type(e).__name__}: {e}); "
                             "fix or remove it (`trainer ref-roots`)") from None
        return cls(roots)

    def save(self, store_root: str | Path) -> Path:
        path = Path(store_root) / POLICY_FILE
        write_json_atomic(path, {"version": 1, "roots": {k: list(v) for k, v in sorted(self.roots.items())}})
        return path

    def with_root(self, station: str, root: str) -> RefPolicy:
        if not STATION_ID_RE.match(station):
            raise RefRefused("station", f"station id {station!r} must match {STATION_ID_RE.pattern}")
        r = _check_root(root)
        have = self.roots.get(station, ())
        return RefPolicy({**self.roots, station: have + (() if r in have else (r,))}, self.max_bytes)

    def without_root(self, station: str, root: str) -> RefPolicy:
        r = _check_root(root)
        rest = tuple(x for x in self.roots.get(station, ()) if x != r)
        roots = {k: v for k, v in self.roots.items() if k != station}
        return RefPolicy(roots | ({station: rest} if rest else {}), self.max_bytes)

    # -- checks

    def check(self, station: str, uri: str, sha256: str, field_prefix: str = "ref") -> str:
        """The stored form of an acceptable reference; :class:`RefRefused` naming the field otherwise."""
        try:
            check_ref_uri(uri, f"{field_prefix}.uri")
        except SliceError as e:
            raise RefRefused(e.field, str(e)) from None
        if not SHA256_RE.match(sha256 or ""):
            raise RefRefused(f"{field_prefix}.sha256", "a reference needs the sha256 of the stored bytes "
                             f"(64 lowercase hex digits), got {sha256[:70]!r}")
        self._confine(station, uri, f"{field_prefix}.uri")
        return stored_ref(uri, sha256)

    def _confine(self, station: str, uri: str, field_name: str) -> Path | None:
        """The (lexical) local path of a file reference under one of the station's roots, else refuse."""
        roots = self.roots.get(station, ())
        if not roots:
            raise RefRefused(field_name, f"station {station!r} has no reference root configured on this trainer, "
                             "so it must send pixels (`trainer ref-roots --add STATION=ROOT`)")
        u = urlsplit(uri)
        if u.scheme == "file":
            path = PurePosixPath(unquote(u.path))
            for root in roots:
                if "://" not in root and path.is_relative_to(root):
                    real_root = os.path.realpath(root)
                    if os.path.lexists(path) and not _within(os.path.realpath(path), real_root):
                        raise RefRefused(field_name, f"reference {uri[:200]!r} resolves outside station "
                                         f"{station!r}'s root {root} (symlink)")
                    return Path(path)
        else:
            for root in roots:
                if "://" in root and uri.startswith(root):
                    return None
        raise RefRefused(field_name, f"reference {uri[:200]!r} is outside station {station!r}'s own storage "
                         f"(roots: {', '.join(roots)}); a station may only reference its own storage")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class RefFetcher:
    """Reads referenced slices for one store: policy re-checked, symlinks resolved, bytes hash-verified."""

    def __init__(self, policy: RefPolicy, images: ImageStore) -> None:
        self.policy = policy
        self.images = images

    @classmethod
    def for_store(cls, store: PoolStore) -> RefFetcher:
        return cls(RefPolicy.load(store.root), store.images)

    def local_image(self, info: SliceInfo) -> Path:
        """A local, verified file with the slice's pixels (the stored image, or a checked copy of its ref)."""
        if info.image_path is not None:
            return info.image_path
        if not info.image_ref:
            raise RefRefused("image", f"slice {info.key!r} has neither a stored image nor a reference")
        uri, sha = split_stored_ref(info.image_ref)
        if sha is None:
            raise RefRefused("ref.sha256", f"slice {info.key!r}: its reference {uri[:200]!r} has no sha256 "
                             "and cannot be verified; the station must re-send it with pixels or a hashed ref")
        self.policy.check(info.station, uri, sha)  # the policy of now: a root removed since ingest counts
        for fmt in IMAGE_FORMATS:  # fetched (and verified) before: content-addressed by that very sha256
            cached = self.images.path(sha, fmt)
            if cached.exists():
                return cached
        if urlsplit(uri).scheme != "file":
            raise RefRefused("ref.uri", f"slice {info.key!r}: reference {uri[:200]!r} is not a local file; this "
                             "trainer reads only file:// references (send pixels instead)")
        data = self._read_confined(info, uri)
        got = sha256_bytes(data)
        if got != sha:
            raise RefRefused("ref.sha256", f"slice {info.key!r}: {uri[:200]!r} has sha256 {got[:16]}..., the "
                             f"station announced {sha[:16]}...: the file changed or is not the slice")
        stored_sha, fmt = self.images.put(data, where=f"slice {info.key!r}")
        return self.images.path(stored_sha, fmt)

    def _read_confined(self, info: SliceInfo, uri: str) -> bytes:
        path = self.policy._confine(info.station, uri, "ref.uri")
        assert path is not None  # file scheme
        real = os.path.realpath(path)
        roots = [os.path.realpath(r) for r in self.policy.roots.get(info.station, ()) if "://" not in r]
        if not any(_within(real, r) for r in roots):
            raise RefRefused("ref.uri", f"slice {info.key!r}: {uri[:200]!r} resolves outside the station's roots")
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as e:
            raise RefRefused("ref.uri", f"slice {info.key!r}: cannot open {uri[:200]!r} ({e.strerror})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise RefRefused("ref.uri", f"slice {info.key!r}: {uri[:200]!r} is not a regular file")
            if st.st_size > self.policy.max_bytes:
                raise RefRefused("ref.uri", f"slice {info.key!r}: {uri[:200]!r} has {st.st_size} bytes, more than "
                                 f"{self.policy.max_bytes}")
            with os.fdopen(fd, "rb", closefd=False) as fh:
                return fh.read(self.policy.max_bytes + 1)
        finally:
            os.close(fd)
