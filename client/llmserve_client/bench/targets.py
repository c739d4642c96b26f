"""Clients of the servers under test, each doing the least work per streamed message.

Targets are named by URL:
  grpc://HOST:PORT        llmserve StreamGenerate (also the fake-engine and echo servers)
  grpc+unary://HOST:PORT  llmserve Generate
  openai://HOST:PORT      an OpenAI-compatible server (`vllm serve`), streaming /v1/completions
  http://HOST:PORT        llmserve's HTTP API, streaming POST /generate (one JSON line a message)
"""

import json
import time
from urllib.parse import urlsplit

import grpc

from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client._common import channel_options
from llmserve_client.bench.loadgen import REQUEST_TIMEOUT_SECONDS, Reply, Target

MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def generate_request(prompt: str, output_len: int) -> pb.GenerateRequest:
    """Greedy, exactly `output_len` tokens: the same work on every target."""
    return pb.GenerateRequest(text=prompt, max_tokens=output_len, min_tokens=output_len,
                              ignore_eos=True, temperature=0.0)


class GrpcStreamTarget:
    streaming = True

    def __init__(self, address: str):
        self.name = f"grpc://{address}"
        self._channel = grpc.aio.insecure_channel(
            address, options=channel_options(0, MAX_MESSAGE_BYTES, None))
        self._stub = pb_grpc.LlmServiceStub(self._channel)

    async def request(self, prompt: str, output_len: int) -> Reply:
        call = self._stub.StreamGenerate(generate_request(prompt, output_len),
                                         timeout=REQUEST_TIMEOUT_SECONDS)
        times: list[float] = []
        last = None
        # Ends with the stream: after output_len tokens or at the deadline.
        while (message := await call.read()) is not grpc.aio.EOF:
            times.append(time.perf_counter())
            last = message
        if last is None:
            raise RuntimeError("the stream ended without a message")
        return Reply(last.usage.completion_tokens, times, last.timings.time_to_first_token_ms)

    async def close(self) -> None:
        await self._channel.close()


class GrpcUnaryTarget(GrpcStreamTarget):
    streaming = False

    def __init__(self, address: str):
        super().__init__(address)
        self.name = f"grpc+unary://{address}"

    async def request(self, prompt: str, output_len: int) -> Reply:
        response = await self._stub.Generate(generate_request(prompt, output_len),
                                             timeout=REQUEST_TIMEOUT_SECONDS)
        return Reply(response.usage.completion_tokens, [])


class HttpStatusError(RuntimeError):
    pass


class _HttpTarget:
    streaming = True

    def __init__(self, name: str, address: str):
        import aiohttp

        self.name = name
        self._base = f"http://{address}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS))

    async def _stream(self, path: str, payload: dict, prefix: bytes) -> tuple[list[float], bytes]:
        """Posts `payload`; returns the arrival times of the lines starting with `prefix`, and
        the last such line."""
        times: list[float] = []
        last = b""
        async with self._session.post(self._base + path, json=payload) as response:
            if response.status != 200:
                raise HttpStatusError(f"HTTP {response.status}: {(await response.text())[:200]}")
            async for line in response.content:
                if line.startswith(prefix):
                    times.append(time.perf_counter())
                    last = line
        return times, last

    async def close(self) -> None:
        await self._session.close()


class LlmserveHttpTarget(_HttpTarget):
    """llmserve's streaming POST /generate: one JSON line per message, usage in the last."""

    def __init__(self, address: str):
        super().__init__(f"http://{address}", address)

    async def request(self, prompt: str, output_len: int) -> Reply:
        payload = {"prompt": prompt, "stream": True, "echo": False, "max_tokens": output_len,
                   "min_tokens": output_len, "ignore_eos": True, "temperature": 0.0}
        times, last = await self._stream("/generate", payload, b"{")
        final = json.loads(last)
        if "usage" not in final:
            raise RuntimeError(f"the stream ended without usage: {last[:200]!r}")
        return Reply(final["usage"]["completion_tokens"], times,
                     final["timings"]["time_to_first_token_ms"])


class OpenAICompletionsTarget(_HttpTarget):
    """Streaming /v1/completions with the final usage chunk (vLLM's sampling extensions)."""

    def __init__(self, address: str, model: str | None):
        super().__init__(f"openai://{address}", address)
        self.model = model

    async def open(self) -> "OpenAICompletionsTarget":
        if self.model is None:
            async with self._session.get(f"{self._base}/v1/models") as response:
                self.model = (await response.json())["data"][0]["id"]
        return self

    async def request(self, prompt: str, output_len: int) -> Reply:
        payload = {
            "model": self.model, "prompt": prompt, "max_tokens": output_len,
            "min_tokens": output_len, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True},
        }
        # Server-sent events, one `data: {...}` line per chunk, then `data: [DONE]`.
        times, last = await self._stream("/v1/completions", payload, b"data: {")
        final = json.loads(last[6:])
        if not final.get("choices"):  # the usage-only chunk carries no token
            times.pop()
        return Reply(final["usage"]["completion_tokens"], times)


async def open_target(url: str, model: str | None = None) -> Target:
    """The target named by `url` (see the module docstring), connected in the running loop."""
    parts = urlsplit(url)
    address = parts.netloc
    if parts.scheme == "grpc":
        return GrpcStreamTarget(address)
    if parts.scheme == "grpc+unary":
        return GrpcUnaryTarget(address)
    if parts.scheme == "openai":
        return await OpenAICompletionsTarget(address, model).open()
    if parts.scheme == "http":
        return LlmserveHttpTarget(address)
    raise ValueError(f"unknown target {url!r}: use grpc://, grpc+unary://, openai:// or http://")
