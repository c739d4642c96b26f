"""The HTTP frontend: vLLM's demo api_server `POST /generate` and KServe v2 health, beside gRPC.

A thin translation layer like the servicer: the JSON body becomes a `GenerateRequest` and runs
through `ServerState.prepare` / `Generation.run` (validation, admission limit, engine loop, abort
on exit); errors get their gRPC status from `errors.status_for` and their HTTP status from
`HTTP_STATUS`. uvicorn serves the app on the asyncio loop the gRPC server runs on.

Differences from vLLM's demo server: fields are checked (unknown or mistyped fields are 400s
naming the field); `max_tokens` defaults to the server's `--default-max-tokens`, not 16; responses
add `request_id`, `finish_reasons` and `usage` (and `logprobs` when asked) after `text`, in the
final chunk of a stream; `"echo": false` leaves the prompt out of `text`.
"""

import asyncio
import contextlib
import json
import logging
import math
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass

import grpc
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from llmserve import metrics
from llmserve.auth import UNAUTHENTICATED_MESSAGE, ApiKeys
from llmserve.config import ServerConfig
from llmserve.errors import (
    InvalidArgumentError,
    LlmServeError,
    UnauthenticatedError,
    status_for,
)
from llmserve.generation import Generation, ServerState
from llmserve.logs import ACCESS_LOGGER, request_id_var
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.validation import check_request_id, request_id_or_new

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

REQUEST_ID_HEADER = "x-request-id"
# 499 is nginx's "client closed request": logged, never seen by the client.
HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Request fields the demo's `prompt` replaces.
INPUT_FIELDS = frozenset({"text", "token_ids", "messages", "add_generation_prompt"})
BODY_FIELDS = {f.name: f for f in pb.GenerateRequest.DESCRIPTOR.fields
               if f.name not in INPUT_FIELDS}
# What a field's JSON value must be: (one value, a list of them).
_KINDS = {
    FieldDescriptor.TYPE_STRING: ("a string", "a list of strings"),
    FieldDescriptor.TYPE_BOOL: ("true or false", "a list of booleans"),
    FieldDescriptor.TYPE_FLOAT: ("a number", "a list of numbers"),
    FieldDescriptor.TYPE_INT32: ("an integer", "a list of integers"),
    FieldDescriptor.TYPE_UINT32: ("an integer >= 0", "a list of integers >= 0"),
    FieldDescriptor.TYPE_UINT64: ("an integer >= 0", "a list of integers >= 0"),
}


class ClientDisconnectedError(LlmServeError):
    """The HTTP client went away before its response was complete."""

    code = grpc.StatusCode.CANCELLED


class RequestTooLargeError(Exception):
    """The body is larger than the server accepts (HTTP 413, as gRPC's message size limit)."""


def generate_request(body: object) -> tuple[pb.GenerateRequest, bool]:
    """A demo api_server JSON body → (GenerateRequest, stream); raises InvalidArgumentError."""
    if not isinstance(body, dict):
        raise InvalidArgumentError("body", "must be a JSON object")
    fields = dict(body)
    prompt = fields.pop("prompt", None)
    if not isinstance(prompt, str):
        raise InvalidArgumentError("prompt", "required, a string")
    stream = fields.pop("stream", False)
    if not isinstance(stream, bool):
        raise InvalidArgumentError("stream", f"expected true or false, got {stream!r}")
    if isinstance(fields.get("stop"), str):  # the demo accepts a single stop string
        fields["stop"] = [fields["stop"]]
    # The demo returns the prompt followed by the completion.
    request = pb.GenerateRequest(text=prompt, echo=True)
    for name, value in fields.items():
        field = BODY_FIELDS.get(name)
        if field is None:
            raise InvalidArgumentError(name, "unknown field")
        try:
            json_format.ParseDict({name: value}, request)
        except json_format.ParseError:
            expected = _KINDS[field.type][field.is_repeated]
            raise InvalidArgumentError(name, f"expected {expected}, got {value!r}") from None
    return request, stream


def _finish_reason(reason: int) -> str | None:
    if reason == pb.FINISH_REASON_UNSPECIFIED:
        return None
    return pb.FinishReason.Name(reason).removeprefix("FINISH_REASON_").lower()


