"""Load and client faults against the real engine (tiny random Llama): a disconnect storm, a slow
consumer and an overload past the admission limit. Afterwards nothing may be left behind: no
request running or waiting in vLLM, KV cache back to idle, no call in flight, no extra task.
"""

import asyncio
import collections
import random
from dataclasses import dataclass, field

import grpc
import pytest

from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client import pb as llm_pb
from tests.reliability.conftest import (
    ADMISSION_LIMIT,
    Metrics,
    idle,
    idle_baseline_scrape,
    scrape,
    wait_for,
)
from tests.reliability.results import record

pytestmark = pytest.mark.e2e

STORM_STREAMS = 500
STORM_CONCURRENCY = 64
STORM_CHANNELS = 4
LONG_DEADLINE = 300.0
PROMPTS = ["The quick brown fox", "My name is Llama and", "gRPC streams tokens",
           "Continuous batching lets"]


def leftovers(before: Metrics, after: Metrics) -> dict[str, float]:
    """What the server holds now compared with its idle state before the load."""
    return {
        "vllm:num_requests_running": after.value("vllm:num_requests_running"),
        "vllm:num_requests_waiting": after.value("vllm:num_requests_waiting"),
        "vllm:kv_cache_usage_perc": after.value("vllm:kv_cache_usage_perc"),
        "vllm:kv_cache_usage_perc idle before": before.value("vllm:kv_cache_usage_perc"),
        "llmserve_requests_in_flight": after.value("llmserve_requests_in_flight"),
        "llmserve_asyncio_tasks": after.value("llmserve_asyncio_tasks"),
        "llmserve_asyncio_tasks idle before": before.value("llmserve_asyncio_tasks"),
    }


def settled(before: Metrics):
    """Idle again, with the KV cache usage and task count of `before`."""
    def check(now: Metrics) -> bool:
        return (idle(now) and now.value("vllm:kv_cache_usage_perc")
                == before.value("vllm:kv_cache_usage_perc")
                and now.value("llmserve_asyncio_tasks") == before.value("llmserve_asyncio_tasks"))
    return check


def assert_nothing_left(before: Metrics, after: Metrics) -> None:
    assert after.value("vllm:num_requests_running") == 0
    assert after.value("vllm:num_requests_waiting") == 0
    assert after.value("vllm:kv_cache_usage_perc") == before.value("vllm:kv_cache_usage_perc")
    assert after.value("llmserve_requests_in_flight") == 0
    assert after.value("llmserve_asyncio_tasks") == before.value("llmserve_asyncio_tasks")


def idle_baseline(server) -> Metrics:
    """The server's idle metrics, after a warm-up request."""
    async def warm_up():
        async with grpc.aio.insecure_channel(server.target) as channel:
            stub = pb_grpc.LlmServiceStub(channel)
            await stub.Generate(llm_pb.GenerateRequest(text="warm up", max_tokens=4),
                                timeout=LONG_DEADLINE)
    asyncio.run(warm_up())
    return idle_baseline_scrape(server)


def deltas(before: Metrics, after: Metrics, name: str, label: str) -> dict[str, float]:
    old = before.by_label(name, label)
    return {k: v - old.get(k, 0) for k, v in after.by_label(name, label).items()
            if v - old.get(k, 0)}


# The disconnect storm.

@dataclass
class StreamPlan:
    kind: str  # "cancel", "deadline" or "complete"
    prompt: str
    max_tokens: int
    timeout: float
    cancel_after: int = 0  # messages read before cancelling


@dataclass
class StreamResult:
    plan: StreamPlan
    code: str
    messages: list = field(default_factory=list)


def storm_plans(rng: random.Random) -> list[StreamPlan]:
    plans = []
    for i in range(STORM_STREAMS):
        prompt = PROMPTS[i % len(PROMPTS)]
        kind = rng.choices(["cancel", "deadline", "complete"], weights=[45, 30, 25])[0]
        if kind == "cancel":  # cancelled after 0 to 40 messages of a long stream
            plans.append(StreamPlan(kind, prompt, rng.randint(300, 900), LONG_DEADLINE,
                                    cancel_after=rng.randint(0, 40)))
        elif kind == "deadline":  # cannot finish 900 tokens before its deadline
            plans.append(StreamPlan(kind, prompt, 900, rng.uniform(0.3, 2.0)))
        else:
            plans.append(StreamPlan(kind, prompt, rng.randint(8, 64), LONG_DEADLINE))
    return plans


