"""The client side of a connection, as both clients open it: TLS by default, plaintext only when asked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Self

import grpc

from gsal_wire.security import channel_credentials


def open_channel(
    address: str,
    options: Sequence[tuple[str, object]],
    *,
    insecure: bool = False,
    ca: str | Path | None = None,
    client_cert: str | Path | None = None,
    client_key: str | Path | None = None,
    server_name: str | None = None,
) -> grpc.Channel:
    """A channel to ``address``: plaintext with ``insecure``, else TLS trusting ``ca`` (system roots when
    None) with an optional client certificate (mTLS); ``server_name`` overrides the name verified."""
    opts = list(options)
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    if insecure:
        return grpc.insecure_channel(address, options=opts)
    return grpc.secure_channel(address, channel_credentials(ca, client_cert, client_key), options=opts)


class ChannelClient:
    """Owns one channel; closes it on :meth:`close` or at the end of a ``with`` block."""

    channel: grpc.Channel

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
