"""Trainer Ingest over TLS and mutual TLS (real server on 127.0.0.1, certificates made in the test)."""

from __future__ import annotations

import pytest
from test_server_security import make_ca, make_leaf
from test_trainer_helpers import make_pixels, make_record

from gsal_wire.security import TLSConfig, server_credentials
from gsal_wire.trainer_client import PushError, PushItem, RetryPolicy, TrainerPushClient
from trainer.ingest_service import IngestConfig, start_server
from trainer.store.pool_store import PoolStore


@pytest.fixture
def mtls(tmp_path):
    ca, ca_key, ca_cert = make_ca(tmp_path / "ca", "trainer test CA")
    _, rogue_key, rogue_cert = make_ca(tmp_path / "rogue", "rogue CA")
    srv_crt, srv_key = make_leaf(tmp_path / "srv", ca_key, ca_cert, "trainer", server=True)
    cli_crt, cli_key = make_leaf(tmp_path / "cli", ca_key, ca_cert, "st-01", server=False)
    bad_crt, bad_key = make_leaf(tmp_path / "bad", rogue_key, rogue_cert, "intruder", server=False)
    store = PoolStore(tmp_path / "store")
    creds = server_credentials(TLSConfig(cert=srv_crt, key=srv_key, client_ca=ca, require_client_cert=True))
    srv = start_server(store, IngestConfig(port=0), credentials=creds)
    yield srv, {"ca": ca, "cli": (cli_crt, cli_key), "bad": (bad_crt, bad_key)}
    srv.stop(1.0)
    store.close()


def _items(n):
    return [PushItem(make_record(i), pixels=make_pixels(i)) for i in range(n)]


def test_mtls_push_with_a_client_certificate(mtls):
    srv, pki = mtls
    with TrainerPushClient(srv.address, "st-01", ca=pki["ca"], client_cert=pki["cli"][0],
                           client_key=pki["cli"][1]) as cli:
        assert cli.push(_items(3)).committed == 3
    assert srv.store.status()["records"] == 3


@pytest.mark.parametrize("who", ["none", "bad", "plaintext"])
def test_mtls_refuses_other_clients(mtls, who):
    srv, pki = mtls
    retry = RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.02)
    if who == "plaintext":
        cli = TrainerPushClient(srv.address, "st-01", insecure=True, retry=retry)
    elif who == "none":
        cli = TrainerPushClient(srv.address, "st-01", ca=pki["ca"], retry=retry)
    else:
        cli = TrainerPushClient(srv.address, "st-01", ca=pki["ca"], client_cert=pki["bad"][0],
                                client_key=pki["bad"][1], retry=retry)
    with cli, pytest.raises(PushError, match="UNAVAILABLE"):
        cli.push(_items(1))
    assert srv.store.status()["records"] == 0