async def run_stream(stub: pb_grpc.LlmServiceStub, plan: StreamPlan) -> StreamResult:
    request = llm_pb.GenerateRequest(text=plan.prompt, max_tokens=plan.max_tokens,
                                     ignore_eos=True, temperature=0)
    call = stub.StreamGenerate(request, timeout=plan.timeout)
    result = StreamResult(plan, "OK")
    try:
        if plan.kind == "cancel":
            for _ in range(plan.cancel_after):
                message = await call.read()
                if message is grpc.aio.EOF:
                    break
                result.messages.append(message)
            call.cancel()
            result.code = (await call.code()).name
        else:
            async for message in call:
                result.messages.append(message)
    except grpc.aio.AioRpcError as exc:
        result.code = exc.code().name
    except asyncio.CancelledError:  # reading a call we cancelled
        result.code = "CANCELLED"
    return result


async def storm(target: str, plans: list[StreamPlan]) -> list[StreamResult]:
    limit = asyncio.Semaphore(STORM_CONCURRENCY)
    channels = [grpc.aio.insecure_channel(target) for _ in range(STORM_CHANNELS)]
    stubs = [pb_grpc.LlmServiceStub(channel) for channel in channels]

    async def one(i: int, plan: StreamPlan) -> StreamResult:
        async with limit:
            return await run_stream(stubs[i % len(stubs)], plan)

    try:
        return await asyncio.gather(*(one(i, plan) for i, plan in enumerate(plans)))
    finally:
        for channel in channels:
            await channel.close()


def test_disconnect_storm_leaves_nothing_behind(limited_server):
    before = idle_baseline(limited_server)
    plans = storm_plans(random.Random(7))
    results = asyncio.run(storm(limited_server.target, plans))
    after = wait_for(limited_server, settled(before))

    outcomes = collections.Counter((r.plan.kind, r.code) for r in results)
    for result in results:
        # A stream whose deltas came merged (the client reads slower than the engine
        # generates) may have finished before its client got to cancel it.
        expected = {"cancel": {"CANCELLED", "OK"}, "deadline": {"DEADLINE_EXCEEDED"},
                    "complete": {"OK"}}
        assert result.code in expected[result.plan.kind], (result.plan, result.code)
    completed = [r for r in results if r.code == "OK"]
    for result in completed:  # intact: every token arrived once, the last message says so
        final = result.messages[-1]
        assert [m.finished for m in result.messages] == [False] * (len(result.messages) - 1) + [
            True]
        tokens = [t for m in result.messages for c in m.completions for t in c.token_ids]
        assert len(tokens) == final.usage.completion_tokens == result.plan.max_tokens
        assert final.completions[-1].finish_reason == llm_pb.FINISH_REASON_LENGTH
        assert "".join(c.text for m in result.messages for c in m.completions)
    mid_stream = {kind: sum(1 for r in results if r.plan.kind == kind and r.messages)
                  for kind in ("cancel", "deadline")}
    assert_nothing_left(before, after)
    # The server counted the calls as their clients saw them, deadlines as DEADLINE_EXCEEDED
    # (not CANCELLED), except calls a client cancelled before their handler started, which the
    # server never sees.
    client_codes = collections.Counter(r.code for r in results)
    server_codes = deltas(before, after, "llmserve_requests_total", "code")
    never_seen = len(results) - sum(server_codes.values())
    assert server_codes["OK"] == client_codes["OK"]
    assert (client_codes["DEADLINE_EXCEEDED"] - never_seen <= server_codes["DEADLINE_EXCEEDED"]
            <= client_codes["DEADLINE_EXCEEDED"])
    record("disconnect_storm", title="Disconnect storm (real engine)",
           load=f"{STORM_STREAMS} StreamGenerate calls, {STORM_CONCURRENCY} at a time over "
                f"{STORM_CHANNELS} channels, tiny random Llama (vLLM CPU, float32), greedy, "
                "ignore_eos",
           faults="45% cancelled by the client after 0-40 messages of a 300-900 token stream; "
                  "30% with a 0.3-2 s deadline on a 900-token stream; 25% run to completion "
                  "(8-64 tokens) among them",
           outcome={
               "streams by plan and status": {f"{k} {c}": n for (k, c), n in
                                              sorted(outcomes.items())},
               "cancelled or expired after receiving tokens (mid-stream)": mid_stream,
               "completed streams intact (finished, token counts = usage = max_tokens)":
                   f"{len(completed)}/{len(completed)}",
               "cancel plans that had finished before the client cancelled": outcomes[
                   ("cancel", "OK")],
               "server counters during the storm": {
                   "llmserve_requests_total{rpc=StreamGenerate} by code": deltas(
                       before, after, "llmserve_requests_total", "code"),
                   "vllm:request_success_total by finished_reason": deltas(
                       before, after, "vllm:request_success_total", "finished_reason"),
               },
               "afterwards": leftovers(before, after),
           })


