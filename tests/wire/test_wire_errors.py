"""Error texts of the shared wire code (issue 18): the encoding error names exactly the valid encodings,
decoder errors carry no heap addresses, bearer tokens are parsed strictly and compared in constant time."""

from __future__ import annotations

import io

import numpy as np
import pytest

from gsal_edge.data.slices import SliceError
from gsal_wire.convert import decode_pb_slice, make_pb_slice
from gsal_wire.pb import common_pb2
from gsal_wire.security import token_matches, token_of


def _err(msg: common_pb2.Slice) -> SliceError:
    with pytest.raises(SliceError) as ei:
        decode_pb_slice(msg)
    return ei.value


def test_encoding_error_lists_exactly_the_valid_encodings() -> None:
    msg = make_pb_slice("a", np.zeros((8, 8), np.uint8))
    msg.encoding = common_pb2.ENCODING_UNSPECIFIED
    e = _err(msg)
    assert e.field == "encoding"
    for name in ("ENCODING_RAW", "ENCODING_PNG", "ENCODING_TIFF"):
        assert name in str(e)
    assert "is not one of" in str(e) and str(e).count("ENCODING_UNSPECIFIED") == 1  # only as the value sent


def test_unknown_dtype_error_names_the_valid_dtypes() -> None:
    msg = make_pb_slice("a", np.zeros((8, 8), np.uint8))
    msg.dtype = 77
    e = _err(msg)
    assert e.field == "dtype" and "DTYPE_UINT8" in str(e) and "DTYPE_FLOAT32" in str(e)


@pytest.mark.parametrize("encoding", ["png", "tiff"])
@pytest.mark.parametrize("data", [b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, b"II*\0" + b"\1" * 40])
def test_decoder_errors_carry_no_heap_addresses(encoding: str, data: bytes) -> None:
    msg = make_pb_slice("a", data=data, encoding=encoding)
    e = _err(msg)
    assert e.field == "data"
    assert " at 0x" not in str(e) and "0x7f" not in str(e) and "<_io." not in str(e), str(e)


def test_a_valid_png_still_decodes() -> None:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((16, 16), 7, np.uint8)).save(buf, format="PNG")
    arr = decode_pb_slice(make_pb_slice("a", data=buf.getvalue(), encoding="png"))
    assert arr.shape == (16, 16) and int(arr[0, 0]) == 7


@pytest.mark.parametrize(("value", "token"), [
    ("Bearer tok-0123456789abcdef", "tok-0123456789abcdef"),
    ("bearer tok-0123456789abcdef", "tok-0123456789abcdef"),  # the scheme is case-insensitive (RFC 6750 / 9110)
    ("BEARER tok-0123456789abcdef", "tok-0123456789abcdef"),
    ("Bearer tok-0123456789abcdef ", "tok-0123456789abcdef "),  # nothing stripped: a different token
    ("Bearer  tok-0123456789abcdef", " tok-0123456789abcdef"),
    ("Basic tok-0123456789abcdef", None),
    ("Bearer", None),
    ("Bearer ", None),
    ("tok-0123456789abcdef", None),
])
def test_bearer_parsing(value: str, token: str | None) -> None:
    assert token_of([("authorization", value)]) == token


def test_two_authorization_entries_are_refused() -> None:
    md = [("authorization", "Bearer a-token-0123456789"), ("authorization", "Bearer b-token-0123456789")]
    assert token_of(md) is None


def test_token_compare() -> None:
    assert token_matches("tok-0123456789abcdef", "tok-0123456789abcdef")
    assert not token_matches("tok-0123456789abcdef ", "tok-0123456789abcdef")
    assert not token_matches("tok", "tok-0123456789abcdef")  # a prefix is not a match
    assert not token_matches(None, "tok-0123456789abcdef") and not token_matches("x", None)
