"""Running generation requests, whatever the protocol (gRPC or HTTP) they came in by.

Readiness, admission control, validation and the engine loop with its deadline, time limit and
abort-on-exit live here once; the frontends only translate messages and map errors.
"""

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from llmserve import metrics
from llmserve.engine.protocol import Engine, GenerationOutput
from llmserve.errors import (
    AdmissionRejectedError,
    DeadlineExceededError,
    EngineDeadError,
    UnavailableError,
)
from llmserve.responses import ResponseBuilder
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.validation import PreparedRequest, RequestLimits, prepare_request

OutputHandler = Callable[[GenerationOutput], Awaitable[None]]


class ServerState:
    """What readiness depends on: an engine that can generate and a server that is not draining."""

    def __init__(self, served_model_name: str, max_queued_requests: int | None = None) -> None:
        self.served_model_name = served_model_name
        self.max_queued_requests = max_queued_requests
        self.engine: Engine | None = None
        # Known once the engine has loaded, before `engine` is set.
        self.limits: RequestLimits | None = None
        self.draining = False
        # Generation requests admitted and not finished (running or waiting in the engine).
        self.active_requests = 0
        self.running: set[Generation] = set()
        self._sequence = itertools.count()

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

    def knows_model(self, name: str) -> bool:
        return name in ("", self.served_model_name)

    def cut_off(self) -> None:
        """Ends every running generation with UNAVAILABLE: the drain period is over."""
        for generation in list(self.running):
            generation.cut_off()

    def prepare(self, request: pb.GenerateRequest, request_id: str, arrived_at: float,
                stream: bool) -> "Generation":
        """Validates a request and builds its generation (not yet admitted).

        `arrived_at` is the call's arrival (`time.monotonic()`): the response timings start there.
        """
        engine = self.serving_engine()
        # Engine ids stay unique even when clients reuse a request id.
        engine_request_id = f"{request_id}-{next(self._sequence)}"
        prepared = prepare_request(request, engine_request_id, engine, self.limits, stream)
        return Generation(self, engine, prepared, request_id, arrived_at)


class Generation:
    """One validated request: run it once, read its responses from `builder`."""

    def __init__(self, state: ServerState, engine: Engine, prepared: PreparedRequest,
                 request_id: str, arrived_at: float):
        self.state = state
        self.engine = engine
        self.prepared = prepared
        generation = prepared.generation
        self.builder = ResponseBuilder(request_id, len(generation.prompt_token_ids),
                                       generation.n, prepared.echo_text, arrived_at)
        # The task running the request, and the timer that stops it at its deadline or time
        # limit. Stopping cancels the task while it waits for the engine; during `on_output` it
        # waits for the handler to return (a gRPC write cut short leaves its send pending, and
        # the next write, the TIME_LIMIT message, failed with TOO_MANY_OPERATIONS).
        self._task: asyncio.Task | None = None
        self._stop_timer: asyncio.TimerHandle | None = None
        self._in_handler = False
        self._stopped = False
        self._cut_off = False

    def cut_off(self) -> None:
        """Stops the request at once with UNAVAILABLE (the server is stopping)."""
        self._cut_off = True
        self._stop()

    def _stop(self) -> None:
        if self._stopped or self._task is None:
            return
        self._stopped = True
        if not self._in_handler:
            self._task.cancel()

    async def run(self, timeout: float | None, on_output: OutputHandler) -> bool:
        """Runs the request in the engine, handing each output to `on_output`.

        `timeout` is the caller's deadline in seconds from now. Returns True when
        `time_limit_ms` stopped the request. Admission is checked first; the engine request is
        aborted whenever it ends early: deadline, time limit, cancellation or any error.
        """
        state = self.state
        limit = state.max_queued_requests
        if limit is not None and state.active_requests >= limit:
            metrics.ADMISSION_REJECTIONS.inc()
            raise AdmissionRejectedError(limit)
        state.active_requests += 1
        state.running.add(self)
        try:
            return await self._run(timeout, on_output)
        finally:
            state.running.discard(self)
            state.active_requests -= 1

    async def _run(self, timeout: float | None, on_output: OutputHandler) -> bool:
        generation = self.prepared.generation
        loop = asyncio.get_running_loop()
        now = loop.time()
        deadline = now + timeout if timeout is not None else None
        time_limit = self.prepared.time_limit
        time_limit_at = now + time_limit if time_limit is not None else None
        stop_at = min((t for t in (deadline, time_limit_at) if t is not None), default=None)
        self._task = task = asyncio.current_task()
        cancelling = task.cancelling()
        if stop_at is not None:
            self._stop_timer = loop.call_at(stop_at, self._stop)

        outputs = self.engine.generate(generation)
        finished = False
        try:
            try:
                async for output in outputs:
                    finished = output.finished
                    self._in_handler = True
                    await on_output(output)
                    self._in_handler = False
                    if self._stopped and not finished:
                        break
            except asyncio.CancelledError:
                # Ours (the timer or cut-off), or the call's own cancellation: re-raised.
                if not self._stopped or task.uncancel() > cancelling:
                    raise
            if not self._stopped or finished:
                return False
            if self._cut_off:
                raise UnavailableError("the server is shutting down: the request did not finish "
                                       "within the drain period")
            if time_limit_at is not None and (deadline is None or time_limit_at <= deadline):
                return True
            raise DeadlineExceededError()
        finally:
            self._task = None  # stopping is over: an abort below is never cancelled
            if self._stop_timer is not None:
                self._stop_timer.cancel()
            if not finished:
                await self.engine.abort(generation.request_id)
            await outputs.aclose()