# The slow consumer.

SLOW_DEADLINE = 20.0
FAST_STREAMS = 16
FAST_TOKENS = 128


async def slow_consumer(target: str, server) -> dict:
    # Without BDP probing the stream's flow-control window stays at 64 KiB: a client that stops
    # reading soon stops the server's writes.
    slow_channel = grpc.aio.insecure_channel(target, options=[("grpc.http2.bdp_probe", 0)])
    fast_channel = grpc.aio.insecure_channel(target)
    try:
        slow = pb_grpc.LlmServiceStub(slow_channel).StreamGenerate(
            llm_pb.GenerateRequest(text="I read slowly", max_tokens=900, n=4, logprobs=20,
                                   ignore_eos=True), timeout=SLOW_DEADLINE)
        first = await slow.read()
        assert first.completions

        async def fast(i: int) -> list:
            request = llm_pb.GenerateRequest(text=PROMPTS[i % len(PROMPTS)], ignore_eos=True,
                                             max_tokens=FAST_TOKENS, temperature=0)
            stub = pb_grpc.LlmServiceStub(fast_channel)
            return [m async for m in stub.StreamGenerate(request, timeout=LONG_DEADLINE)]

        others = await asyncio.gather(*(fast(i) for i in range(FAST_STREAMS)))
        while_stalled = await asyncio.to_thread(scrape, server)
        # The slow client still does not read; the server ends the stream once its deadline
        # has passed.
        ended = await asyncio.to_thread(
            wait_for, server, lambda m: m.value("llmserve_requests_in_flight",
                                                rpc="StreamGenerate") == 0, 2 * SLOW_DEADLINE)
        read_late = 0
        try:
            while await slow.read() is not grpc.aio.EOF and read_late < 10_000:
                read_late += 1
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        return {"others": others, "while_stalled": while_stalled, "ended": ended,
                "slow_code": code, "slow_messages": 1 + read_late}
    finally:
        await slow_channel.close()
        await fast_channel.close()


def test_slow_consumer_does_not_hold_up_others_and_expires(limited_server):
    before = idle_baseline(limited_server)
    outcome = asyncio.run(slow_consumer(limited_server.target, limited_server))
    after = wait_for(limited_server, settled(before))

    others = outcome["others"]
    assert len(others) == FAST_STREAMS
    for messages in others:
        final = messages[-1]
        assert final.finished
        assert final.usage.completion_tokens == FAST_TOKENS
        assert sum(len(c.token_ids) for m in messages for c in m.completions) == FAST_TOKENS
    while_stalled = outcome["while_stalled"]
    # When all the others had finished, the slow stream was still open on the server.
    assert while_stalled.value("llmserve_requests_in_flight", rpc="StreamGenerate") == 1
    assert outcome["ended"].value("llmserve_requests_in_flight", rpc="StreamGenerate") == 0
    # The server ended it as expired, or as cancelled when the client's own deadline (and
    # RST_STREAM) beat the server's timer.
    ended_as = deltas(before, outcome["ended"], "llmserve_requests_total", "code")
    assert ended_as in ({"OK": FAST_STREAMS, "DEADLINE_EXCEEDED": 1},
                        {"OK": FAST_STREAMS, "CANCELLED": 1}), ended_as
    assert outcome["slow_code"] == "DEADLINE_EXCEEDED"
    assert outcome["slow_messages"] < 900
    assert_nothing_left(before, after)
    record("slow_consumer", title="Slow consumer (real engine)",
           load=f"1 stream (n=4, logprobs=20, 900 tokens, {SLOW_DEADLINE:.0f} s deadline) that "
                f"reads one message and stops, beside {FAST_STREAMS} normal streams of "
                f"{FAST_TOKENS} tokens",
           faults="a client that stops reading (HTTP/2 flow-control window of 64 KiB, BDP "
                  "probing off), until its deadline passes",
           outcome={
               "other streams completed while the slow one was stalled":
                   f"{len(others)}/{FAST_STREAMS} (each {FAST_TOKENS} tokens, finished)",
               "server-side streams in flight when the others had finished": while_stalled.value(
                   "llmserve_requests_in_flight", rpc="StreamGenerate"),
               "vLLM requests running at that moment": while_stalled.value(
                   "vllm:num_requests_running"),
               "slow stream's status": outcome["slow_code"],
               "messages the slow client received in all": outcome["slow_messages"],
               "llmserve_requests_total increase (the others and the slow one)": ended_as,
               "afterwards": leftovers(before, after),
           })


