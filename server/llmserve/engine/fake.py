"""A deterministic in-memory engine for tests and frontend benchmarks.

Its tokenizer maps each UTF-8 byte to one token (id = byte + 3; 0 pad, 1 BOS, 2 EOS). Completion
i of a request "generates" the bytes of `FakeEngine.text`, cycled and shifted by i, one token per
step, honouring max_tokens, min_tokens, stop strings, stop token ids and EOS.

With `merge_unread_outputs`, streams behave like vLLM's: one engine loop steps every such stream at
once (a batch step: one token each) and an output the caller has not read yet absorbs the next one
(vLLM's RequestOutputCollector in DELTA mode), so a caller that falls behind reads several tokens
at once.
"""

import asyncio
from collections.abc import AsyncGenerator, Sequence

from llmserve.engine.protocol import (
    ChatTurn,
    CompletionDelta,
    FinishReason,
    GenerationOutput,
    GenerationRequest,
    ModelInfo,
    PositionLogprobs,
    TokenLogprob,
)
from llmserve.errors import EngineDeadError

BYTE_OFFSET = 3
BOS, EOS = 1, 2
# Streams' outputs kept for requests alike (`FakeEngine._stream_steps`), at most this many kinds.
STREAM_STEPS_KEPT = 64


class FakeEngine:
    def __init__(
        self,
        *,
        text: str = "The quick brown fox jumps over the lazy dog. ",
        max_model_len: int = 512,
        token_delay: float = 0.0,
        eos_after: int | None = None,
        name: str = "fake",
        merge_unread_outputs: bool = False,
    ):
        self.text = text.encode()
        self.token_delay = token_delay
        # Emit EOS after this many tokens (unless ignore_eos); None: never.
        self.eos_after = eos_after
        self.merge_unread_outputs = merge_unread_outputs
        self.model_info = ModelInfo(
            name=name, path="/dev/null", engine="fake", engine_version="0",
            max_model_len=max_model_len, dtype="float32", vocab_size=256 + BYTE_OFFSET,
            architecture="FakeForCausalLM", eos_token_id=EOS, has_chat_template=True,
            tensor_parallel_size=1,
        )
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        # Set to make every generate() fail (e.g. an error the server must map to a status).
        self.failure: BaseException | None = None
        self._dead = False
        # Streams merging unread outputs, and the loop stepping them (while there are any).
        self._stepped: set[_Progress] = set()
        self._stepper: asyncio.Task | None = None
        # Streams' outputs by what decides them, shared by requests alike (read-only).
        self._stream_steps_kept: dict[tuple, list[GenerationOutput | None]] = {}
        # Each token's own text, decoded once.
        self._token_texts = [self.detokenize([t]) for t in range(self.model_info.vocab_size)]

    # Tokenizer.

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = [b + BYTE_OFFSET for b in text.encode()]
        return [BOS, *ids] if add_special_tokens else ids

    def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(t - BYTE_OFFSET for t in token_ids if t >= BYTE_OFFSET).decode(
            errors="replace")

    def token_strings(self, token_ids: Sequence[int]) -> list[str]:
        return [self.detokenize([t]) if t >= BYTE_OFFSET else f"<{t}>" for t in token_ids]

    def render_chat(self, messages: Sequence[ChatTurn], add_generation_prompt: bool) -> str:
        rendered = "".join(f"<|{m.role}|>{m.content}\n" for m in messages)
        return rendered + ("<|assistant|>" if add_generation_prompt else "")

    # Generation.

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        if self.merge_unread_outputs and request.stream:
            return self._read_stepped(request)
        return self._steps(request)

    def _start(self, request: GenerationRequest) -> None:
        if self._dead:
            raise EngineDeadError()
        if self.failure is not None:
            raise self.failure
        self.requests.append(request)
        self.running.add(request.request_id)

    def _admit(self, request: GenerationRequest) -> "_Progress":
        """Starts the request, generating its completions whole at once: per token, a stream
        then only hands out a step (nothing a frontend benchmark would count as its cost)."""
        self._start(request)
        # Like vLLM, streams hold back text that may be the start of a stop string.
        held_back = (max(map(len, request.stop)) - 1
                     if request.stop and not request.include_stop_str_in_output else 0)
        completions = [_FakeCompletion(i, held_back) for i in range(request.n)]
        unfinished = completions
        while unfinished:
            unfinished = [c for c in unfinished if not self._step(request, c)]
        return _Progress(completions, request.stream_interval or 1,
                         self._prompt_logprobs(request))

    def _stream_steps(self, request: GenerationRequest) -> list[GenerationOutput | None]:
        """A stream's output after each step. Without prompt logprobs they depend on the
        engine's text and the request's limits, not on its prompt: requests alike share one
        list, so that a frontend benchmark counts next to nothing of this engine's work."""
        if request.prompt_logprobs is not None:
            return self._admit(request).every_step()
        key = (self.text, self.eos_after, request.n, request.min_tokens, request.max_tokens,
               request.ignore_eos, tuple(request.stop), tuple(request.stop_token_ids),
               request.include_stop_str_in_output, request.logprobs, request.stream_interval)
        steps = self._stream_steps_kept.get(key)
        if steps is not None:
            self._start(request)
            return steps
        steps = self._admit(request).every_step()
        if len(self._stream_steps_kept) >= STREAM_STEPS_KEPT:
            self._stream_steps_kept.clear()
        self._stream_steps_kept[key] = steps
        return steps

    async def _steps(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        steps = (self._stream_steps(request) if request.stream
                 else self._admit(request).last_step())
        # Each step waits token_delay. With none, a stream yields tokens instantly (its reader's
        # writes give other requests their turn); unary requests still let the event loop run
        # between steps.
        pace = bool(self.token_delay) or not request.stream
        try:
            for output in steps:
                if pace:
                    await asyncio.sleep(self.token_delay)
                if self._dead:
                    raise EngineDeadError()
                if output is not None:
                    yield output
        finally:
            self.running.discard(request.request_id)

    async def _read_stepped(self, request: GenerationRequest
                            ) -> AsyncGenerator[GenerationOutput, None]:
        """A stream the engine loop steps; each read takes everything produced since the last."""
        progress = self._admit(request)
        try:
            self._stepped.add(progress)
            if self._stepper is None:
                self._stepper = asyncio.create_task(self._step_streams())
            while True:
                if self._dead:
                    raise EngineDeadError()
                output = await progress.read()
                yield output
                if output.finished:
                    return
        finally:
            self._stepped.discard(progress)
            self.running.discard(request.request_id)

    async def _step_streams(self) -> None:
        """The engine loop: each step, every stepped stream gets one more token."""
        try:
            while self._stepped:
                await asyncio.sleep(self.token_delay)
                if self._dead:
                    for progress in self._stepped:
                        progress.fail(EngineDeadError())
                    return
                for progress in list(self._stepped):
                    progress.advance()
                    if progress.done:
                        self._stepped.discard(progress)
        finally:
            self._stepper = None

    def _step(self, request: GenerationRequest, c: "_FakeCompletion") -> bool:
        """Appends completion `c`'s next token; returns whether that finished it."""
        position = len(c.token_ids)
        token = self.text[(position + c.index) % len(self.text)] + BYTE_OFFSET
        can_stop = position >= request.min_tokens
        if (can_stop and not request.ignore_eos and self.eos_after is not None
                and position >= self.eos_after):
            token = EOS
        c.append(token, self._token_texts[token], request.logprobs)
        if can_stop and token == EOS:
            c.finish(FinishReason.EOS, None, text_cut=0)
        elif can_stop and token in request.stop_token_ids:
            c.finish(FinishReason.STOP, token, text_cut=1)
        elif can_stop and request.stop and (
                stop := next((s for s in request.stop if s in c.text), None)):
            cut = 0 if request.include_stop_str_in_output else len(stop)
            c.finish(FinishReason.STOP_SEQUENCE, stop, text_cut=cut)
        elif len(c.token_ids) >= request.max_tokens:
            c.finish(FinishReason.LENGTH, None, text_cut=0)
        return c.finish_reason is not None

    def _prompt_logprobs(self, request: GenerationRequest) -> list[PositionLogprobs | None] | None:
        if request.prompt_logprobs is None:
            return None
        return [None] + [_logprobs_for(t, request.prompt_logprobs)
                         for t in request.prompt_token_ids[1:]]

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)
        self.running.discard(request_id)

    # Lifecycle.

    async def check_health(self) -> None:
        if self._dead:
            raise EngineDeadError()

    @property
    def is_dead(self) -> bool:
        return self._dead

    def kill(self) -> None:
        """Simulates the engine dying: every request fails with EngineDeadError from now on."""
        self._dead = True

    def shutdown(self) -> None:
        self._dead = True


