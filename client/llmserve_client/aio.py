"""asyncio client for llmserve.v1.LlmService (same methods as the sync client, awaitable)."""

from collections.abc import AsyncIterator, Sequence

import grpc

from llmserve.v1 import llmserve_pb2 as pb
from llmserve_client._common import UNSET, ChatMessages, ClientBase, build_request


class AsyncLlmClient(ClientBase):
    """An asyncio connection to an llmserve server; see `LlmClient` for the semantics."""

    channels = grpc.aio

    async def generate(self, text: str | None = None, *,
                       token_ids: Sequence[int] | None = None,
                       messages: ChatMessages | None = None, timeout=UNSET,
                       **params) -> pb.GenerateResponse:
        request = build_request(text, token_ids=token_ids, messages=messages, **params)
        return await self._stub.Generate(request, **self._kwargs(timeout, request.request_id))

    async def stream_generate(self, text: str | None = None, *,
                              token_ids: Sequence[int] | None = None,
                              messages: ChatMessages | None = None, timeout=UNSET,
                              **params) -> AsyncIterator[pb.GenerateResponse]:
        """Yields output deltas; leaving the loop early cancels the request on the server."""
        request = build_request(text, token_ids=token_ids, messages=messages, **params)
        call = self._stub.StreamGenerate(request, **self._kwargs(timeout, request.request_id))
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def tokenize(self, text: str, *, timeout=UNSET, **params) -> pb.TokenizeResponse:
        return await self._stub.Tokenize(pb.TokenizeRequest(text=text, **params),
                                         **self._kwargs(timeout))

    async def detokenize(self, token_ids: Sequence[int], *, timeout=UNSET) -> str:
        response = await self._stub.Detokenize(pb.DetokenizeRequest(token_ids=token_ids),
                                               **self._kwargs(timeout))
        return response.text

    async def server_metadata(self, *, timeout=UNSET) -> pb.ServerMetadataResponse:
        return await self._stub.ServerMetadata(pb.ServerMetadataRequest(),
                                               **self._kwargs(timeout))

    async def model_metadata(self, name: str = "", *, timeout=UNSET) -> pb.ModelMetadataResponse:
        return await self._stub.ModelMetadata(pb.ModelMetadataRequest(name=name),
                                              **self._kwargs(timeout))

    async def server_live(self, *, timeout=UNSET) -> bool:
        return (await self._stub.ServerLive(pb.ServerLiveRequest(),
                                            **self._kwargs(timeout))).live

    async def server_ready(self, *, timeout=UNSET) -> bool:
        return (await self._stub.ServerReady(pb.ServerReadyRequest(),
                                             **self._kwargs(timeout))).ready

    async def model_ready(self, name: str = "", *, timeout=UNSET) -> bool:
        return (await self._stub.ModelReady(pb.ModelReadyRequest(name=name),
                                            **self._kwargs(timeout))).ready

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncLlmClient":
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.close()