def _logprobs_json(positions) -> list[dict]:
    return [json_format.MessageToDict(p, preserving_proto_field_name=True) for p in positions]


def response_json(response: pb.GenerateResponse, final: bool = True) -> dict:
    """The demo's `{"text": [...]}`, one entry per completion; the final one adds our fields."""
    body: dict = {"text": [c.text for c in response.completions]}
    if not final:
        return body
    body["request_id"] = response.request_id
    body["finish_reasons"] = [_finish_reason(c.finish_reason) for c in response.completions]
    body["usage"] = {"prompt_tokens": response.usage.prompt_tokens,
                     "completion_tokens": response.usage.completion_tokens}
    body["timings"] = {"queued_ms": response.timings.queued_ms,
                       "time_to_first_token_ms": response.timings.time_to_first_token_ms,
                       "total_ms": response.timings.total_ms}
    if any(c.logprobs for c in response.completions):
        body["logprobs"] = [_logprobs_json(c.logprobs) for c in response.completions]
    if response.prompt_logprobs:
        body["prompt_logprobs"] = _logprobs_json(response.prompt_logprobs)
    return body


def _merge(total: pb.GenerateResponse, message: pb.GenerateResponse) -> None:
    """Adds a stream message's deltas to the running totals (the demo streams whole texts)."""
    for delta in message.completions:
        completion = total.completions[delta.index]
        completion.text += delta.text
        completion.token_ids.extend(delta.token_ids)
        completion.logprobs.extend(delta.logprobs)
        if delta.finish_reason:
            completion.finish_reason = delta.finish_reason
            completion.stop_reason = delta.stop_reason
    total.prompt_logprobs.extend(message.prompt_logprobs)
    if message.finished:
        total.usage.CopyFrom(message.usage)
        total.timings.CopyFrom(message.timings)
        total.finished = True


def _json_line(body: dict) -> bytes:
    return (json.dumps(body) + "\n").encode()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, awaitable: Awaitable):
    """Awaits `awaitable`; if the client goes away first, cancels it and raises."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            # Lets a cancelled generation abort its engine request before the response is logged.
            await asyncio.wait((work,))
    if work.cancelled():
        raise ClientDisconnectedError("the client disconnected")
    return work.result()


async def _cancel(task: asyncio.Task) -> None:
    task.cancel()
    await asyncio.wait((task,))


@dataclass(slots=True)
class _Call:
    """One HTTP request, as the access log sees it."""

    name: str
    request_id: str
    start: float
    status: int = 200
    code: grpc.StatusCode = grpc.StatusCode.OK
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def fail(self, exc: BaseException) -> dict:
        """Records the error's status; returns the error body."""
        self.code, message = status_for(exc, self.request_id)
        self.status = HTTP_STATUS.get(self.code, 500)
        return {"error": message, "request_id": self.request_id}

    def __post_init__(self) -> None:
        metrics.IN_FLIGHT.labels(self.name).inc()

    def log(self) -> None:
        """Ends the call: metrics and the access log line."""
        seconds = time.monotonic() - self.start
        duration_ms = seconds * 1000
        metrics.IN_FLIGHT.labels(self.name).dec()
        metrics.record_call(self.name, self.code.name, seconds)
        access_logger.info(
            "%s %d %s %.1fms prompt_tokens=%d completion_tokens=%d", self.name, self.status,
            self.code.name, duration_ms, self.prompt_tokens, self.completion_tokens,
            extra={"rpc": self.name, "code": self.code.name, "http_status": self.status,
                   "duration_ms": round(duration_ms, 3), "prompt_tokens": self.prompt_tokens,
                   "completion_tokens": self.completion_tokens},
        )


class _GenerationStream(StreamingResponse):
    """A streamed generation: however the response ends, its generation task is cancelled."""

    def __init__(self, chunks: AsyncIterator[bytes], task: asyncio.Task, call: _Call):
        super().__init__(chunks, media_type="application/x-ndjson")
        self._task, self._call = task, call

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._task.done():  # the client went away mid-stream
                self._call.fail(ClientDisconnectedError("the client disconnected"))
                await _cancel(self._task)
            self._call.log()


