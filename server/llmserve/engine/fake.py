"""A deterministic in-memory engine for tests and frontend benchmarks.

Its tokenizer maps each UTF-8 byte to one token (id = byte + 3; 0 pad, 1 BOS, 2 EOS). Completion
i of a request "generates" the bytes of `FakeEngine.text`, cycled and shifted by i, one token per
step, honouring max_tokens, min_tokens, stop strings, stop token ids and EOS.

With `merge_unread_outputs`, streams behave like vLLM's: the engine steps on its own and an output
the caller has not read yet absorbs the next one (vLLM's RequestOutputCollector in DELTA mode), so
a caller that falls behind reads several tokens at once.
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
    merge_deltas,
)
from llmserve.errors import EngineDeadError

BYTE_OFFSET = 3
BOS, EOS = 1, 2


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
        steps = self._steps(request)
        return _read_merged(steps) if self.merge_unread_outputs and request.stream else steps

    async def _steps(self, request: GenerationRequest) -> AsyncGenerator[GenerationOutput, None]:
        if self._dead:
            raise EngineDeadError()
        if self.failure is not None:
            raise self.failure
        self.requests.append(request)
        self.running.add(request.request_id)
        # Decoded at once, then handed out one step at a time: per token, a stream only yields
        # (nothing a frontend benchmark would count as the frontend's cost).
        steps = self._decode(request)
        # Each step waits token_delay. With none, a plain stream yields tokens instantly (its
        # reader's writes give other requests their turn); unary requests and merging streams
        # still let the event loop run between steps.
        pace = bool(self.token_delay) or not request.stream or self.merge_unread_outputs
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

    def _decode(self, request: GenerationRequest) -> list[GenerationOutput | None]:
        """Every step of the request: its output, or None when it sends nothing."""
        completions = [_FakeCompletion(i) for i in range(request.n)]
        unfinished = list(completions)
        # Like vLLM's stream_interval: the first token, then every `interval` tokens, the end.
        interval = request.stream_interval or 1
        prompt_logprobs = self._prompt_logprobs(request)
        steps: list[GenerationOutput | None] = []
        while unfinished:
            finished_one = False
            for c in unfinished:
                finished_one |= self._step(request, c)
            if finished_one:
                unfinished = [c for c in unfinished if c.finish_reason is None]
            due = [c for c in completions if c.is_due(interval)] if request.stream else None
            if not due:
                steps.append(None)
                continue
            finished = not unfinished
            steps.append(GenerationOutput(
                completions=[c.take_delta() for c in due],
                finished=finished, prompt_logprobs=prompt_logprobs,
                queued_seconds=0.0 if finished else None,
            ))
            prompt_logprobs = None
        if not request.stream:
            steps[-1] = GenerationOutput(
                completions=[c.whole() for c in completions], finished=True,
                prompt_logprobs=prompt_logprobs, queued_seconds=0.0,
            )
        return steps

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
    def __init__(self, index: int):
        self.index = index
        self.token_ids: list[int] = []
        self.text = ""
        self.logprobs: list[PositionLogprobs] = []
        self.finish_reason: FinishReason | None = None
        self.stop_reason: str | int | None = None
        self._sent_tokens = 0
        self._sent_text = 0

    def append(self, token: int, text: str, logprobs: int | None) -> None:
        self.token_ids.append(token)
        self.text += text
        if logprobs is not None:
            self.logprobs.append(_logprobs_for(token, logprobs))

    def finish(self, reason: FinishReason, stop_reason: str | int | None, text_cut: int) -> None:
        self.finish_reason, self.stop_reason = reason, stop_reason
        if text_cut:
            self.text = self.text[:-text_cut]

    def is_due(self, interval: int) -> bool:
        """Whether a stream sends this completion's news now."""
        unsent = len(self.token_ids) - self._sent_tokens
        return unsent > 0 and (self.finish_reason is not None or self._sent_tokens == 0
                               or unsent >= interval)

    def take_delta(self) -> CompletionDelta:
        sent = self._sent_tokens
        delta = CompletionDelta(self.index, self.text[self._sent_text:], self.token_ids[sent:],
                                self.logprobs[sent:] if self.logprobs else None,
                                self.finish_reason, self.stop_reason)
        self._sent_tokens, self._sent_text = len(self.token_ids), len(self.text)
        return delta

    def whole(self) -> CompletionDelta:
        return CompletionDelta(
            index=self.index, text=self.text, token_ids=self.token_ids,
            logprobs=self.logprobs or None, finish_reason=self.finish_reason,
            stop_reason=self.stop_reason,
        )


async def _read_merged(outputs: AsyncGenerator[GenerationOutput, None]
                       ) -> AsyncGenerator[GenerationOutput, None]:
    """Steps `outputs` in a task of its own; each read takes everything produced since the last."""
    unread: list[GenerationOutput] = []
    produced = asyncio.Event()

    async def produce() -> None:
        try:
            async for output in outputs:
                unread.append(output)
                produced.set()
        finally:
            produced.set()

    producer = asyncio.create_task(produce())
    try:
        while True:
            if not unread:
                if producer.done():
                    producer.result()  # the engine's error, if any
                    return
                produced.clear()
                await produced.wait()
                continue
            merged = _merge(unread)
            unread.clear()
            yield merged
            if merged.finished:
                return
    finally:
        producer.cancel()


def _merge(outputs: list[GenerationOutput]) -> GenerationOutput:
    if len(outputs) == 1:
        return outputs[0]
    deltas: dict[int, list[CompletionDelta]] = {}
    for output in outputs:
        for delta in output.completions:
            deltas.setdefault(delta.index, []).append(delta)
    last = outputs[-1]
    return GenerationOutput(
        completions=[merge_deltas(d) for d in deltas.values()],
        finished=last.finished,
        prompt_logprobs=outputs[0].prompt_logprobs,
        num_cached_tokens=last.num_cached_tokens,
        queued_seconds=last.queued_seconds,
    )
