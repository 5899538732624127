"""The TLS options of the station and trainer command lines, defined once, and the config built from them.

A server side (``serve`` of either node) takes ``--tls-cert``/``--tls-key`` and, for mutual TLS,
``--client-ca`` (:data:`TLS_CERT`, :data:`TLS_KEY`, :data:`CLIENT_CA`, :func:`server_tls`). Every outgoing
connection (a client to a station, the trainer to its stations, a station to the trainer) takes the same
five options, named after the peer (:func:`client_tls_options`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # the command lines load without gRPC; the commands import it when they run
    from gsal_wire.security import TLSConfig

TLS_CERT = typer.Option(None, "--tls-cert", help="server certificate chain (PEM)")
TLS_KEY = typer.Option(None, "--tls-key", help="server private key (PEM)")
CLIENT_CA = typer.Option(None, "--client-ca", help="CA that signs client certificates (mutual TLS)")
REQUIRE_CLIENT_CERT = typer.Option(False, "--require-client-cert",
                                   help="mutual TLS: refuse clients without a certificate")


def server_tls(cert: Path | None, key: Path | None, client_ca: Path | None = None,
               require_client_cert: bool = False) -> TLSConfig | None:
    """The :class:`TLSConfig` of the server options; None when neither certificate nor key is given.

    Raises :class:`SecurityError` when only one of the two is given, or client-certificate options
    come without them.
    """
    from gsal_wire.security import SecurityError, TLSConfig

    if cert or key:
        if not (cert and key):
            raise SecurityError("--tls-cert and --tls-key go together")
        return TLSConfig(cert=cert, key=key, client_ca=client_ca, require_client_cert=require_client_cert)
    if client_ca or require_client_cert:
        raise SecurityError("--client-ca/--require-client-cert need --tls-cert and --tls-key")
    return None


@dataclass(frozen=True)
class ClientTLSOptions:
    """The typer options of one outgoing connection (use each as a parameter default)."""

    insecure: Any
    ca: Any
    client_cert: Any
    client_key: Any
    server_name: Any


def client_tls_options(peer: str, prefix: str = "", cert_prefix: str | None = None) -> ClientTLSOptions:
    """The options of a connection to ``peer``: ``--{prefix}insecure``, ``--{prefix}ca``, and
    ``--{cert_prefix}client-cert``, ``--{cert_prefix}client-key``, ``--{cert_prefix}server-name``
    (``cert_prefix`` defaults to ``prefix``)."""
    cp = prefix if cert_prefix is None else cert_prefix
    return ClientTLSOptions(
        insecure=typer.Option(False, f"--{prefix}insecure",
                              help=f"plaintext gRPC to {peer} (no TLS: loopback or a trusted network only)"),
        ca=typer.Option(None, f"--{prefix}ca",
                        help=f"CA that signed the certificate of {peer} (PEM); default: system roots"),
        client_cert=typer.Option(None, f"--{cp}client-cert",
                                 help=f"client certificate for mutual TLS with {peer} (PEM)"),
        client_key=typer.Option(None, f"--{cp}client-key",
                                help=f"client key for mutual TLS with {peer} (PEM)"),
        server_name=typer.Option(None, f"--{cp}server-name",
                                 help=f"TLS name of {peer} to verify when it differs from the address"),
    )
