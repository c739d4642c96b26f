"""Engine outputs → GenerateResponse messages, for streams (one per delta) and unary calls."""

import time
from collections.abc import Iterable

from llmserve.engine.protocol import (
    CompletionDelta,
    FinishReason,
    GenerationOutput,
    PositionLogprobs,
    TokenLogprob,
    merge_deltas,
)
from llmserve.v1 import llmserve_pb2 as pb

FINISH_REASONS = {
    None: pb.FINISH_REASON_UNSPECIFIED,
    FinishReason.STOP: pb.FINISH_REASON_STOP,
    FinishReason.LENGTH: pb.FINISH_REASON_LENGTH,
    FinishReason.EOS: pb.FINISH_REASON_EOS,
    FinishReason.STOP_SEQUENCE: pb.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.TIME_LIMIT: pb.FINISH_REASON_TIME_LIMIT,
    FinishReason.ABORTED: pb.FINISH_REASON_ABORTED,
    FinishReason.ERROR: pb.FINISH_REASON_ERROR,
}


def _token_logprob(entry: TokenLogprob) -> pb.TokenLogprob:
    return pb.TokenLogprob(
        token_id=entry.token_id, token=entry.token, logprob=entry.logprob, rank=entry.rank
    )


def _position_logprobs(position: PositionLogprobs | None) -> pb.PositionLogprobs:
    if position is None:  # the first prompt token has no logprob
        return pb.PositionLogprobs()
    return pb.PositionLogprobs(
        chosen=_token_logprob(position.chosen), top=[_token_logprob(t) for t in position.top]
    )


def _add_completion(response: pb.GenerateResponse, delta: CompletionDelta, text: str) -> None:
    completion = response.completions.add(
        index=delta.index,
        text=text,
        token_ids=delta.token_ids,
        finish_reason=FINISH_REASONS[delta.finish_reason],
    )
    if delta.logprobs:
        completion.logprobs.extend(_position_logprobs(p) for p in delta.logprobs)
    if delta.stop_reason is not None:
        completion.stop_reason = str(delta.stop_reason)


class ResponseBuilder:
    """Tracks one request's progress: token counts, timings, echo, and unfinished completions."""

    def __init__(self, request_id: str, prompt_tokens: int, n: int, echo_text: str | None,
                 started_at: float):
        self.request_id = request_id
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.cached_prompt_tokens = 0
        self.queued_seconds = 0.0
        # The call's arrival (time.monotonic()): validation and tokenization count too.
        self._start = started_at
        self._first_token_at: float | None = None
        self._echo_text = echo_text
        self._echoed: set[int] = set()
        self._unfinished = set(range(n))
        # Unary calls: per completion index, its deltas so far.
        self._collected: dict[int, list[CompletionDelta]] = {}
        self._prompt_logprobs: list[PositionLogprobs | None] | None = None

    def _observe(self, output: GenerationOutput) -> None:
        new_tokens = 0
        for delta in output.completions:
            new_tokens += len(delta.token_ids)
            if delta.finish_reason is not None:
                self._unfinished.discard(delta.index)
        if new_tokens and self._first_token_at is None:
            self._first_token_at = time.monotonic()
        self.completion_tokens += new_tokens
        if output.num_cached_tokens > self.cached_prompt_tokens:
            self.cached_prompt_tokens = output.num_cached_tokens
        if output.queued_seconds is not None:
            self.queued_seconds = output.queued_seconds

    def _text_with_echo(self, delta: CompletionDelta) -> str:
        """The prompt before the first text of each completion, when echo was asked for."""
        if self._echo_text is None or delta.index in self._echoed:
            return delta.text
        self._echoed.add(delta.index)
        return self._echo_text + delta.text

    def _add_completions(self, response: pb.GenerateResponse,
                         deltas: Iterable[CompletionDelta]) -> None:
        for delta in deltas:
            _add_completion(response, delta, self._text_with_echo(delta))

    def _finish(self, response: pb.GenerateResponse) -> pb.GenerateResponse:
        now = time.monotonic()
        first_token_at = self._first_token_at if self._first_token_at is not None else now
        response.finished = True
        response.usage.prompt_tokens = self.prompt_tokens
        response.usage.completion_tokens = self.completion_tokens
        response.usage.cached_prompt_tokens = self.cached_prompt_tokens
        response.timings.queued_ms = self.queued_seconds * 1000
        response.timings.time_to_first_token_ms = (first_token_at - self._start) * 1000
        response.timings.total_ms = (now - self._start) * 1000
        return response

    # Streams.

    def stream_message(self, output: GenerationOutput) -> pb.GenerateResponse:
        self._observe(output)
        # Completions are added in place: a Completion built apart is copied into its parent.
        response = pb.GenerateResponse(request_id=self.request_id)
        self._add_completions(response, output.completions)
        if output.prompt_logprobs is not None:
            response.prompt_logprobs.extend(_position_logprobs(p) for p in output.prompt_logprobs)
        return self._finish(response) if output.finished else response

    def stream_time_limit_message(self) -> pb.GenerateResponse:
        """The final message of a stream stopped by time_limit_ms."""
        response = pb.GenerateResponse(
            request_id=self.request_id,
            completions=[
                pb.Completion(index=i, finish_reason=pb.FINISH_REASON_TIME_LIMIT)
                for i in sorted(self._unfinished)
            ],
        )
        return self._finish(response)

    # Unary calls.

    def collect(self, output: GenerationOutput) -> None:
        self._observe(output)
        if output.prompt_logprobs is not None:
            self._prompt_logprobs = output.prompt_logprobs
        for delta in output.completions:
            self._collected.setdefault(delta.index, []).append(delta)

    def unary_response(self, time_limited: bool = False) -> pb.GenerateResponse:
        completions = {index: merge_deltas(deltas) for index, deltas in self._collected.items()}
        if time_limited:
            for index in self._unfinished:
                completions.setdefault(index, CompletionDelta(index=index, text="", token_ids=[])
                                       ).finish_reason = FinishReason.TIME_LIMIT
        response = pb.GenerateResponse(request_id=self.request_id)
        self._add_completions(response, (c for _, c in sorted(completions.items())))
        if self._prompt_logprobs is not None:
            response.prompt_logprobs.extend(_position_logprobs(p) for p in self._prompt_logprobs)
        return self._finish(response)