# Queue items besides GenerateResponse messages and exceptions: the generation is over.
_END = object()


class HttpApi:
    """The routes over one ServerState: /generate (API key checked, if any) and open health."""

    def __init__(self, state: ServerState, max_body_bytes: int, api_keys: ApiKeys | None):
        self.state = state
        self.max_body_bytes = max_body_bytes
        self.api_keys = api_keys
        self.app = FastAPI(title="llmserve", docs_url=None, redoc_url=None, openapi_url=None)
        self.app.add_api_route("/generate", self.generate, methods=["POST"])
        self.app.add_api_route("/health", self.ready, methods=["GET"])
        self.app.add_api_route("/v2/health/live", self.live, methods=["GET"])
        self.app.add_api_route("/v2/health/ready", self.ready, methods=["GET"])

    async def live(self) -> Response:
        return Response(status_code=200)

    async def ready(self) -> Response:
        return Response(status_code=200 if self.state.ready else 503)

    async def _body(self, request: Request) -> object:
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.max_body_bytes:
                raise RequestTooLargeError(f"the body is larger than {self.max_body_bytes} bytes")
        try:
            return json.loads(data)
        except ValueError as exc:
            raise InvalidArgumentError("body", f"not valid JSON ({exc})") from None

    async def generate(self, request: Request) -> Response:
        call = _Call("http_generate",
                     request_id_or_new(request.headers.get(REQUEST_ID_HEADER, "")),
                     time.monotonic())
        request_id_var.set(call.request_id)
        try:
            response = await self._generate(request, call)
        except RequestTooLargeError as exc:
            call.status, call.code = 413, grpc.StatusCode.RESOURCE_EXHAUSTED
            response = JSONResponse({"error": str(exc), "request_id": call.request_id},
                                    status_code=call.status)
        except Exception as exc:
            response = JSONResponse(call.fail(exc), status_code=call.status)
        except asyncio.CancelledError as exc:  # the server stopped past its grace period
            call.fail(exc)
            call.log()
            raise
        if not isinstance(response, _GenerationStream):  # a stream logs when it ends
            call.log()
        response.headers[REQUEST_ID_HEADER] = call.request_id
        return response

    def _authenticate(self, request: Request) -> None:
        if self.api_keys is not None and not self.api_keys.accepts(
                request.headers.get("authorization")):
            metrics.AUTH_FAILURES.inc()
            raise UnauthenticatedError(UNAUTHENTICATED_MESSAGE)

    async def _generate(self, request: Request, call: _Call) -> Response:
        self._authenticate(request)
        check_request_id(request.headers.get(REQUEST_ID_HEADER, ""))
        grpc_request, stream = generate_request(await self._body(request))
        if grpc_request.request_id:  # the body's id wins over the header's, as over gRPC
            call.request_id = check_request_id(grpc_request.request_id)
            request_id_var.set(call.request_id)
        generation = self.state.prepare(grpc_request, call.request_id, call.start, stream)
        call.prompt_tokens = generation.builder.prompt_tokens
        if stream:
            return await self._stream(request, generation, call)
        return await self._unary(request, generation, call)

    async def _unary(self, request: Request, generation: Generation, call: _Call) -> Response:
        builder = generation.builder

        async def collect(output) -> None:
            builder.collect(output)

        try:
            time_limited = await _unless_disconnected(request, generation.run(None, collect))
        finally:
            call.completion_tokens = builder.completion_tokens
        return JSONResponse(response_json(builder.unary_response(time_limited)))

    async def _stream(self, request: Request, generation: Generation, call: _Call) -> Response:
        """Starts the generation; answers once its first message (or error) is known.

        Errors before the first message (e.g. the admission limit) get their HTTP status; later
        ones end the 200 stream with an `{"error": ...}` line.
        """
        builder = generation.builder
        queue: asyncio.Queue = asyncio.Queue(maxsize=1)

        async def put(output) -> None:
            await queue.put(builder.stream_message(output))

        async def produce() -> None:
            try:
                if await generation.run(None, put):
                    await queue.put(builder.stream_time_limit_message())
                await queue.put(_END)
            except Exception as exc:
                await queue.put(exc)

        task = asyncio.create_task(produce())
        try:
            first = await _unless_disconnected(request, queue.get())
            if isinstance(first, Exception):
                raise first
        except BaseException:
            await _cancel(task)
            call.completion_tokens = builder.completion_tokens
            raise

        total = pb.GenerateResponse(
            request_id=call.request_id,
            completions=[pb.Completion(index=i) for i in range(generation.prepared.generation.n)])

        async def chunks() -> AsyncIterator[bytes]:
            item = first
            while item is not _END:
                if isinstance(item, Exception):
                    yield _json_line(call.fail(item))
                    break
                _merge(total, item)
                call.completion_tokens = builder.completion_tokens
                yield _json_line(response_json(total, final=total.finished))
                item = await queue.get()

        return _GenerationStream(chunks(), task, call)


