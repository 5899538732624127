"""TLS / mutual TLS credentials and bearer-token authorisation (station and trainer servers, their clients).

Tokens travel as ``authorization: Bearer <token>`` metadata and are compared in constant time.
Parsing (RFC 6750 section 2.1 / RFC 9110 section 11.1): the scheme ``Bearer`` is matched case-insensitively
(``bearer`` and ``BEARER`` are the same scheme), followed by exactly one space; the token is everything after
that space, taken as is: nothing is stripped, so ``Bearer tok `` (trailing space) or ``Bearer  tok`` (two
spaces) carry a different token and are refused. A call with more than one ``authorization`` entry is refused.
Both sides are hashed with SHA-256 before ``hmac.compare_digest``, so the time taken depends neither on
the token's content nor on its length.
``LoadBundle`` needs the admin token (and is refused outright when none is configured); the scoring
RPCs need the scoring token when one is configured (the admin token is accepted there too).
Health checking and reflection stay open so stock probes work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import grpc
from pydantic import model_validator

from gsal_edge.config_files import FrozenModel
from gsal_edge.errors import GSALError
from gsal_wire.handlers import wrap_handler

log = logging.getLogger(__name__)

AUTH_HEADER = "authorization"


class TLSConfig(FrozenModel):
    """Server certificate, and for mutual TLS the CA that signs client certificates."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _check(self) -> TLSConfig:
        if self.require_client_cert and self.client_ca is None:
            raise ValueError("tls.require_client_cert needs tls.client_ca (the CA that signs client certificates)")
        return self


class SecurityError(GSALError, ValueError):
    """A certificate, key or token file is missing or unusable; the message names it."""


def read_secret_file(path: str | Path, what: str) -> str:
    """A token from a file (surrounding whitespace stripped); refuses empty files."""
    p = Path(path)
    try:
        tok = p.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise SecurityError(f"{what}: cannot read {p}: {e.strerror}") from None
    if not tok:
        raise SecurityError(f"{what}: {p} is empty")
    return tok


def _read_pem(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise SecurityError(f"{what}: cannot read {path}: {e.strerror}") from None
    if b"-----BEGIN" not in data:
        raise SecurityError(f"{what}: {path} is not a PEM file")
    return data


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """``grpc.ssl_server_credentials`` from a :class:`TLSConfig` (mutual TLS when ``client_ca`` is set)."""
    cert = _read_pem(tls.cert, "tls.cert")
    key = _read_pem(tls.key, "tls.key")
    ca = _read_pem(tls.client_ca, "tls.client_ca")
    assert cert is not None and key is not None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=bool(tls.require_client_cert)
    )


def channel_credentials(
    ca: str | Path | None = None, client_cert: str | Path | None = None, client_key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """Client-side TLS: trust ``ca`` (system roots when None), present a client certificate for mTLS."""
    if (client_cert is None) != (client_key is None):
        raise SecurityError("client_cert and client_key must be given together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read_pem(Path(ca), "ca") if ca else None,
        private_key=_read_pem(Path(client_key), "client_key") if client_key else None,
        certificate_chain=_read_pem(Path(client_cert), "client_cert") if client_cert else None,
    )


def bearer(token: str) -> tuple[tuple[str, str]]:
    """Call metadata carrying ``token``."""
    return ((AUTH_HEADER, f"Bearer {token}"),)


def token_of(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The bearer token of a call's metadata (see the module docstring for the exact rules), or None."""
    values = [v for k, v in metadata or () if k.lower() == AUTH_HEADER]
    if len(values) != 1:
        return None
    v = values[0]
    if isinstance(v, bytes):
        try:
            v = v.decode("ascii")
        except UnicodeDecodeError:
            return None
    scheme, sep, tok = v.partition(" ")
    return tok if sep and tok and scheme.lower() == "bearer" else None


def token_matches(given: str | None, expected: str | None) -> bool:
    """Constant-time comparison (SHA-256 of both sides, then ``hmac.compare_digest``); False when either is None."""
    if given is None or expected is None:
        return False
    a = hashlib.sha256(given.encode("utf-8", "surrogateescape")).digest()
    b = hashlib.sha256(expected.encode("utf-8", "surrogateescape")).digest()
    return hmac.compare_digest(a, b)


def _denying_handler(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, msg: str) -> grpc.RpcMethodHandler:
    def deny(_request: object, context: grpc.ServicerContext) -> None:
        context.abort(code, msg)

    return wrap_handler(handler, lambda _behavior, _streaming: deny)


class AuthInterceptor(grpc.ServerInterceptor):
    """Enforces the admin token on ``admin_methods`` and the scoring token on ``scoring_prefixes``."""

    def __init__(
        self,
        admin_methods: set[str],
        scoring_prefixes: tuple[str, ...],
        admin_token: str | None,
        score_token: str | None,
        on_deny: Callable[[str, grpc.StatusCode], None] | None = None,
    ) -> None:
        self.admin_methods = admin_methods
        self.scoring_prefixes = scoring_prefixes
        self.admin_token = admin_token
        self.score_token = score_token
        self.on_deny = on_deny

    def _check(self, method: str, token: str | None) -> tuple[grpc.StatusCode, str] | None:
        if method in self.admin_methods:
            if self.admin_token is None:
                return grpc.StatusCode.PERMISSION_DENIED, f"{method} is disabled: the server has no admin token"
            if not token_matches(token, self.admin_token):
                return grpc.StatusCode.UNAUTHENTICATED, f"{method} needs the admin bearer token (authorization)"
            return None
        if (
            self.score_token is not None
            and method.startswith(self.scoring_prefixes)
            and not (token_matches(token, self.score_token) or token_matches(token, self.admin_token))
        ):
            return grpc.StatusCode.UNAUTHENTICATED, f"{method} needs the scoring bearer token (authorization)"
        return None

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        denied = self._check(method, token_of(handler_call_details.invocation_metadata))
        if denied is None:
            return handler
        code, msg = denied
        log.warning("denied %s: %s", method, code.name)
        if self.on_deny is not None:
            self.on_deny(method, code)
        return _denying_handler(handler, code, msg)
