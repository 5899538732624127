"""The one set of wire-field checks both sides run: slice ids, metadata maps, names, image references.

What a station refuses, the trainer refuses too (issue 18: the trainer used to store ids with control
characters, 100 KB ids, 10 MB meta values and refs to link-local URLs that the station rejects). Both call
these functions; every one raises :class:`gsal_edge.data.slices.SliceError` naming the field, which the
station's Scorer already maps to INVALID_ARGUMENT and the trainer to a per-item ``IngestRejection``.

* slice id: the station's own check, :func:`gsal_edge.data.slices.check_slice_id` (printable ASCII, no
  spaces, at most ``SliceLimits.max_id_length``);
* metadata / model maps (``Slice.meta``, ``ScoreRecord.meta``, ``ScoreRecord.model``): at most
  :data:`MAX_MAP_ENTRIES` entries, keys of 1..:data:`MAX_KEY_CHARS` and values of at most
  :data:`MAX_VALUE_CHARS` printable characters (``str.isprintable``: no control, format or separator
  characters other than the space);
* names inside a record (concepts, similarity and uncertainty keys, labels): 1..:data:`MAX_KEY_CHARS`
  printable characters;
* image references: at most :data:`MAX_URI_CHARS` printable characters, scheme ``file``, ``http``,
  ``https`` or ``s3``, no user:password part, no ``.``/``..`` path segments, and no http(s) host that is
  a loopback, link-local, unspecified or multicast address (``localhost``, 127.0.0.0/8, ::1, 169.254/16,
  fe80::/10, 0.0.0.0, also in the legacy forms ``127.1`` / ``2130706433`` a resolver accepts).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from gsal_edge.acquisition.records import ScoreRecord
from gsal_edge.data.slices import DEFAULT_LIMITS, SliceError, SliceLimits, check_slice_id
from gsal_wire.pb import common_pb2

MAX_MAP_ENTRIES = 64
MAX_KEY_CHARS = 128
MAX_VALUE_CHARS = 4096
MAX_URI_CHARS = 2048
REF_SCHEMES = ("file", "http", "https", "s3")

__all__ = [
    "MAX_KEY_CHARS",
    "MAX_MAP_ENTRIES",
    "MAX_URI_CHARS",
    "MAX_VALUE_CHARS",
    "REF_SCHEMES",
    "check_name",
    "check_record_fields",
    "check_ref_uri",
    "check_slice_fields",
    "check_slice_id",
    "check_text_map",
    "is_internal_host",
]


def _shown(text: str, n: int = 40) -> str:
    """A short, safe excerpt of a possibly huge or hostile value for an error message: printable ASCII
    only (``ascii()``), so it can also travel in gRPC metadata."""
    return ascii(text[:n]) + ("..." if len(text) > n else "")


def check_name(name: str, field: str) -> str:
    """A key or name: 1..MAX_KEY_CHARS printable characters."""
    if not isinstance(name, str) or not name:
        raise SliceError(field, "name is empty")
    if len(name) > MAX_KEY_CHARS:
        raise SliceError(field, f"name {_shown(name)} has {len(name)} characters, more than {MAX_KEY_CHARS}")
    if not name.isprintable():
        raise SliceError(field, f"name {_shown(name)} contains control or non-printable characters")
    return name


def check_text_map(values: Mapping[str, str], field: str) -> None:
    """A string -> string map (meta, model): bounded entry count, key and value sizes, printable text."""
    if len(values) > MAX_MAP_ENTRIES:
        raise SliceError(field, f"{len(values)} entries, more than {MAX_MAP_ENTRIES}")
    for k, v in values.items():
        check_name(k, f"{field}[{_shown(str(k), 20)}]")
        if not isinstance(v, str):
            raise SliceError(f"{field}[{_shown(str(k), 20)}]", f"value must be a string, got {type(v).__name__}")
        if len(v) > MAX_VALUE_CHARS:
            raise SliceError(f"{field}[{_shown(str(k), 20)}]", f"value has {len(v)} characters, more than {MAX_VALUE_CHARS}")
        if not v.isprintable():
            raise SliceError(f"{field}[{_shown(str(k), 20)}]", f"value {_shown(v)} contains control or non-printable characters")


def check_slice_fields(msg: common_pb2.Slice, limits: SliceLimits = DEFAULT_LIMITS, *,
                       require_id: bool = True) -> None:
    """A ``gsal.v1.Slice`` message's id and meta (the station's admission check; pixels are checked apart).

    ``require_id=False`` (the trainer's IngestItem, whose record carries the id) checks an id only if given.
    """
    from gsal_wire.convert import slice_meta

    if require_id or msg.id:
        check_slice_id(msg.id, limits)
    check_text_map(slice_meta(msg), "meta")


def check_record_fields(rec: ScoreRecord, limits: SliceLimits = DEFAULT_LIMITS, field: str = "record") -> None:
    """The free-text parts of a score record: image id, model and meta maps, and every name in it."""
    try:
        check_slice_id(rec.image_id, limits)
    except SliceError as e:
        raise SliceError(f"{field}.image_id", e.message) from None
    check_text_map(rec.model, f"{field}.model")
    check_text_map(rec.meta, f"{field}.meta")
    for k in rec.uncertainty:
        check_name(k, f"{field}.uncertainty")
    for i, p in enumerate(rec.proposals):
        where = f"{field}.proposals[{i}]"
        check_name(p.concept, f"{where}.concept")
        if p.label is not None:
            check_name(p.label, f"{where}.label")
        if len(p.similarity) > MAX_MAP_ENTRIES * 16:
            raise SliceError(f"{where}.similarity", f"{len(p.similarity)} entries, more than {MAX_MAP_ENTRIES * 16}")
        for k in p.similarity:
            check_name(k, f"{where}.similarity")


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """``127.1``, ``0x7f.0.0.1``, ``2130706433``: forms inet_aton (and so many resolvers) read as IPv4."""
    if not host or not all(c in "0123456789abcdefxABCDEFX." for c in host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def is_internal_host(host: str) -> bool:
    """True for hosts a reference must not point at: loopback, link-local, unspecified or multicast."""
    h = host.strip("[]").rstrip(".").lower()
    if h == "localhost" or h.endswith(".localhost") or h == "":
        return True
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(h.split("%", 1)[0])
    except ValueError:
        ip = _legacy_ipv4(h)
    if ip is None:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def check_ref_uri(uri: str, field: str = "ref.uri") -> str:
    """An image reference URI (see the module doc); returns it unchanged."""
    if not uri:
        raise SliceError(field, "empty image reference")
    if len(uri) > MAX_URI_CHARS:
        raise SliceError(field, f"reference has {len(uri)} characters, more than {MAX_URI_CHARS}")
    if not uri.isprintable() or " " in uri:
        raise SliceError(field, f"reference {_shown(uri)} contains spaces, control or non-printable characters")
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError as e:
        raise SliceError(field, f"reference {_shown(uri)} is not a valid URI ({e})") from None
    scheme = parts.scheme.lower()
    if scheme not in REF_SCHEMES:
        raise SliceError(field, f"reference {_shown(uri)}: scheme {scheme or '(none)'!r} is not one of {REF_SCHEMES}")
    if parts.username is not None or parts.password is not None:
        raise SliceError(field, "reference must not carry a user name or password")
    path = unquote(parts.path)
    if "\x00" in path or any(seg in (".", "..") for seg in path.split("/")):
        raise SliceError(field, f"reference {_shown(uri)} has '.' or '..' path segments")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise SliceError(field, f"file reference {_shown(uri)} names a host; use file:///absolute/path")
        if not path.startswith("/"):
            raise SliceError(field, f"file reference {_shown(uri)} is not an absolute path")
    elif scheme in ("http", "https"):
        host = parts.hostname or ""
        if is_internal_host(host):
            raise SliceError(field, f"reference host {host or '(none)'!r} is loopback, link-local, unspecified or "
                             "multicast; the trainer never fetches from such addresses")
        if port == 0:
            raise SliceError(field, "reference port 0 is not a port")
    elif not parts.netloc:
        raise SliceError(field, f"reference {_shown(uri)} names no bucket/host")
    return uri
