"""The claims of docs/security.md that no other test checks: tokens compared in constant time, tokens
never logged nor printed in a config's repr, key rotation (a station trusting old + new key).

The other claims name their tests in docs/security.md (tests/server/test_server_security.py,
tests/scoring/test_bundle.py, tests/server/test_server_swap.py, tests/trainer/test_ingest_tls.py ...).
"""

from __future__ import annotations

import ast
import inspect
import logging
from pathlib import Path

import grpc
import numpy as np
import pytest

from gsal_wire import security

ADMIN = "admin-SECRET-token-0123456789"
SCORE = "score-SECRET-token-0123456789"
WRONG = "wrong-SECRET-token-0123456789"


def test_token_comparison_is_constant_time() -> None:
    """Every comparison with a configured token goes through hmac.compare_digest (no ==, !=, startswith)."""
    tree = ast.parse(inspect.getsource(security))
    matches = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "token_matches")
    calls = [ast.unparse(c.func) for c in ast.walk(matches) if isinstance(c, ast.Call)]
    assert "hmac.compare_digest" in calls
    check = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_check")
    for node in ast.walk(check):  # the authorisation decision compares tokens only through token_matches
        if isinstance(node, ast.Compare):
            text = ast.unparse(node)
            assert "token" not in text or " is None" in text or " is not None" in text, text
    assert security.token_matches(SCORE, SCORE) and not security.token_matches(SCORE, SCORE[:-1] + "x")
    assert not security.token_matches(None, SCORE) and not security.token_matches(SCORE, None)


def test_tokens_never_logged_nor_in_config_repr(caplog: pytest.LogCaptureFixture) -> None:
    """A real station, an authorised and refused call of each kind: no token in any log record or repr."""
    from gsal_wire.scorer_client import ScorerClient
    from server.app import StationServer
    from server.config import ServerConfig
    from server.station import default_scorer_factory

    cfg = ServerConfig(insecure=True, host="127.0.0.1", port=0, grace_s=0.5, admin_token=ADMIN, score_token=SCORE)
    assert ADMIN not in repr(cfg) and SCORE not in repr(cfg) and ADMIN not in str(cfg)
    with caplog.at_level(logging.DEBUG):
        srv = StationServer(cfg, default_scorer_factory(allow_untrained=True))
        srv.start()
        try:
            with ScorerClient(srv.address, insecure=True, admin_token=WRONG) as c, pytest.raises(grpc.RpcError):
                c.load_bundle("untrained:seed=0,size=32")
            with ScorerClient(srv.address, insecure=True, admin_token=ADMIN) as c:
                c.load_bundle("untrained:seed=0,size=32")
            with ScorerClient(srv.address, insecure=True, token=SCORE) as c:
                assert c.score_one("a", np.zeros((8, 8), np.uint8)).image_id == "a"
            with ScorerClient(srv.address, insecure=True, token=WRONG) as c:
                with pytest.raises(grpc.RpcError) as ei:
                    c.score_one("b", np.zeros((8, 8), np.uint8))
                assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert WRONG not in (ei.value.details() or "")  # nor echoed to the caller
        finally:
            srv.stop(0.5)
    text = "\n".join(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)
    assert "denied /gsal.v1.Scorer/LoadBundle: UNAUTHENTICATED" in text  # denials are logged ...
    assert "denied /gsal.v1.Scorer/ScoreOne: UNAUTHENTICATED" in text
    for secret in (ADMIN, SCORE, WRONG, "SECRET"):  # ... without any token, right or wrong
        assert secret not in text, f"a token appears in the logs: {secret}"


def test_key_rotation_trusts_old_and_new_until_the_old_key_is_dropped(tmp_path: Path) -> None:
    """Rotation: stations trust [old, new] while bundles are re-signed; then [new] refuses old-signed ones."""
    from test_bundle import write_toy_bundle

    from export.signing import generate_keypair
    from gsal_edge.scoring.bundle import BundleError, verify_bundle

    old, old_pub = generate_keypair(tmp_path / "old.pem")
    new, new_pub = generate_keypair(tmp_path / "new.pem")
    b_old = write_toy_bundle(tmp_path / "b-old", old, seed=0)
    b_new = write_toy_bundle(tmp_path / "b-new", new, seed=1)
    for b in (b_old, b_new):
        assert verify_bundle(b, [old_pub, new_pub]).bundle_id
    assert verify_bundle(b_new, [new_pub]).bundle_id
    with pytest.raises(BundleError, match="not among the trusted keys"):
        verify_bundle(b_old, [new_pub])
    assert (Path(old).stat().st_mode & 0o777) == 0o600  # private halves are written owner-only
