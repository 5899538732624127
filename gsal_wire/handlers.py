"""One helper for server interceptors that replace an RPC handler's behaviour.

grpc has four handler kinds (unary/stream request x unary/stream response), each with its own constructor;
every interceptor that wraps or replaces a behaviour (auth denial in :mod:`gsal_wire.security`, the call
limits in ``server/limits.py``, the INTERNAL catch-all in ``server/internal_errors.py``) goes through
:func:`wrap_handler` instead of repeating that four-way branch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Around = Callable[[Callable[..., Any], bool], Callable[..., Any]]


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour replaced by ``around(behaviour, response_streaming)`` (same streaming
    kind and serializers)."""
    kw = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(around(handler.stream_stream, True), **kw)  # type: ignore
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(around(handler.stream_unary, False), **kw)  # type: ignore
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(around(handler.unary_stream, True), **kw)  # type: ignore
    return grpc.unary_unary_rpc_method_handler(around(handler.unary_unary, False), **kw)  # type: ignore