class _EmbeddedUvicorn(uvicorn.Server):
    """uvicorn without its signal handlers: LlmServer owns SIGTERM/SIGINT and stops us."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


def _listen(config: ServerConfig) -> socket.socket:
    host = config.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, config.http_port), family=family, backlog=2048)
    # Accepted connections inherit TCP_NODELAY. asyncio sets it only on sockets made with proto
    # IPPROTO_TCP (create_server's are proto 0): without it each response waited ~40 ms for the
    # client's delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if config.keepalive_seconds > 0:
        _drop_dead_peers(sock, config.keepalive_seconds, config.keepalive_timeout_seconds)
    return sock


def _drop_dead_peers(sock: socket.socket, idle_seconds: float, timeout_seconds: float) -> None:
    """The gRPC port's keepalive in TCP, for the connections `sock` accepts (they inherit it).

    A connection quiet for `idle_seconds` is probed; one whose peer acknowledges nothing (probes
    or response data) for `timeout_seconds` is reset, and its requests are aborted as when a
    client disconnects. Linux (5.11 on) also resets one whose peer keeps its receive window
    closed that long: a client that stopped reading a stream.
    """
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, math.ceil(idle_seconds))
    # Several probes within the timeout, so one lost probe does not end the connection.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, math.ceil(timeout_seconds / 4))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, math.ceil(timeout_seconds * 1000))


class HttpServer:
    """The HTTP API on uvicorn, as a task on the running loop (the gRPC server's)."""

    def __init__(self, state: ServerState, config: ServerConfig, api_keys: ApiKeys | None):
        self.api = HttpApi(state, config.max_message_bytes, api_keys)
        self._config = config
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task | None = None
        self.port = 0

    def start(self) -> int:
        """Binds the port (failing at once if it is taken) and starts serving; returns the port."""
        config = self._config
        tls = {}
        if config.tls_cert:  # the gRPC port's certificate, and its client CA for mutual TLS
            tls = {"ssl_certfile": config.tls_cert, "ssl_keyfile": config.tls_key}
            if config.tls_client_ca:
                tls |= {"ssl_ca_certs": config.tls_client_ca, "ssl_cert_reqs": ssl.CERT_REQUIRED}
        sock = _listen(config)
        self.port = sock.getsockname()[1]
        uvicorn_config = uvicorn.Config(self.api.app, lifespan="off", log_config=None,
                                        access_log=False, **tls)
        uvicorn_config.load()  # a bad certificate fails here, not in the task
        self._server = _EmbeddedUvicorn(uvicorn_config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="http-server")
        logger.info("HTTP server listening on %s:%d (%s)", config.host, self.port,
                    "HTTPS" if tls else "plain HTTP")
        return self.port

    async def stop(self, grace: float) -> None:
        """Stops accepting; in-flight requests get `grace` seconds, then are cancelled."""
        if self._task is None:
            return
        self._server.config.timeout_graceful_shutdown = grace
        self._server.should_exit = True
        await self._task
        # Requests cancelled after the grace period abort their engine requests first.
        await asyncio.gather(*self._server.server_state.tasks, return_exceptions=True)
        self._task = None
