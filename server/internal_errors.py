"""The catch-all for unexpected exceptions in the station's RPC handlers.

Without it grpc answers ``UNKNOWN: Exception calling application: <the exception's text>``, which can carry
engine internals (ONNX Runtime node names, file paths). Here any exception that is not a deliberate
``context.abort`` becomes ``INTERNAL`` with a generic message and an error id; the traceback is logged on
the station under the same id.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from gsal_wire.handlers import wrap_handler
from server.batcher import new_error_id

log = logging.getLogger(__name__)


def _aborted(context: grpc.ServicerContext) -> bool:
    code = context.code()
    return code is not None and code != grpc.StatusCode.OK


def _fail(method: str, context: grpc.ServicerContext, e: BaseException) -> None:
    eid = new_error_id()
    log.error("internal error [error id %s] in %s", eid, method, exc_info=e)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error (error id {eid}; the station log has the details)")


class InternalErrorInterceptor(grpc.ServerInterceptor):
    """Maps unexpected handler exceptions to ``INTERNAL`` + error id (see the module docstring)."""

    def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        return wrap_handler(handler, lambda behavior, streaming: _guard(behavior, method, streaming))


def _guard(behavior: Callable[..., Any], method: str, response_streaming: bool) -> Callable[..., Any]:
    if response_streaming:

        def stream(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
            try:
                yield from behavior(request, context)
            except Exception as e:
                if _aborted(context):
                    raise
                _fail(method, context, e)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return behavior(request, context)
        except Exception as e:
            if _aborted(context):
                raise
            _fail(method, context, e)

    return unary