def _logprobs_for(token_id: int, top: int) -> PositionLogprobs:
    chosen = TokenLogprob(token_id=token_id, token=chr(max(token_id - BYTE_OFFSET, 32)),
                          logprob=-0.5, rank=1)
    return PositionLogprobs(chosen=chosen, top=[chosen][:top])


class _FakeCompletion:
    """One completion, generated whole before a stream hands it out."""

    def __init__(self, index: int, held_back: int):
        self.index = index
        self._held_back = held_back
        self.token_ids: list[int] = []
        # The text without a stop string's cut, and how much of it a stream has after each token
        # (all of it, with the cut, after the last).
        self.text = ""
        self.text_ends: list[int] = []
        self.logprobs: list[PositionLogprobs] = []
        self.finish_reason: FinishReason | None = None
        self.stop_reason: str | int | None = None

    def append(self, token: int, text: str, logprobs: int | None) -> None:
        self.token_ids.append(token)
        self.text += text
        self.text_ends.append(max(len(self.text) - self._held_back, 0))
        if logprobs is not None:
            self.logprobs.append(_logprobs_for(token, logprobs))

    def finish(self, reason: FinishReason, stop_reason: str | int | None, text_cut: int) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        self.text_ends[-1] = len(self.text) - text_cut

    def streamed(self, steps: int, interval: int) -> int:
        """How many tokens a stream has after `steps` engine steps: like vLLM's stream_interval,
        the first token, then every `interval` tokens, and the last."""
        length = len(self.token_ids)
        if steps >= length:
            return length
        return 1 + (steps - 1) // interval * interval if steps else 0

    def delta(self, start: int, end: int) -> CompletionDelta:
        """Tokens start..end; the text they add (a stop string's cut can leave none)."""
        last = end == len(self.token_ids)
        text_start = self.text_ends[start - 1] if start else 0
        return CompletionDelta(
            self.index, self.text[text_start:self.text_ends[end - 1]], self.token_ids[start:end],
            self.logprobs[start:end] if self.logprobs else None,
            self.finish_reason if last else None, self.stop_reason if last else None,
        )

    def whole(self) -> CompletionDelta:
        return self.delta(0, len(self.token_ids))


