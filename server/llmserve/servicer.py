"""The gRPC servicer: translates llmserve.v1 messages to engine calls and back, nothing more."""

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc

from llmserve import __version__, metrics
from llmserve.engine.protocol import GenerationOutput
from llmserve.errors import (
    ClientGoneError,
    DeadlineExceededError,
    InvalidArgumentError,
    LlmServeError,
    status_for,
)
from llmserve.generation import ServerState
from llmserve.logs import ACCESS_LOGGER, request_id_var
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve.validation import chat_turns, check_request_id, check_token_ids, request_id_or_new

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

SERVER_NAME = "llmserve"
REQUEST_ID_KEY = "x-request-id"
# How far ahead of the server's deadline a client's deadline may fire: request transit time.
DEADLINE_SKEW_SECONDS = 0.05


@dataclass(slots=True)
class CallRecord:
    """One RPC, as the access log (and metrics) see it."""

    method: str
    request_id: str
    # When the call reached the handler (time.monotonic()): durations and timings start here.
    start: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    code: grpc.StatusCode = grpc.StatusCode.OK


def _given_request_id(request, context: grpc.aio.ServicerContext) -> str:
    """The client's request id: the request's field, else x-request-id metadata, else ""."""
    request_id = getattr(request, "request_id", "")
    if not request_id:
        request_id = dict(context.invocation_metadata() or ()).get(REQUEST_ID_KEY, "")
    return request_id


def _deadline_passed(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has (about) passed.

    When the client's deadline fires first, its cancellation reaches the server a little before
    the server's copy of the deadline (which started when the request arrived): that is still a
    deadline, not a client that left.
    """
    remaining = context.time_remaining()
    return remaining is not None and remaining <= DEADLINE_SKEW_SECONDS


def _call_ended(context: grpc.aio.ServicerContext) -> LlmServeError:
    """Why a write failed: the call had already ended (deadline passed, or the client left)."""
    if _deadline_passed(context):
        return DeadlineExceededError()
    return ClientGoneError("the client cancelled the call")


def rpc(method: Callable[..., Awaitable]):
    """Wraps an RPC: request id, the one exception → status mapping, metrics and access log."""
    name = method.__name__
    in_flight = metrics.IN_FLIGHT.labels(name)
    request_size = metrics.REQUEST_SIZE.labels(name)
    response_size = metrics.RESPONSE_SIZE.labels(name)

    @functools.wraps(method)
    async def handler(self: "LlmServicer", request, context: grpc.aio.ServicerContext):
        start = time.monotonic()
        given_id = _given_request_id(request, context)
        call = CallRecord(method=name, request_id=request_id_or_new(given_id), start=start)
        request_id_var.set(call.request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, call.request_id),))
        request_size.observe(request.ByteSize())
        in_flight.inc()
        try:
            check_request_id(given_id)
            response = await method(self, request, context, call)
            if response is not None:
                response_size.observe(response.ByteSize())
            return response
        except asyncio.CancelledError:
            call.code = (grpc.StatusCode.DEADLINE_EXCEEDED if _deadline_passed(context)
                         else grpc.StatusCode.CANCELLED)
            raise
        except Exception as exc:
            call.code, message = status_for(exc, call.request_id)
            await context.abort(call.code, message)
        finally:
            elapsed = time.monotonic() - start
            in_flight.dec()
            metrics.record_call(name, call.code.name, elapsed)
            access_logger.info(
                "%s %s %.1fms prompt_tokens=%d completion_tokens=%d", name, call.code.name,
                elapsed * 1000, call.prompt_tokens, call.completion_tokens,
                extra={"rpc": name, "code": call.code.name,
                       "duration_ms": round(elapsed * 1000, 3),
                       "prompt_tokens": call.prompt_tokens,
                       "completion_tokens": call.completion_tokens},
            )

    return handler


class LlmServicer(pb_grpc.LlmServiceServicer):
    def __init__(self, state: ServerState, extensions: tuple[str, ...] = ()):
        self._state = state
        self._extensions = extensions

    # Generation.

    @rpc
    async def Generate(self, request, context, call):
        generation = self._state.prepare(request, call.request_id, call.start, stream=False)
        call.prompt_tokens = generation.builder.prompt_tokens
        builder = generation.builder

        async def collect(output: GenerationOutput) -> None:
            builder.collect(output)

        try:
            time_limited = await generation.run(context.time_remaining(), collect)
        finally:
            call.completion_tokens = builder.completion_tokens
        return builder.unary_response(time_limited)

    @rpc
    async def StreamGenerate(self, request, context, call):
        generation = self._state.prepare(request, call.request_id, call.start, stream=True)
        call.prompt_tokens = generation.builder.prompt_tokens
        builder = generation.builder
        messages = 0

        async def write(output: GenerationOutput) -> None:
            nonlocal messages
            try:
                await context.write(builder.stream_message(output))
            except grpc.aio.InternalError as exc:
                # A write blocked by a client that stopped reading fails (instead of being
                # cancelled) once the deadline passes or the client cancels.
                logger.info("stream write failed, the call has ended: %s", exc)
                raise _call_ended(context) from None
            messages += 1

        try:
            if await generation.run(context.time_remaining(), write):
                await context.write(builder.stream_time_limit_message())
                messages += 1
        finally:
            call.completion_tokens = builder.completion_tokens
            # Once per stream: a shared counter per message costs a lock each time.
            metrics.STREAM_MESSAGES.inc(messages)

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
                                       max_model_len=self._state.limits.max_model_len)
        if request.return_tokens:
            response.tokens.extend(engine.token_strings(token_ids))
        return response

    @rpc
    async def Detokenize(self, request, context, call):
        engine = self._state.serving_engine()
        token_ids = check_token_ids(request.token_ids, "token_ids", self._state.limits.vocab_size)
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
        if not self._state.knows_model(request.name):
            raise InvalidArgumentError(
                "name", f"unknown model {request.name!r}; this server serves "
                f"{self._state.served_model_name!r}")
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
        return pb.ModelReadyResponse(ready=self._state.knows_model(request.name)
                                     and self._state.ready)


