"""What the sync and asyncio clients share: request building, channel options, credentials."""

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc

SERVICE = "llmserve.v1.LlmService"
# Unary methods are retried (RETRYABLE_CODES); streams never are (they may have produced output).
UNARY_METHODS = ("Generate", "Tokenize", "Detokenize", "ServerMetadata", "ModelMetadata",
                 "ServerLive", "ServerReady", "ModelReady")
DEFAULT_TARGET = "127.0.0.1:8001"
MAX_ATTEMPTS_LIMIT = 5  # gRPC caps retry attempts at 5
# Retried on: UNAVAILABLE (server draining, engine loading or dead, connection refused or lost)
# and CANCELLED, which a stopping server's gRPC core sends to calls that arrived as it stopped,
# before any handler ran. A call the application cancels itself is never retried.
RETRYABLE_CODES = ["UNAVAILABLE", "CANCELLED"]
# The channel's reconnect backoff matches the retry backoff: with gRPC's default (1 s, then
# growing), a retry after a refused connection fails at once while the channel waits, so a
# server restarted within the retry window was never reached.
RECONNECT_BACKOFF_MS = {"initial": 200, "min": 200, "max": 2000}
# Default of per-call `timeout` arguments: use the client's default deadline.
UNSET = object()

ChatMessages = Iterable[Mapping[str, str] | tuple[str, str] | pb.ChatMessage]


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the channel: the CA to trust, and a client certificate for mutual TLS."""

    root_certificates: Path | None = None
    client_certificate: Path | None = None
    client_key: Path | None = None
    server_name_override: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: Path | None) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.root_certificates),
            private_key=read(self.client_key),
            certificate_chain=read(self.client_certificate),
        )


def channel_options(retries: int, max_message_bytes: int,
                    tls: TlsConfig | None) -> list[tuple[str, object]]:
    options: list[tuple[str, object]] = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retries else 0),
        *((f"grpc.{kind}_reconnect_backoff_ms", ms) for kind, ms in RECONNECT_BACKOFF_MS.items()),
    ]
    if retries:
        retry_policy = {
            "maxAttempts": min(retries + 1, MAX_ATTEMPTS_LIMIT),
            "initialBackoff": "0.2s",
            "maxBackoff": "2s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": RETRYABLE_CODES,
        }
        config = {"methodConfig": [{
            "name": [{"service": SERVICE, "method": m} for m in UNARY_METHODS],
            "retryPolicy": retry_policy,
        }]}
        options.append(("grpc.service_config", json.dumps(config)))
    if tls is not None and tls.server_name_override:
        options.append(("grpc.ssl_target_name_override", tls.server_name_override))
    return options


def call_metadata(api_key: str | None,
                  request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    metadata = []
    if api_key:
        metadata.append(("authorization", f"Bearer {api_key}"))
    # Metadata must be printable ASCII; the server refuses other ids (INVALID_ARGUMENT) from the
    # request's field, where gRPC cannot fail the call on the client first.
    if request_id and request_id.isascii() and request_id.isprintable():
        metadata.append(("x-request-id", request_id))
    return tuple(metadata)


class ClientBase:
    """Channel, stub, default deadline and credentials; `channels` is grpc or grpc.aio."""

    channels = grpc

    def __init__(self, target: str = DEFAULT_TARGET, *, timeout: float | None = 60.0,
                 retries: int = 3, tls: TlsConfig | None = None, api_key: str | None = None,
                 max_message_bytes: int = 16 * 1024 * 1024):
        options = channel_options(retries, max_message_bytes, tls)
        if tls is None:
            self._channel = self.channels.insecure_channel(target, options=options)
        else:
            self._channel = self.channels.secure_channel(target, tls.credentials(),
                                                         options=options)
        self._stub = pb_grpc.LlmServiceStub(self._channel)
        self._timeout = timeout
        self._api_key = api_key

    def _kwargs(self, timeout, request_id: str | None = None) -> dict:
        return {"timeout": self._timeout if timeout is UNSET else timeout,
                "metadata": call_metadata(self._api_key, request_id)}


def _chat_message(message) -> pb.ChatMessage:
    if isinstance(message, pb.ChatMessage):
        return message
    if isinstance(message, Mapping):
        return pb.ChatMessage(role=message["role"], content=message["content"])
    role, content = message
    return pb.ChatMessage(role=role, content=content)


def build_request(text: str | None = None, *, token_ids: Sequence[int] | None = None,
                  messages: ChatMessages | None = None, **params) -> pb.GenerateRequest:
    """A GenerateRequest from a prompt and GenerateRequest field values (max_tokens=16, ...)."""
    request = pb.GenerateRequest(**params)
    if text is not None:
        request.text = text
    if token_ids is not None:
        request.token_ids.extend(token_ids)
    if messages is not None:
        request.messages.extend(_chat_message(m) for m in messages)
    return request


def full_text(response: pb.GenerateResponse, index: int = 0) -> str:
    """The text of completion `index` in a unary response."""
    return next((c.text for c in response.completions if c.index == index), "")
