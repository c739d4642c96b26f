"""The servicer through grpc_testing: translation, validation errors and status mapping."""

import time

import grpc
import pytest

from llmserve.engine.fake import FakeEngine
from llmserve.v1 import llmserve_pb2 as pb
from tests.unit.conftest import MODEL_NAME, ServicerHarness


def text_of(response, index=0):
    return next(c.text for c in response.completions if c.index == index)


def test_generate_returns_whole_completion_with_usage(harness):
    response, metadata, code, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="Hi", max_tokens=9))
    assert code is grpc.StatusCode.OK
    assert text_of(response) == "The quick"
    assert list(response.completions[0].token_ids) == [b + 3 for b in b"The quick"]
    assert response.completions[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert response.usage.prompt_tokens == 3  # BOS + 2 bytes
    assert response.usage.completion_tokens == 9
    assert response.finished
    assert response.timings.total_ms >= response.timings.time_to_first_token_ms >= 0
    assert dict(metadata)["x-request-id"] == response.request_id


@pytest.mark.parametrize("method", ["Generate", "StreamGenerate"])
def test_timings_start_when_the_call_arrives_so_tokenization_counts(harness, engine,
                                                                   monkeypatch, method):
    tokenize = engine.tokenize

    def slow_tokenize(*args, **kwargs):
        time.sleep(0.05)
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(engine, "tokenize", slow_tokenize)
    request = pb.GenerateRequest(text="Hi", max_tokens=2)
    if method == "Generate":
        response = harness.unary(method, request)[0]
    else:
        response = harness.stream(method, request)[0][-1]
    assert response.timings.time_to_first_token_ms >= 50
    assert response.timings.total_ms >= response.timings.time_to_first_token_ms


def test_generate_translates_every_parameter_to_the_engine(harness, engine):
    request = pb.GenerateRequest(
        text="Hi", max_tokens=5, temperature=0.5, top_p=0.9, top_k=40, min_p=0.1, seed=7,
        repetition_penalty=1.2, presence_penalty=0.5, frequency_penalty=-0.5, n=2,
        min_tokens=2, stop=["x"], stop_token_ids=[5], ignore_eos=True,
        include_stop_str_in_output=True, logprobs=3, prompt_logprobs=1,
        skip_special_tokens=False)
    _, _, code, _ = harness.unary("Generate", request)
    assert code is grpc.StatusCode.OK
    (sent,) = engine.requests
    assert (sent.temperature, sent.top_p, sent.top_k, sent.min_p, sent.seed) == pytest.approx(
        (0.5, 0.9, 40, 0.1, 7))
    assert (sent.repetition_penalty, sent.presence_penalty,
            sent.frequency_penalty) == pytest.approx((1.2, 0.5, -0.5))
    assert (sent.n, sent.max_tokens, sent.min_tokens) == (2, 5, 2)
    assert (sent.stop, sent.stop_token_ids) == (["x"], [5])
    assert sent.ignore_eos and sent.include_stop_str_in_output
    assert (sent.logprobs, sent.prompt_logprobs, sent.skip_special_tokens) == (3, 1, False)
    assert sent.prompt_token_ids == [1, ord("H") + 3, ord("i") + 3]
    assert not sent.stream  # unary calls ask the engine for the final output only


def test_stream_deltas_add_up_to_the_unary_text(harness, engine):
    responses, _, code, _ = harness.stream(
        "StreamGenerate", pb.GenerateRequest(text="Hi", max_tokens=12))
    assert code is grpc.StatusCode.OK
    assert engine.requests[0].stream
    assert len(responses) == 12
    assert "".join(text_of(r) for r in responses) == "The quick br"
    assert [r.finished for r in responses] == [False] * 11 + [True]
    final = responses[-1]
    assert final.completions[0].finish_reason == pb.FINISH_REASON_LENGTH
    assert final.usage.completion_tokens == 12
    assert not responses[0].HasField("usage")


def test_stream_interval_sends_several_tokens_per_message(harness, engine):
    responses, _, code, _ = harness.stream(
        "StreamGenerate", pb.GenerateRequest(text="Hi", max_tokens=10, stream_interval=4))
    assert code is grpc.StatusCode.OK
    assert engine.requests[0].stream_interval == 4
    assert [len(r.completions[0].token_ids) for r in responses] == [1, 4, 4, 1]
    assert "".join(text_of(r) for r in responses) == "The quick "


def test_default_max_tokens_applies_when_unset(harness):
    response, _, _, _ = harness.unary("Generate", pb.GenerateRequest(text="Hi"))
    assert response.usage.completion_tokens == 16


def test_n_completions_come_back_in_index_order(harness):
    response, _, _, _ = harness.unary("Generate", pb.GenerateRequest(text="a", n=3, max_tokens=3))
    assert [c.index for c in response.completions] == [0, 1, 2]
    assert [c.text for c in response.completions] == ["The", "he ", "e q"]
    assert response.usage.completion_tokens == 9


def test_stop_sequence_and_stop_token_finish_reasons(harness):
    response, _, _, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="a", max_tokens=20, stop=["q"]))
    completion = response.completions[0]
    assert (completion.text, completion.finish_reason, completion.stop_reason) == (
        "The ", pb.FINISH_REASON_STOP_SEQUENCE, "q")
    response, _, _, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="a", max_tokens=20, stop_token_ids=[ord("k") + 3]))
    completion = response.completions[0]
    assert completion.finish_reason == pb.FINISH_REASON_STOP
    assert completion.stop_reason == str(ord("k") + 3)


