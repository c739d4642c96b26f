"""The small interface between the gRPC layer and an inference engine.

`VllmEngine` implements it over vLLM's AsyncLLM; `FakeEngine` implements it for tests. The types
here are plain dataclasses so that nothing outside the engine adapter depends on vLLM.
"""

import enum
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol


class FinishReason(enum.Enum):
    STOP = "stop"  # a stop token id
    LENGTH = "length"
    EOS = "eos"
    STOP_SEQUENCE = "stop_sequence"
    TIME_LIMIT = "time_limit"
    ABORTED = "aborted"
    ERROR = "error"


@dataclass(slots=True)
class GenerationRequest:
    """A validated request: the prompt is already tokenized and every limit checked."""

    request_id: str
    prompt_token_ids: list[int]
    max_tokens: int
    # Deltas as tokens arrive (True) or one final output (False).
    stream: bool = True
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_tokens: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    skip_special_tokens: bool = True
    # Streams: tokens per output at most (None: the engine's default).
    stream_interval: int | None = None


@dataclass(slots=True)
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    rank: int


@dataclass(slots=True)
class PositionLogprobs:
    chosen: TokenLogprob
    top: list[TokenLogprob]


@dataclass(slots=True)
class CompletionDelta:
    """New output of one of a request's n completions (the whole output when not streaming)."""

    index: int
    text: str
    token_ids: Sequence[int]
    logprobs: list[PositionLogprobs] | None = None
    finish_reason: FinishReason | None = None
    # The stop string or stop token id that ended the completion.
    stop_reason: str | int | None = None


def merge_deltas(deltas: Sequence[CompletionDelta]) -> CompletionDelta:
    """Consecutive deltas of one completion as one; the finish and stop reasons are the last's
    (only a completion's last delta has them)."""
    last = deltas[-1]
    logprobs = [p for d in deltas for p in d.logprobs or ()]
    return CompletionDelta(
        index=last.index,
        text="".join(d.text for d in deltas),
        token_ids=[t for d in deltas for t in d.token_ids],
        logprobs=logprobs or None,
        finish_reason=last.finish_reason,
        stop_reason=last.stop_reason,
    )


@dataclass(slots=True)
class GenerationOutput:
    completions: list[CompletionDelta]
    finished: bool
    # First output only, when asked; None for the first prompt position.
    prompt_logprobs: list[PositionLogprobs | None] | None = None
    num_cached_tokens: int = 0
    # Seconds the request waited in the engine's queue; known once it was scheduled.
    queued_seconds: float | None = None


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    path: str
    engine: str
    engine_version: str
    max_model_len: int
    dtype: str
    vocab_size: int
    architecture: str
    eos_token_id: int | None
    has_chat_template: bool
    tensor_parallel_size: int


@dataclass(frozen=True, slots=True)
class ChatTurn:
    role: str
    content: str


class Engine(Protocol):
    """What the server needs from an inference engine. Errors are `llmserve.errors` types."""

    model_info: ModelInfo

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationOutput]:
        """Runs a request; yields deltas (or one final output) until an output is finished."""
        ...

    async def abort(self, request_id: str) -> None:
        """Stops a running request and frees its KV cache blocks. Unknown ids are ignored."""
        ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def detokenize(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def token_strings(self, token_ids: Sequence[int]) -> list[str]: ...

    def render_chat(self, messages: Sequence[ChatTurn], add_generation_prompt: bool) -> str:
        """Renders chat turns to a prompt with the model's chat template."""
        ...

    async def check_health(self) -> None:
        """Raises `EngineDeadError` when the engine can no longer generate."""
        ...

    @property
    def is_dead(self) -> bool: ...

    def shutdown(self) -> None:
        """Stops the engine and its worker processes; idempotent."""
        ...
