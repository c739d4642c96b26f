"""The gRPC servicer: translates llmserve.v1 messages to engine calls and back, nothing more."""

import asyncio
import functools
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from llmserve import __version__
from llmserve.engine.protocol import Engine, GenerationOutput
from llmserve.errors import (
    DeadlineExceededError,
    EngineDeadError,
    InvalidArgumentError,
    UnavailableError,
    status_for,
)
from llmserve.logs import request_id_var
from llmserve.responses import ResponseBuilder
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve.validation import (
    PreparedRequest,
    RequestLimits,
    chat_turns,
    check_token_ids,
    prepare_request,
)

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("llmserve.access")

SERVER_NAME = "llmserve"
REQUEST_ID_KEY = "x-request-id"


class ServerState:
    """What readiness depends on: an engine that can generate and a server that is not draining."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.draining = False

    @property
    def ready(self) -> bool:
        return self.engine is not None and not self.engine.is_dead and not self.draining

    def serving_engine(self) -> Engine:
        """The engine, if new requests may use it; UNAVAILABLE otherwise."""
        if self.draining:
            raise UnavailableError("the server is shutting down")
        if self.engine is None:
            raise UnavailableError("the model is still loading")
        if self.engine.is_dead:
            raise EngineDeadError()
        return self.engine


@dataclass(slots=True)
class CallRecord:
    """One RPC, as the access log (and metrics) see it."""

    method: str
    request_id: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: grpc.StatusCode = grpc.StatusCode.OK


def _request_id(request, context: grpc.aio.ServicerContext) -> str:
    request_id = getattr(request, "request_id", "")
    if not request_id:
        request_id = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY, "")
    return request_id or uuid.uuid4().hex


def rpc(method: Callable[..., Awaitable]):
    """Wraps an RPC: request id, the one exception → status mapping, and the access log."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self: "LlmServicer", request, context: grpc.aio.ServicerContext):
        call = CallRecord(method=name, request_id=_request_id(request, context))
        request_id_var.set(call.request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        start = time.monotonic()
        try:
            return await method(self, request, context, call)
        except asyncio.CancelledError:
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= 0
            call.code = (grpc.StatusCode.DEADLINE_EXCEEDED if expired
                         else grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            call.code, message = status_for(exc, call.request_id)
            await context.abort(call.code, message)
        finally:
            access_logger.info(
                "%s %s %.1fms prompt_tokens=%d completion_tokens=%d",
                name, call.code.name, (time.monotonic() - start) * 1000,
                call.prompt_tokens, call.completion_tokens,
                extra={"rpc": name, "code": call.code.name,
                       "duration_ms": round((time.monotonic() - start) * 1000, 3),
                       "prompt_tokens": call.prompt_tokens,
                       "completion_tokens": call.completion_tokens},
            )

    return handler


class LlmServicer(pb_grpc.LlmServiceServicer):
    def __init__(self, state: ServerState, served_model_name: str,
                 extensions: tuple[str, ...] = ()):
        self._state = state
        self._served_model_name = served_model_name
        self._extensions = extensions
        self._sequence = itertools.count()
        # Known once the engine has loaded, before the state exposes it.
        self._limits: RequestLimits | None = None

    def set_limits(self, limits: RequestLimits) -> None:
        self._limits = limits

    # Generation.

    def _prepare(self, request: pb.GenerateRequest, call: CallRecord,
                 stream: bool) -> tuple[Engine, PreparedRequest, ResponseBuilder]:
        engine = self._state.serving_engine()
        # Engine ids stay unique even when clients reuse a request id.
        engine_request_id = f"{call.request_id}-{next(self._sequence)}"
        prepared = prepare_request(request, engine_request_id, engine, self._limits, stream)
        generation = prepared.generation
        call.prompt_tokens = len(generation.prompt_token_ids)
        builder = ResponseBuilder(call.request_id, call.prompt_tokens, generation.n,
                                  prepared.echo_text)
        return engine, prepared, builder

    @rpc
    async def Generate(self, request, context, call):
        engine, prepared, builder = self._prepare(request, call, stream=False)
        try:
            time_limited = await _drive(engine, prepared, context, _sync(builder.collect))
        finally:
            call.completion_tokens = builder.completion_tokens
        return builder.unary_response(time_limited)

    @rpc
    async def StreamGenerate(self, request, context, call):
        engine, prepared, builder = self._prepare(request, call, stream=True)

        async def write(output: GenerationOutput) -> None:
            await context.write(builder.stream_message(output))

        try:
            if await _drive(engine, prepared, context, write):
                await context.write(builder.stream_time_limit_message())
        finally:
            call.completion_tokens = builder.completion_tokens

    # Tokenizer.

    @rpc
    async def Tokenize(self, request, context, call):
        engine = self._state.serving_engine()
        if bool(request.text) == bool(request.messages):
            raise InvalidArgumentError("input", "give exactly one of text or messages")
        if request.text:
            add_special = request.add_special_tokens if request.HasField(
                "add_special_tokens") else True
            token_ids = engine.tokenize(request.text, add_special_tokens=add_special)
        else:
            add_generation_prompt = (request.add_generation_prompt if request.HasField(
                "add_generation_prompt") else True)
            rendered = engine.render_chat(chat_turns(request.messages), add_generation_prompt)
            token_ids = engine.tokenize(rendered, add_special_tokens=False)
        response = pb.TokenizeResponse(token_ids=token_ids,
                                       max_model_len=self._limits.max_model_len)
        if request.return_tokens:
            response.tokens.extend(engine.token_strings(token_ids))
        return response

    @rpc
    async def Detokenize(self, request, context, call):
        engine = self._state.serving_engine()
        token_ids = check_token_ids(request.token_ids, "token_ids", self._limits.vocab_size)
        skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
        return pb.DetokenizeResponse(text=engine.detokenize(token_ids, skip))

    # Metadata and readiness.

    @rpc
    async def ServerMetadata(self, request, context, call):
        return pb.ServerMetadataResponse(name=SERVER_NAME, version=__version__,
                                         extensions=self._extensions)

    @rpc
    async def ModelMetadata(self, request, context, call):
        engine = self._state.serving_engine()
        if request.name not in ("", self._served_model_name):
            raise InvalidArgumentError(
                "name", f"unknown model {request.name!r}; this server serves "
                f"{self._served_model_name!r}")
        info = engine.model_info
        response = pb.ModelMetadataResponse(
            name=info.name, path=info.path, engine=info.engine,
            engine_version=info.engine_version, max_model_len=info.max_model_len,
            dtype=info.dtype, vocab_size=info.vocab_size, architecture=info.architecture,
            has_chat_template=info.has_chat_template,
            tensor_parallel_size=info.tensor_parallel_size,
        )
        if info.eos_token_id is not None:
            response.eos_token_id = info.eos_token_id
        return response

    @rpc
    async def ServerLive(self, request, context, call):
        return pb.ServerLiveResponse(live=True)

    @rpc
    async def ServerReady(self, request, context, call):
        return pb.ServerReadyResponse(ready=self._state.ready)

    @rpc
    async def ModelReady(self, request, context, call):
        known = request.name in ("", self._served_model_name)
        return pb.ModelReadyResponse(ready=known and self._state.ready)


def _sync(collect: Callable[[GenerationOutput], None]):
    async def on_output(output: GenerationOutput) -> None:
        collect(output)

    return on_output


async def _drive(engine: Engine, prepared: PreparedRequest, context: grpc.aio.ServicerContext,
                 on_output: Callable[[GenerationOutput], Awaitable[None]]) -> bool:
    """Runs a request in the engine, handing each output to `on_output`.

    Returns True when `time_limit_ms` stopped it. The engine request is aborted whenever it ends
    early: deadline, time limit, client cancellation or any error.
    """
    generation = prepared.generation
    loop = asyncio.get_running_loop()
    now = loop.time()
    remaining = context.time_remaining()
    deadline = now + remaining if remaining is not None else None
    time_limit_at = now + prepared.time_limit if prepared.time_limit is not None else None
    stop_at = min((t for t in (deadline, time_limit_at) if t is not None), default=None)

    outputs = engine.generate(generation)
    finished = False
    try:
        async with asyncio.timeout_at(stop_at):
            async for output in outputs:
                finished = output.finished
                await on_output(output)
        return False
    except TimeoutError:
        if time_limit_at is not None and (deadline is None or time_limit_at <= deadline):
            return True
        raise DeadlineExceededError("deadline exceeded; the request was aborted") from None
    finally:
        if not finished:
            await engine.abort(generation.request_id)
        await outputs.aclose()