def test_eos_finish_reason():
    harness = ServicerHarness(FakeEngine(eos_after=4))
    response, _, _, _ = harness.unary("Generate", pb.GenerateRequest(text="a", max_tokens=20))
    assert response.completions[0].finish_reason == pb.FINISH_REASON_EOS
    assert response.completions[0].text == "The "


def test_echo_puts_the_prompt_in_front(harness):
    response, _, _, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="Say: ", max_tokens=3, echo=True))
    assert text_of(response) == "Say: The"
    responses, _, _, _ = harness.stream(
        "StreamGenerate", pb.GenerateRequest(text="Say: ", max_tokens=3, echo=True))
    assert [text_of(r) for r in responses] == ["Say: T", "h", "e"]


def test_chat_messages_are_rendered_with_the_chat_template(harness, engine):
    request = pb.GenerateRequest(
        messages=[pb.ChatMessage(role="user", content="Hello")], max_tokens=2)
    _, _, code, _ = harness.unary("Generate", request)
    assert code is grpc.StatusCode.OK
    assert engine.detokenize(engine.requests[0].prompt_token_ids) == (
        "<|user|>Hello\n<|assistant|>")


def test_logprobs_are_returned_per_token(harness):
    response, _, _, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="ab", max_tokens=3, logprobs=1, prompt_logprobs=1))
    completion = response.completions[0]
    assert [p.chosen.token_id for p in completion.logprobs] == list(completion.token_ids)
    assert len(response.prompt_logprobs) == 3
    assert not response.prompt_logprobs[0].HasField("chosen")


def test_time_limit_stops_with_time_limit_reason():
    harness = ServicerHarness(FakeEngine(token_delay=0.01))
    response, _, code, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="a", max_tokens=400, time_limit_ms=100))
    assert code is grpc.StatusCode.OK
    completion = response.completions[0]
    assert completion.finish_reason == pb.FINISH_REASON_TIME_LIMIT
    assert 0 < len(completion.token_ids) < 400
    assert harness.engine.aborted == [harness.engine.requests[0].request_id]


@pytest.mark.parametrize(("request_fields", "field"), [
    ({}, "input"),
    ({"text": "a", "token_ids": [5]}, "input"),
    ({"text": "a", "temperature": -1}, "temperature"),
    ({"text": "a", "top_p": 0}, "top_p"),
    ({"text": "a", "max_tokens": 0}, "max_tokens"),
    ({"text": "a", "n": 0}, "n"),
    ({"token_ids": [100000]}, "token_ids"),
    ({"text": "a", "model": "other"}, "model"),
])
def test_invalid_requests_never_reach_the_engine(harness, engine, request_fields, field):
    _, _, code, details = harness.unary("Generate", pb.GenerateRequest(**request_fields))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{field}: ")
    assert engine.requests == []


def test_unexpected_engine_error_is_internal_with_request_id(harness, engine):
    engine.failure = RuntimeError("boom")
    _, _, code, details = harness.unary(
        "Generate", pb.GenerateRequest(text="a", request_id="req-42"))
    assert code is grpc.StatusCode.INTERNAL
    assert details == "internal error (request_id=req-42)"
    assert "boom" not in details


def test_dead_engine_is_unavailable(harness, engine):
    engine.kill()
    _, _, code, _ = harness.stream("StreamGenerate", pb.GenerateRequest(text="a"))
    assert code is grpc.StatusCode.UNAVAILABLE
    response, _, _, _ = harness.unary("ServerReady", pb.ServerReadyRequest())
    assert not response.ready


def test_loading_and_draining_servers_are_unavailable(harness):
    harness.state.draining = True
    _, _, code, details = harness.unary("Generate", pb.GenerateRequest(text="a"))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
    harness.state.draining, harness.state.engine = False, None
    _, _, code, details = harness.unary("Generate", pb.GenerateRequest(text="a"))
    assert (code, details) == (grpc.StatusCode.UNAVAILABLE, "the model is still loading")


def test_request_id_comes_from_metadata_when_the_field_is_empty(harness):
    response, metadata, _, _ = harness.unary(
        "Generate", pb.GenerateRequest(text="a", max_tokens=1),
        metadata=(("x-request-id", "from-header"),))
    assert response.request_id == "from-header"
    assert dict(metadata)["x-request-id"] == "from-header"


def test_tokenize_and_detokenize_round_trip(harness):
    response, _, _, _ = harness.unary(
        "Tokenize", pb.TokenizeRequest(text="ab", return_tokens=True))
    assert list(response.token_ids) == [1, ord("a") + 3, ord("b") + 3]
    assert list(response.tokens) == ["<1>", "a", "b"]
    assert response.max_model_len == 512
    response, _, _, _ = harness.unary(
        "Detokenize", pb.DetokenizeRequest(token_ids=[ord("o") + 3, ord("k") + 3]))
    assert response.text == "ok"
    _, _, code, details = harness.unary("Detokenize", pb.DetokenizeRequest(token_ids=[9999]))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("token_ids: ")


def test_metadata_and_readiness(harness):
    response, _, _, _ = harness.unary("ModelMetadata", pb.ModelMetadataRequest())
    assert (response.name, response.max_model_len, response.vocab_size) == ("fake", 512, 259)
    response, _, _, _ = harness.unary("ServerMetadata", pb.ServerMetadataRequest())
    assert response.name == "llmserve" and list(response.extensions) == ["health"]
    assert harness.unary("ServerLive", pb.ServerLiveRequest())[0].live
    assert harness.unary("ServerReady", pb.ServerReadyRequest())[0].ready
    assert harness.unary("ModelReady", pb.ModelReadyRequest(name=MODEL_NAME))[0].ready
    assert not harness.unary("ModelReady", pb.ModelReadyRequest(name="other"))[0].ready
