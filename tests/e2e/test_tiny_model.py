"""End to end with the real vLLM engine on a tiny random Llama (fast; text is gibberish)."""

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
import pytest

from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client import AsyncLlmClient, LlmClient, full_text
from tests.e2e.conftest import RUNNING, metric_value, wait_for_idle

pytestmark = pytest.mark.e2e
SLOW_READS = 30  # messages the slow client reads 10 ms apart
GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def test_concurrent_streams_run_as_one_batch(tiny_server):
    peak = 0.0
    done = threading.Event()

    def watch_running():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, metric_value(tiny_server, RUNNING))
            time.sleep(0.01)

    async def stream_all():
        async with AsyncLlmClient(tiny_server.target) as client:
            async def one(i):
                return [m async for m in client.stream_generate(
                    f"Request number {i}", max_tokens=96, ignore_eos=True, temperature=0)]
            return await asyncio.gather(*(one(i) for i in range(32)))

    watcher = threading.Thread(target=watch_running)
    watcher.start()
    try:
        results = asyncio.run(stream_all())
    finally:
        done.set()
        watcher.join()
    for messages in results:
        final = messages[-1]
        assert final.finished
        assert final.usage.completion_tokens == 96
        assert sum(len(m.completions[0].token_ids) for m in messages) == 96
    assert peak == 32
    assert wait_for_idle(tiny_server) == 0


def test_cancelled_stream_leaves_no_running_request(tiny_server):
    with LlmClient(tiny_server.target) as client:
        stream = client.stream_generate("Cancel me", max_tokens=900, ignore_eos=True)
        for _ in range(5):
            next(stream)
        assert metric_value(tiny_server, RUNNING) == 1
        stream.close()
    assert wait_for_idle(tiny_server) == 0


def test_deadline_aborts_the_engine_request(tiny_server):
    with LlmClient(tiny_server.target, retries=0) as client, pytest.raises(
            grpc.RpcError) as excinfo:
        client.generate("Too slow", max_tokens=900, ignore_eos=True, timeout=0.5)
    assert excinfo.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_for_idle(tiny_server) == 0


def test_greedy_decoding_is_deterministic_and_streams_match_unary(tiny_server):
    params = {"max_tokens": 40, "temperature": 0, "ignore_eos": True}
    with LlmClient(tiny_server.target) as client:
        streams = [list(client.stream_generate("The capital of France is", **params))
                   for _ in range(2)]
        unary = client.generate("The capital of France is", **params)
    stream_tokens = [[t for m in s for t in m.completions[0].token_ids] for s in streams]
    stream_texts = ["".join(m.completions[0].text for m in s) for s in streams]
    assert stream_tokens[0] == stream_tokens[1] == list(unary.completions[0].token_ids)
    assert len(stream_tokens[0]) == 40
    assert stream_texts[0] == stream_texts[1] == full_text(unary)


def test_stream_interval_coalesces_tokens_into_fewer_messages(tiny_server):
    params = {"max_tokens": 32, "temperature": 0, "ignore_eos": True}
    with LlmClient(tiny_server.target) as client:
        messages = list(client.stream_generate("Fewer messages", stream_interval=8, **params))
        unary = client.generate("Fewer messages", **params)
    sizes = [len(m.completions[0].token_ids) for m in messages if m.completions]
    # vLLM sends the first token at once, then every 8 tokens, then the rest at the end.
    assert sizes == [1, 8, 8, 8, 7]
    assert "".join(m.completions[0].text for m in messages) == full_text(unary)


def test_a_client_that_falls_behind_gets_several_tokens_per_message(tiny_server):
    # A 1 KiB flow-control window: the server's writes wait while the client sleeps, and vLLM
    # merges the tokens generated meanwhile into the stream's next message.
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    params = {"max_tokens": 600, "temperature": 0, "ignore_eos": True}
    with LlmClient(tiny_server.target) as client:
        unary = client.generate("Falling behind", **params)
    with grpc.insecure_channel(tiny_server.target, options=options) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        messages = []
        for message in stub.StreamGenerate(pb.GenerateRequest(text="Falling behind", **params),
                                           timeout=120):
            messages.append(message)
            if len(messages) <= SLOW_READS:
                time.sleep(0.01)
    token_ids = [t for m in messages for c in m.completions for t in c.token_ids]
    assert token_ids == list(unary.completions[0].token_ids)
    assert "".join(c.text for m in messages for c in m.completions) == full_text(unary)
    assert len(messages) < len(token_ids)
    assert max(len(c.token_ids) for m in messages for c in m.completions) > 1


