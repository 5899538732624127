"""Bearer tokens over real gRPC (issue 18): the scheme is matched case-insensitively, the token exactly
(a trailing space or a doubled space is refused), and configuration errors never echo a token."""

from __future__ import annotations

from typing import Any

import grpc
import numpy as np
import pytest
from pydantic import ValidationError
from test_server import SIZE, start, untrained
from typer.testing import CliRunner

from gsal_wire.convert import make_pb_slice
from gsal_wire.pb import scorer_pb2, scorer_pb2_grpc
from server.config import ServerConfig

TOKEN = "score-token-0123456789"


@pytest.fixture(scope="module")
def address() -> Any:
    srv = start(untrained(0), score_token=TOKEN)
    yield srv.address
    srv.stop(0)


@pytest.mark.parametrize(("header", "ok"), [
    (f"Bearer {TOKEN}", True),
    (f"bearer {TOKEN}", True),
    (f"BeArEr {TOKEN}", True),
    (f"Bearer {TOKEN} ", False),
    (f"Bearer  {TOKEN}", False),
    (f"Bearer {TOKEN[:-1]}", False),
    (f"Token {TOKEN}", False),
])
def test_bearer_scheme_and_token_over_grpc(address: str, header: str, ok: bool) -> None:
    req = scorer_pb2.ScoreRequest(slice=make_pb_slice("a", np.zeros((SIZE, SIZE), np.uint8)))
    with grpc.insecure_channel(address) as ch:
        stub = scorer_pb2_grpc.ScorerStub(ch)
        if ok:
            assert stub.ScoreOne(req, metadata=(("authorization", header),), timeout=30).slice_id == "a"
        else:
            with pytest.raises(grpc.RpcError) as ei:
                stub.ScoreOne(req, metadata=(("authorization", header),), timeout=30)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert TOKEN not in (ei.value.details() or "")


@pytest.mark.parametrize("token", ["sh0rt-S3CRET", "long-enough-S3CRET-but-spaced out", "trailing-S3CRET-0123 "])
def test_config_errors_never_echo_a_token(token: str) -> None:
    for field in ("admin_token", "score_token"):
        with pytest.raises(ValidationError) as ei:
            ServerConfig(insecure=True, **{field: token})
        assert "S3CRET" not in str(ei.value) and field in str(ei.value)


def test_serve_cli_error_never_echoes_a_token(tmp_path: Any) -> None:
    from server.cli import app

    (tmp_path / "admin.token").write_text("sh0rt-S3CRET\n")
    res = CliRunner().invoke(app, ["serve", "--insecure", "--port", "0", "--admin-token-file",
                                   str(tmp_path / "admin.token")])
    assert res.exit_code == 2 and "admin_token" in res.output and "S3CRET" not in res.output, res.output
