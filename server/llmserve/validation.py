"""GenerateRequest (proto) → GenerationRequest (engine), one error message per rule.

Everything a client can get wrong is checked here, before the engine sees the request; each
violation is an INVALID_ARGUMENT naming the field and the rule.
"""

import math
import uuid
from dataclasses import dataclass

from llmserve.engine.protocol import ChatTurn, Engine, GenerationRequest
from llmserve.errors import InvalidArgumentError
from llmserve.v1 import llmserve_pb2 as pb

MAX_SEED = 2**63 - 1
MAX_STOP_SEQUENCES = 32
MAX_STREAM_INTERVAL = 4096
# Request ids go back to the client in x-request-id metadata and headers: printable ASCII only.
MAX_REQUEST_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Server-wide defaults and bounds for generation requests."""

    served_model_name: str
    max_model_len: int
    vocab_size: int
    default_max_tokens: int = 256
    max_n: int = 16
    max_logprobs: int = 20


@dataclass(slots=True)
class PreparedRequest:
    generation: GenerationRequest
    # The prompt as text, for `echo` (None when not asked for).
    echo_text: str | None
    # Seconds after which generation stops with TIME_LIMIT (None: no limit).
    time_limit: float | None


def _require(condition: bool, field: str, rule: str) -> None:
    if not condition:
        raise InvalidArgumentError(field, rule)


def _optional(request: pb.GenerateRequest, field: str, default):
    return getattr(request, field) if request.HasField(field) else default


def chat_turns(messages) -> list[ChatTurn]:
    for i, message in enumerate(messages):
        _require(bool(message.role), f"messages[{i}].role", "must not be empty")
    return [ChatTurn(role=m.role, content=m.content) for m in messages]


def valid_request_id(request_id: str) -> bool:
    return (len(request_id) <= MAX_REQUEST_ID_LENGTH and request_id.isascii()
            and request_id.isprintable())


def request_id_or_new(given: str) -> str:
    """The client's request id when it can be echoed back, else a new one (a bad one is refused
    by `check_request_id` later, under the new id)."""
    return given if given and valid_request_id(given) else uuid.uuid4().hex


def check_request_id(request_id: str) -> str:
    _require(valid_request_id(request_id), "request_id",
             f"at most {MAX_REQUEST_ID_LENGTH} printable ASCII characters")
    return request_id


def check_token_ids(token_ids, field: str, vocab_size: int) -> list[int]:
    for token_id in token_ids:
        _require(
            token_id < vocab_size,
            field,
            f"token id {token_id} is outside the vocabulary (size {vocab_size})",
        )
    return list(token_ids)


def _prompt(request: pb.GenerateRequest, engine: Engine, limits: RequestLimits) -> tuple[
    list[int], str | None
]:
    """Returns the prompt's token ids and, when `echo` is set, its text."""
    given = [name for name in ("text", "token_ids", "messages") if getattr(request, name)]
    _require(bool(given), "input", "one of text, token_ids or messages is required")
    _require(len(given) == 1, "input", f"give only one of text, token_ids or messages, not {given}")
    if request.text:
        token_ids = engine.tokenize(request.text, add_special_tokens=True)
        return token_ids, request.text if request.echo else None
    if request.token_ids:
        token_ids = check_token_ids(request.token_ids, "token_ids", limits.vocab_size)
        return token_ids, engine.detokenize(token_ids, False) if request.echo else None
    add_generation_prompt = _optional(request, "add_generation_prompt", True)
    rendered = engine.render_chat(chat_turns(request.messages), add_generation_prompt)
    token_ids = engine.tokenize(rendered, add_special_tokens=False)
    return token_ids, rendered if request.echo else None


def _finite(value: float, field: str) -> float:
    _require(math.isfinite(value), field, "must be a finite number")
    return value


