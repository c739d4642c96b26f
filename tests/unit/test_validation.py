"""Each validation rule: the field it names and the rule it states."""

import pytest

from llmserve.engine.fake import FakeEngine
from llmserve.errors import InvalidArgumentError
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.validation import RequestLimits, prepare_request

LIMITS = RequestLimits(served_model_name="m", max_model_len=32, vocab_size=259,
                       default_max_tokens=16, max_n=4, max_logprobs=5)


def prepare(**fields):
    return prepare_request(pb.GenerateRequest(**fields), "rid", FakeEngine(), LIMITS, True)


def rejection(**fields) -> str:
    with pytest.raises(InvalidArgumentError) as excinfo:
        prepare(**fields)
    return str(excinfo.value)


@pytest.mark.parametrize(("fields", "message"), [
    ({"text": "a", "messages": [pb.ChatMessage(role="user", content="x")]},
     "input: give only one of text, token_ids or messages, not ['text', 'messages']"),
    ({"messages": [pb.ChatMessage(content="x")]}, "messages[0].role: must not be empty"),
    ({"text": "a", "temperature": float("nan")}, "temperature: must be a finite number"),
    ({"text": "a", "top_p": 1.5}, "top_p: must be in (0, 1]"),
    ({"text": "a", "top_k": -2}, "top_k: must be >= 1, or 0 / -1 to disable"),
    ({"text": "a", "min_p": 2}, "min_p: must be in [0, 1]"),
    ({"text": "a", "seed": 2**63}, f"seed: must be <= {2**63 - 1}"),
    ({"text": "a", "repetition_penalty": 0}, "repetition_penalty: must be > 0 (1.0 disables)"),
    ({"text": "a", "presence_penalty": 3}, "presence_penalty: must be in [-2, 2]"),
    ({"text": "a", "frequency_penalty": -3}, "frequency_penalty: must be in [-2, 2]"),
    ({"text": "a", "n": 5}, "n: must be in [1, 4]"),
    ({"text": "a", "stop": ["", "x"]}, "stop[0]: must not be empty"),
    ({"text": "a", "stop_token_ids": [300]},
     "stop_token_ids: token id 300 is outside the vocabulary (size 259)"),
    ({"text": "a", "logprobs": 6}, "logprobs: must be <= 5"),
    ({"text": "a", "prompt_logprobs": 6}, "prompt_logprobs: must be <= 5"),
    ({"text": "a", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens: must be >= 1"),
    ({"text": "a", "stream_interval": 0}, "stream_interval: must be in [1, 4096]"),
    ({"text": "a", "max_tokens": 31},
     "max_tokens: prompt (2 tokens) + max_tokens (31) exceeds the model's context length "
     "(32 tokens)"),
    ({"text": "x" * 31},
     "input: the prompt has 32 tokens, which leaves no room to generate in the model's "
     "context length of 32 tokens"),
    ({"text": "a", "max_tokens": 4, "min_tokens": 5}, "min_tokens: must not exceed max_tokens (4)"),
])
def test_rule(fields, message):
    assert rejection(**fields) == message


def test_unset_max_tokens_is_capped_by_the_context_left():
    assert prepare(text="a").generation.max_tokens == 16
    assert prepare(text="x" * 25).generation.max_tokens == 32 - 26


def test_truncation_keeps_the_last_tokens_before_the_length_check():
    generation = prepare(text="x" * 40 + "yz", truncate_prompt_tokens=3).generation
    assert generation.prompt_token_ids == [ord(c) + 3 for c in "xyz"]


def test_token_ids_input_and_echo_text():
    prepared = prepare(token_ids=[ord("h") + 3, ord("i") + 3], echo=True)
    assert prepared.generation.prompt_token_ids == [107, 108]
    assert prepared.echo_text == "hi"
    assert prepare(text="hi").echo_text is None


def test_time_limit_turns_unary_requests_into_streams():
    prepared = prepare_request(pb.GenerateRequest(text="a", time_limit_ms=250), "rid",
                               FakeEngine(), LIMITS, stream=False)
    assert prepared.time_limit == 0.25
    assert prepared.generation.stream