class _Progress:
    """A request's whole completions, handed out as the engine steps through them; outputs not
    read yet absorb the next ones (vLLM's RequestOutputCollector in DELTA mode)."""

    def __init__(self, completions: list[_FakeCompletion], interval: int,
                 prompt_logprobs: list[PositionLogprobs | None] | None):
        self.completions = completions
        self._steps = max(len(c.token_ids) for c in completions)
        self._interval = interval
        self._prompt_logprobs = prompt_logprobs
        self._step = 0
        self._sent = [0] * len(completions)
        self._error: BaseException | None = None
        self._produced = asyncio.Event()

    @property
    def done(self) -> bool:
        return self._step == self._steps

    def advance(self) -> None:
        self._step += 1
        self._produced.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._produced.set()

    def take(self) -> GenerationOutput | None:
        """What the steps so far added to the stream since the last take (None: nothing)."""
        deltas = []
        finished = True
        for c in self.completions:
            sent, streamed = self._sent[c.index], c.streamed(self._step, self._interval)
            finished &= streamed == len(c.token_ids)
            if streamed > sent:
                deltas.append(c.delta(sent, streamed))
                self._sent[c.index] = streamed
        if not deltas:
            return None
        output = GenerationOutput(deltas, finished, self._prompt_logprobs,
                                  queued_seconds=0.0 if finished else None)
        self._prompt_logprobs = None
        return output

    async def read(self) -> GenerationOutput:
        """The next take, once the engine loop has produced something."""
        while (output := self.take()) is None:
            if self._error is not None:
                raise self._error
            self._produced.clear()
            await self._produced.wait()
        return output

    def every_step(self) -> list[GenerationOutput | None]:
        """A stream's output after each step (None: nothing new), all at once."""
        steps = []
        while not self.done:
            self.advance()
            steps.append(self.take())
        return steps

    def last_step(self) -> list[GenerationOutput | None]:
        """A unary request's steps: nothing until the whole output at the end."""
        whole = GenerationOutput([c.whole() for c in self.completions], finished=True,
                                 prompt_logprobs=self._prompt_logprobs, queued_seconds=0.0)
        return [None] * (self._steps - 1) + [whole]
