"""TLS, mutual TLS and bearer tokens against a real server on 127.0.0.1 with certificates made here."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from gsal_wire.scorer_client import ScorerClient
from server.app import StationServer
from server.config import ServerConfig, TLSConfig
from server.station import default_scorer_factory

ADMIN = "admin-token-0123456789abcdef"
SCORE = "score-token-0123456789abcdef"
UNTRAINED = "untrained:seed=0,size=32"


# ---- certificates --------------------------------------------------------------------------------
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    kp, cp = path.with_suffix(".key"), path.with_suffix(".crt")
    kp.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    cp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cp, kp


def make_ca(path: Path, cn: str) -> tuple[Path, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn)).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    cp, _ = _write(path, key, cert)
    return cp, key, cert


def make_leaf(path: Path, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, *,
              server: bool, names: tuple[str, ...] = ("localhost",), ips: tuple[str, ...] = ("127.0.0.1",)
              ) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                              else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return _write(path, key, b.sign(ca_key, hashes.SHA256()))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = make_ca(d / "ca", "GSAL test CA")
    rogue, rogue_key, rogue_cert = make_ca(d / "rogue", "Rogue CA")
    srv_crt, srv_key = make_leaf(d / "server", ca_key, ca_cert, "station", server=True)
    cli_crt, cli_key = make_leaf(d / "client", ca_key, ca_cert, "trainer", server=False)
    bad_crt, bad_key = make_leaf(d / "rogue-client", rogue_key, rogue_cert, "intruder", server=False)
    other_crt, other_key = make_leaf(d / "named", ca_key, ca_cert, "named", server=True,
                                     names=("station-01.factory.internal",), ips=())
    return {"ca": ca, "rogue": rogue, "srv_crt": srv_crt, "srv_key": srv_key, "cli_crt": cli_crt, "cli_key": cli_key,
            "bad_crt": bad_crt, "bad_key": bad_key, "other_crt": other_crt, "other_key": other_key}


def _server(**cfg: object) -> StationServer:
    config = ServerConfig(host="127.0.0.1", port=0, grace_s=0.5, **cfg)  # type: ignore[arg-type]
    srv = StationServer(config, default_scorer_factory(allow_untrained=True))
    srv.start()
    return srv


@pytest.fixture
def tls_server(pki: dict[str, Path]) -> Iterator[StationServer]:
    srv = _server(tls=TLSConfig(cert=pki["srv_crt"], key=pki["srv_key"]), admin_token=ADMIN)
    yield srv
    srv.stop(0)


@pytest.fixture
def mtls_server(pki: dict[str, Path]) -> Iterator[StationServer]:
    srv = _server(tls=TLSConfig(cert=pki["srv_crt"], key=pki["srv_key"], client_ca=pki["ca"],
                                require_client_cert=True))
    yield srv
    srv.stop(0)


def _health(address: str, **kw: object) -> str:
    with ScorerClient(address, **kw) as c:  # type: ignore[arg-type]
        return c.health(timeout=5)


def _refused(address: str, **kw: object) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as ei:
        _health(address, **kw)
    return ei.value.code()


# ---- TLS -----------------------------------------------------------------------------------------
def test_tls_good_ca(tls_server: StationServer, pki: dict[str, Path]) -> None:
    assert _health(tls_server.address, ca=pki["ca"]) == "NOT_SERVING"  # no bundle yet
    assert _health(f"localhost:{tls_server.port}", ca=pki["ca"]) == "NOT_SERVING"


def test_tls_untrusted_server_cert(tls_server: StationServer, pki: dict[str, Path]) -> None:
    assert _refused(tls_server.address, ca=pki["rogue"]) == grpc.StatusCode.UNAVAILABLE


def test_tls_plaintext_client_refused(tls_server: StationServer) -> None:
    assert _refused(tls_server.address, insecure=True) == grpc.StatusCode.UNAVAILABLE


def test_tls_host_name_checked(pki: dict[str, Path]) -> None:
    srv = _server(tls=TLSConfig(cert=pki["other_crt"], key=pki["other_key"]))
    try:
        assert _refused(srv.address, ca=pki["ca"]) == grpc.StatusCode.UNAVAILABLE
        assert _health(srv.address, ca=pki["ca"], server_name="station-01.factory.internal") == "NOT_SERVING"
    finally:
        srv.stop(0)


# ---- mutual TLS ----------------------------------------------------------------------------------
def test_mtls_good_client_cert(mtls_server: StationServer, pki: dict[str, Path]) -> None:
    assert _health(mtls_server.address, ca=pki["ca"], client_cert=pki["cli_crt"],
                   client_key=pki["cli_key"]) == "NOT_SERVING"


def test_mtls_missing_client_cert(mtls_server: StationServer, pki: dict[str, Path]) -> None:
    assert _refused(mtls_server.address, ca=pki["ca"]) == grpc.StatusCode.UNAVAILABLE


def test_mtls_client_cert_from_other_ca(mtls_server: StationServer, pki: dict[str, Path]) -> None:
    assert _refused(mtls_server.address, ca=pki["ca"], client_cert=pki["bad_crt"],
                    client_key=pki["bad_key"]) == grpc.StatusCode.UNAVAILABLE


def test_mtls_server_cert_as_client_cert_refused(mtls_server: StationServer, pki: dict[str, Path]) -> None:
    # signed by the right CA but only for serverAuth: not a client identity
    assert _refused(mtls_server.address, ca=pki["ca"], client_cert=pki["srv_crt"],
                    client_key=pki["srv_key"]) == grpc.StatusCode.UNAVAILABLE


# ---- tokens --------------------------------------------------------------------------------------
def test_load_bundle_needs_admin_token(tls_server: StationServer, pki: dict[str, Path]) -> None:
    for token in (None, "wrong-token-0123456789", SCORE):
        with ScorerClient(tls_server.address, ca=pki["ca"], admin_token=token) as c:
            with pytest.raises(grpc.RpcError) as ei:
                c.load_bundle(UNTRAINED)
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "admin" in (ei.value.details() or "")
    assert tls_server.station.bundle_id == ""
    with ScorerClient(tls_server.address, ca=pki["ca"], admin_token=ADMIN) as c:
        r = c.load_bundle(UNTRAINED)
        assert r.bundle_id and c.health() == "SERVING"
        assert c.model_info().bundle_id == r.bundle_id  # no scoring token configured: open


def test_load_bundle_disabled_without_admin_token(mtls_server: StationServer, pki: dict[str, Path]) -> None:
    with ScorerClient(mtls_server.address, ca=pki["ca"], client_cert=pki["cli_crt"], client_key=pki["cli_key"],
                      admin_token=ADMIN) as c:
        with pytest.raises(grpc.RpcError) as ei:
            c.load_bundle(UNTRAINED)
        assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_scoring_token(pki: dict[str, Path]) -> None:
    import numpy as np

    srv = _server(tls=TLSConfig(cert=pki["srv_crt"], key=pki["srv_key"]), admin_token=ADMIN, score_token=SCORE)
    try:
        with ScorerClient(srv.address, ca=pki["ca"], admin_token=ADMIN) as c:
            c.load_bundle(UNTRAINED)
            assert c.health() == "SERVING"  # health stays open for probes
            with pytest.raises(grpc.RpcError) as ei:
                c.model_info()
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as ei:
                list(c.score([("a", np.zeros((8, 8), np.uint8))]))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with ScorerClient(srv.address, ca=pki["ca"], token=SCORE) as c:
            rec = c.score_one("a", np.zeros((8, 8), np.uint8))
            assert rec.image_id == "a"
            (out,) = list(c.score([("b", np.ones((8, 8), np.uint16))]))
            assert getattr(out, "image_id", None) == "b"
        assert 'code="UNAUTHENTICATED"' in srv.metrics.text()
    finally:
        srv.stop(0)


# ---- configuration -------------------------------------------------------------------------------
def test_no_tls_needs_explicit_insecure(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValidationError, match="insecure"):
        ServerConfig()
    with pytest.raises(ValidationError, match="client_ca"):
        TLSConfig(cert=Path("a"), key=Path("b"), require_client_cert=True)
    with pytest.raises(ValidationError, match="admin_token"):
        ServerConfig(insecure=True, admin_token="short")
    with caplog.at_level(logging.WARNING, logger="server.app"):
        srv = _server(insecure=True)
        srv.stop(0)
    assert any("INSECURE" in r.getMessage() for r in caplog.records)


def test_bad_pem_named(tmp_path: Path, pki: dict[str, Path]) -> None:
    from gsal_wire.security import SecurityError

    (tmp_path / "junk.crt").write_text("not a certificate")
    with pytest.raises(SecurityError, match="tls.cert"):
        _server(tls=TLSConfig(cert=tmp_path / "junk.crt", key=pki["srv_key"]))