def prepare_request(
    request: pb.GenerateRequest,
    request_id: str,
    engine: Engine,
    limits: RequestLimits,
    stream: bool,
) -> PreparedRequest:
    """Validates `request` and builds the engine request; raises InvalidArgumentError."""
    _require(
        request.model in ("", limits.served_model_name),
        "model",
        f"unknown model {request.model!r}; this server serves {limits.served_model_name!r}",
    )

    temperature = _finite(_optional(request, "temperature", 1.0), "temperature")
    _require(temperature >= 0, "temperature", "must be >= 0 (0 is greedy decoding)")
    top_p = _finite(_optional(request, "top_p", 1.0), "top_p")
    _require(0 < top_p <= 1, "top_p", "must be in (0, 1]")
    top_k = _optional(request, "top_k", 0)
    _require(top_k >= -1, "top_k", "must be >= 1, or 0 / -1 to disable")
    min_p = _finite(_optional(request, "min_p", 0.0), "min_p")
    _require(0 <= min_p <= 1, "min_p", "must be in [0, 1]")
    seed = _optional(request, "seed", None)
    _require(seed is None or seed <= MAX_SEED, "seed", f"must be <= {MAX_SEED}")
    repetition_penalty = _finite(_optional(request, "repetition_penalty", 1.0),
                                 "repetition_penalty")
    _require(repetition_penalty > 0, "repetition_penalty", "must be > 0 (1.0 disables)")
    presence_penalty = _finite(_optional(request, "presence_penalty", 0.0), "presence_penalty")
    _require(-2 <= presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]")
    frequency_penalty = _finite(_optional(request, "frequency_penalty", 0.0), "frequency_penalty")
    _require(-2 <= frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]")
    n = _optional(request, "n", 1)
    _require(1 <= n <= limits.max_n, "n", f"must be in [1, {limits.max_n}]")

    for i, stop in enumerate(request.stop):
        _require(bool(stop), f"stop[{i}]", "must not be empty")
    _require(len(request.stop) <= MAX_STOP_SEQUENCES, "stop",
             f"at most {MAX_STOP_SEQUENCES} stop sequences")
    stop_token_ids = check_token_ids(request.stop_token_ids, "stop_token_ids", limits.vocab_size)
    logprobs = _optional(request, "logprobs", None)
    _require(logprobs is None or logprobs <= limits.max_logprobs, "logprobs",
             f"must be <= {limits.max_logprobs}")
    stream_interval = _optional(request, "stream_interval", None)
    _require(stream_interval is None or 1 <= stream_interval <= MAX_STREAM_INTERVAL,
             "stream_interval", f"must be in [1, {MAX_STREAM_INTERVAL}]")
    prompt_logprobs = _optional(request, "prompt_logprobs", None)
    _require(prompt_logprobs is None or prompt_logprobs <= limits.max_logprobs,
             "prompt_logprobs", f"must be <= {limits.max_logprobs}")

    token_ids, echo_text = _prompt(request, engine, limits)
    if request.HasField("truncate_prompt_tokens"):
        _require(request.truncate_prompt_tokens >= 1, "truncate_prompt_tokens", "must be >= 1")
        token_ids = token_ids[-request.truncate_prompt_tokens:]
    _require(bool(token_ids), "input", "the prompt is empty after tokenization")
    prompt_len, context = len(token_ids), limits.max_model_len
    room = context - prompt_len
    _require(room >= 1, "input",
             f"the prompt has {prompt_len} tokens, which leaves no room to generate in the "
             f"model's context length of {context} tokens")
    if request.HasField("max_tokens"):
        max_tokens = request.max_tokens
        _require(max_tokens >= 1, "max_tokens", "must be >= 1")
        _require(max_tokens <= room, "max_tokens",
                 f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) exceeds the model's "
                 f"context length ({context} tokens)")
    else:
        max_tokens = min(limits.default_max_tokens, room)
    _require(request.min_tokens <= max_tokens, "min_tokens",
             f"must not exceed max_tokens ({max_tokens})")

    generation = GenerationRequest(
        request_id=request_id,
        prompt_token_ids=token_ids,
        max_tokens=max_tokens,
        stream=stream or request.time_limit_ms > 0,
        n=n,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        repetition_penalty=repetition_penalty,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
        min_tokens=request.min_tokens,
        stop=list(request.stop),
        stop_token_ids=stop_token_ids,
        ignore_eos=request.ignore_eos,
        include_stop_str_in_output=request.include_stop_str_in_output,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
        skip_special_tokens=_optional(request, "skip_special_tokens", True),
        stream_interval=stream_interval,
    )
    time_limit = request.time_limit_ms / 1000 if request.time_limit_ms else None
    return PreparedRequest(generation=generation, echo_text=echo_text, time_limit=time_limit)
