"""Synchronous client for llmserve.v1.LlmService."""

from collections.abc import Iterator, Sequence

from llmserve.v1 import llmserve_pb2 as pb
from llmserve_client._common import UNSET, ChatMessages, ClientBase, build_request


class LlmClient(ClientBase):
    """A connection to an llmserve server.

    Unary calls are retried on UNAVAILABLE, and on CANCELLED from a server that is stopping
    (`retries` times, with backoff); streams are not.
    `timeout` is the default deadline of every call in seconds (None: no deadline).
    """

    def generate(self, text: str | None = None, *, token_ids: Sequence[int] | None = None,
                 messages: ChatMessages | None = None, timeout=UNSET,
                 **params) -> pb.GenerateResponse:
        """Generates to completion; `params` are GenerateRequest fields (max_tokens=..., ...)."""
        request = build_request(text, token_ids=token_ids, messages=messages, **params)
        return self._stub.Generate(request, **self._kwargs(timeout, request.request_id))

    def stream_generate(self, text: str | None = None, *, token_ids: Sequence[int] | None = None,
                        messages: ChatMessages | None = None, timeout=UNSET,
                        **params) -> Iterator[pb.GenerateResponse]:
        """Yields output deltas as they are generated; the last message has finished=True.

        Closing the iterator early (break, exceptions) cancels the request on the server.
        """
        request = build_request(text, token_ids=token_ids, messages=messages, **params)
        call = self._stub.StreamGenerate(request, **self._kwargs(timeout, request.request_id))
        try:
            yield from call
        finally:
            call.cancel()

    def tokenize(self, text: str, *, timeout=UNSET, **params) -> pb.TokenizeResponse:
        return self._stub.Tokenize(pb.TokenizeRequest(text=text, **params),
                                   **self._kwargs(timeout))

    def detokenize(self, token_ids: Sequence[int], *, timeout=UNSET) -> str:
        return self._stub.Detokenize(pb.DetokenizeRequest(token_ids=token_ids),
                                     **self._kwargs(timeout)).text

    def server_metadata(self, *, timeout=UNSET) -> pb.ServerMetadataResponse:
        return self._stub.ServerMetadata(pb.ServerMetadataRequest(), **self._kwargs(timeout))

    def model_metadata(self, name: str = "", *, timeout=UNSET) -> pb.ModelMetadataResponse:
        return self._stub.ModelMetadata(pb.ModelMetadataRequest(name=name),
                                        **self._kwargs(timeout))

    def server_live(self, *, timeout=UNSET) -> bool:
        return self._stub.ServerLive(pb.ServerLiveRequest(), **self._kwargs(timeout)).live

    def server_ready(self, *, timeout=UNSET) -> bool:
        return self._stub.ServerReady(pb.ServerReadyRequest(), **self._kwargs(timeout)).ready

    def model_ready(self, name: str = "", *, timeout=UNSET) -> bool:
        return self._stub.ModelReady(pb.ModelReadyRequest(name=name),
                                     **self._kwargs(timeout)).ready

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "LlmClient":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