def test_sampling_options_reach_vllm(tiny_server):
    with LlmClient(tiny_server.target) as client:
        response = client.generate("Hello", n=3, max_tokens=8, temperature=1.0, seed=1,
                                   logprobs=2, ignore_eos=True)
        again = client.generate("Hello", n=3, max_tokens=8, temperature=1.0, seed=1,
                                ignore_eos=True)
    assert [c.index for c in response.completions] == [0, 1, 2]
    assert response.usage.completion_tokens == 24
    for completion in response.completions:
        assert len(completion.logprobs) == 8
        for position, token_id in zip(completion.logprobs, completion.token_ids, strict=True):
            assert position.chosen.token_id == token_id
            assert len(position.top) == 2
            assert position.chosen.logprob <= 0
    assert [list(c.token_ids) for c in response.completions] == [
        list(c.token_ids) for c in again.completions]


def test_stop_strings_and_chat_messages(tiny_server):
    with LlmClient(tiny_server.target) as client:
        free = full_text(client.generate("Hello", max_tokens=30, temperature=0,
                                         ignore_eos=True))
        stop = free[len(free) // 2:len(free) // 2 + 2].strip() or free[-1]
        stopped = client.generate("Hello", max_tokens=30, temperature=0, ignore_eos=True,
                                  stop=[stop])
        chat = client.generate(messages=[{"role": "user", "content": "Hi"}], max_tokens=4,
                               ignore_eos=True)
        tokens = client.tokenize("<|user|>Hi\n<|assistant|>", add_special_tokens=False)
    completion = stopped.completions[0]
    assert completion.finish_reason == 4  # FINISH_REASON_STOP_SEQUENCE
    assert completion.stop_reason == stop
    assert stop not in completion.text
    assert free.startswith(completion.text)
    assert chat.usage.prompt_tokens == len(tokens.token_ids)


def test_invalid_requests_against_the_real_tokenizer(tiny_server):
    with LlmClient(tiny_server.target, retries=0) as client:
        metadata = client.model_metadata()
        with pytest.raises(grpc.RpcError) as excinfo:
            client.generate(token_ids=[metadata.vocab_size + 5])
        assert excinfo.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as excinfo:
            client.generate("word " * 2000, max_tokens=4)
        assert excinfo.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "context length of 1024 tokens" in excinfo.value.details()
    assert metadata.max_model_len == 1024
    assert metadata.engine == "vllm"


def test_grpcurl_against_the_real_engine(tiny_server):
    def grpcurl(*args):
        return subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True,
                              timeout=60, check=True).stdout

    assert "llmserve.v1.LlmService" in grpcurl(tiny_server.target, "list").split()
    response = json.loads(grpcurl("-d", '{"text": "My name is", "max_tokens": 5, '
                                  '"ignore_eos": true}', tiny_server.target,
                                  "llmserve.v1.LlmService/Generate"))
    assert len(response["completions"][0]["token_ids"]) == 5
    streamed = grpcurl("-d", '{"text": "My name is", "max_tokens": 5, "ignore_eos": true}',
                       tiny_server.target, "llmserve.v1.LlmService/StreamGenerate")
    assert streamed.count('"request_id"') == 5


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="no core to reserve on one CPU")
def test_engine_core_is_bound_to_the_workers_cores(tiny_server):
    """On the CPU build: the engine core's busy-wait stays off the cores left to llmserve."""
    descendants = psutil.Process(tiny_server.process.pid).children(recursive=True)
    titles = {p.pid: (p.cmdline() or [""])[0] for p in descendants}
    workers = [p for p in descendants if titles[p.pid].startswith("VLLM::Worker")]
    engine_cores = [p for p in descendants if titles[p.pid].startswith("VLLM::EngineCore")]
    assert workers and engine_cores, titles
    worker_cpus = set().union(*(w.cpu_affinity() for w in workers))
    assert worker_cpus < os.sched_getaffinity(0), "vLLM reserved no core for the frontend"
    for engine_core in engine_cores:
        assert {frozenset(os.sched_getaffinity(t.id)) for t in engine_core.threads()} == {
            frozenset(worker_cpus)}
    assert os.sched_getaffinity(tiny_server.process.pid) == os.sched_getaffinity(0)


def test_the_logprobs_kernel_is_compiled_before_the_server_turns_ready(tiny_server):
    """vLLM compiles its token-rank kernel on the first request that asks for logprobs, and
    every request in the engine waits meanwhile (17 s with a cold compile cache here): the
    server runs that first request itself, before it reports ready."""
    log = tiny_server.log_path.read_text(errors="replace")
    warmed_up = log.find("warmed up vLLM's logprobs kernel in ")
    ready = log.find(" ready (max_model_len=")
    assert 0 <= warmed_up < ready, "no logprobs warm-up before the model turned ready"

    with LlmClient(tiny_server.target) as client:
        response = client.generate("warm", max_tokens=3, logprobs=2, ignore_eos=True,
                                   request_id="after-warm-up")
    (completion,) = response.completions
    assert len(completion.logprobs) == 3
    assert all(len(position.top) == 2 for position in completion.logprobs)