# Overload.

OVERLOAD_CALLS = 4 * ADMISSION_LIMIT
# Long enough that every call reaches the server before the first admitted one ends: here the
# refusals all arrive within 0.8 s, the first admitted call ends after ~7.5 s (at 128 tokens it
# ended after 1.3 s, and a busy machine once let 25 late calls in).
OVERLOAD_TOKENS = 512


async def overload(target: str) -> list[tuple[int, str, int, str]]:
    """Sends all calls at once; returns (arrival order, code, tokens, details) per call."""
    order = iter(range(OVERLOAD_CALLS))
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.LlmServiceStub(channel)

        async def one(i: int) -> tuple[int, str, int, str]:
            request = llm_pb.GenerateRequest(text=PROMPTS[i % len(PROMPTS)], ignore_eos=True,
                                             max_tokens=OVERLOAD_TOKENS)
            try:
                if i % 2:
                    messages = [m async for m in stub.StreamGenerate(request,
                                                                     timeout=LONG_DEADLINE)]
                    tokens = messages[-1].usage.completion_tokens
                else:
                    response = await stub.Generate(request, timeout=LONG_DEADLINE)
                    tokens = response.usage.completion_tokens
                return next(order), "OK", tokens, ""
            except grpc.aio.AioRpcError as exc:
                return next(order), exc.code().name, 0, exc.details()

        return await asyncio.gather(*(one(i) for i in range(OVERLOAD_CALLS)))


def test_overload_rejects_the_excess_at_once_and_completes_the_rest(limited_server):
    before = idle_baseline(limited_server)
    results = asyncio.run(overload(limited_server.target))
    after = wait_for(limited_server, settled(before))

    admitted = [r for r in results if r[1] == "OK"]
    rejected = [r for r in results if r[1] != "OK"]
    assert len(admitted) == ADMISSION_LIMIT
    assert all(tokens == OVERLOAD_TOKENS for _, _, tokens, _ in admitted)
    assert {(code, details) for _, code, _, details in rejected} == {(
        "RESOURCE_EXHAUSTED",
        f"the server is at its limit of {ADMISSION_LIMIT} queued requests; retry later")}
    # At once: every refusal reached its client before the first admitted call finished.
    assert max(order for order, *_ in rejected) < min(order for order, *_ in admitted)
    # The engine saw the admitted requests only.
    engine_finished = deltas(before, after, "vllm:request_success_total", "finished_reason")
    assert engine_finished == {"length": ADMISSION_LIMIT}
    rejections = (after.value("llmserve_admission_rejections_total")
                  - before.value("llmserve_admission_rejections_total"))
    assert rejections == len(rejected)
    assert_nothing_left(before, after)
    record("overload", title="Overload: 4x the admission limit at once (real engine)",
           load=f"{OVERLOAD_CALLS} calls at once (half Generate, half StreamGenerate, "
                f"{OVERLOAD_TOKENS} tokens each) against --max-queued-requests "
                f"{ADMISSION_LIMIT}",
           faults="more requests than the server admits",
           outcome={
               "admitted and completed": f"{len(admitted)} (each {OVERLOAD_TOKENS} tokens)",
               "RESOURCE_EXHAUSTED": len(rejected),
               "refusals answered before the first admitted call finished":
                   f"{len(rejected)}/{len(rejected)}",
               "requests the engine finished (vllm:request_success_total)": engine_finished,
               "llmserve_admission_rejections_total increase": rejections,
               "afterwards": leftovers(before, after),
           })
