"""Bearer-token authentication for every RPC except the health service (so probes work)."""

import hmac
import logging
from collections.abc import Sequence
from pathlib import Path

import grpc

from llmserve import metrics

logger = logging.getLogger(__name__)

OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/",)
UNAUTHENTICATED_MESSAGE = "missing or invalid API key (send 'authorization: Bearer <key>')"


def load_api_keys(api_keys: Sequence[str], api_key_file: Path | None) -> list[str]:
    """Keys from --api-key and from --api-key-file (one per line, # comments)."""
    keys = [k for k in api_keys if k]
    if api_key_file is not None:
        for line in api_key_file.read_text().splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keys.append(line)
    return keys


def bearer_token(authorization: str | None) -> str | None:
    scheme, _, token = (authorization or "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class ApiKeys:
    def __init__(self, keys: Sequence[str]):
        self._keys = [k.encode() for k in keys]

    def accepts(self, authorization: str | None) -> bool:
        token = bearer_token(authorization)
        if token is None:
            return False
        # Compare against every key in constant time: no early exit that leaks which matched.
        return any([hmac.compare_digest(token.encode(), key) for key in self._keys])


async def _reject(request_or_iterator, context: grpc.aio.ServicerContext):
    await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid `authorization: Bearer <key>` with UNAUTHENTICATED."""

    def __init__(self, keys: ApiKeys):
        self._keys = keys

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self._keys.accepts(metadata.get("authorization")):
            return handler
        metrics.AUTH_FAILURES.inc()
        logger.warning("unauthenticated call to %s", handler_call_details.method)
        return _rejecting_handler(handler)


def _rejecting_handler(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that refuses the call."""
    kwargs = {"request_deserializer": handler.request_deserializer,
              "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(_reject, **kwargs)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(_reject, **kwargs)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(_reject, **kwargs)
    return grpc.stream_stream_rpc_method_handler(_reject, **kwargs)


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS credentials; with `client_ca`, clients must present a certificate it signed (mTLS)."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes() if client_ca else None,
        require_client_auth=client_ca is not None,
    )
