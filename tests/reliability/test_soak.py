"""Soak (slow): 10 minutes at 64 concurrent requests against the tiny model. Zero errors; after
the warm-up the server's RSS grows less than 5%, its open file descriptors and asyncio tasks
not at all (each measured with the server idle, the clients' connections still open).

LLMSERVE_SOAK_SECONDS shortens or lengthens the run (default 600).
"""

import asyncio
import collections
import os
import random
import time

import grpc
import psutil
import pytest

from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client import pb as llm_pb
from tests.e2e.conftest import stopped_cleanly
from tests.reliability.conftest import idle_baseline_scrape, scrape
from tests.reliability.results import record
from tests.support.processes import ServerProcess

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SOAK_SECONDS = float(os.environ.get("LLMSERVE_SOAK_SECONDS", "600"))
WARMUP_SECONDS = min(60.0, SOAK_SECONDS / 5)
CONCURRENCY = 64
CHANNELS = 4
SAMPLE_EVERY_SECONDS = 30.0
CALL_TIMEOUT = 120.0
MAX_CALLS_PER_WORKER = 1_000_000
RSS_GROWTH_LIMIT = 0.05
PROMPTS = ["The quick brown fox", "My name is Llama and", "gRPC streams tokens",
           "Continuous batching lets", "The capital of France is"]


class Load:
    """CONCURRENCY workers calling in a loop until `end`, pausable, every result counted."""

    def __init__(self, target: str, seed: int):
        self.channels = [grpc.aio.insecure_channel(target) for _ in range(CHANNELS)]
        self.rng = random.Random(seed)
        self.running = asyncio.Event()
        self.paused_workers = 0
        self.calls: collections.Counter = collections.Counter()
        self.tokens = 0
        self.errors: list[str] = []

    async def one_call(self, stub: pb_grpc.LlmServiceStub) -> None:
        max_tokens = self.rng.randint(8, 128)
        request = llm_pb.GenerateRequest(text=self.rng.choice(PROMPTS), max_tokens=max_tokens,
                                         ignore_eos=True,
                                         temperature=self.rng.choice([0.0, 0.8]))
        kind = self.rng.choices(["stream", "unary", "tokenize"], weights=[70, 25, 5])[0]
        try:
            if kind == "stream":
                messages = [m async for m in stub.StreamGenerate(request, timeout=CALL_TIMEOUT)]
                tokens = sum(len(c.token_ids) for m in messages for c in m.completions)
                ok = messages[-1].finished and tokens == max_tokens
            elif kind == "unary":
                response = await stub.Generate(request, timeout=CALL_TIMEOUT)
                tokens = len(response.completions[0].token_ids)
                ok = tokens == max_tokens == response.usage.completion_tokens
            else:
                ids = (await stub.Tokenize(llm_pb.TokenizeRequest(text=request.text),
                                           timeout=CALL_TIMEOUT)).token_ids
                text = (await stub.Detokenize(llm_pb.DetokenizeRequest(token_ids=ids),
                                              timeout=CALL_TIMEOUT)).text
                tokens, ok = 0, text == request.text
            if not ok:
                self.errors.append(f"{kind}: wrong output")
            self.tokens += tokens
            self.calls[kind] += 1
        except grpc.aio.AioRpcError as exc:
            self.errors.append(f"{kind}: {exc.code().name} {exc.details()}")

    async def worker(self, index: int, end: float) -> None:
        stub = pb_grpc.LlmServiceStub(self.channels[index % CHANNELS])
        for _ in range(MAX_CALLS_PER_WORKER):
            if not self.running.is_set():
                self.paused_workers += 1
                await self.running.wait()
                self.paused_workers -= 1
            if time.monotonic() >= end:
                return
            await self.one_call(stub)

    async def pause(self) -> None:
        """Returns once every worker has finished its call and waits."""
        self.running.clear()
        for _ in range(int(CALL_TIMEOUT * 10)):
            if self.paused_workers == CONCURRENCY:
                return
            await asyncio.sleep(0.1)

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


def measure(server: ServerProcess) -> dict:
    """RSS and open fds of the server process, its asyncio tasks, at idle."""
    metrics = idle_baseline_scrape(server)
    process = psutil.Process(server.process.pid)
    return {"rss_mib": round(process.memory_info().rss / 2**20, 1),
            "open_fds": process.num_fds(),
            "asyncio_tasks": int(metrics.value("llmserve_asyncio_tasks")),
            "engine_rss_mib": round(sum(psutil.Process(pid).memory_info().rss
                                        for pid in server.engine_pids) / 2**20, 1)}


async def soak(server: ServerProcess) -> dict:
    load = Load(server.target, seed=11)
    start = time.monotonic()
    end = start + SOAK_SECONDS
    load.running.set()
    workers = [asyncio.create_task(load.worker(i, end)) for i in range(CONCURRENCY)]
    samples = []
    try:
        await asyncio.sleep(WARMUP_SECONDS)
        await load.pause()
        after_warmup = await asyncio.to_thread(measure, server)
        load.running.set()
        next_sample = time.monotonic() + SAMPLE_EVERY_SECONDS
        while time.monotonic() < end and not all(w.done() for w in workers):
            await asyncio.sleep(1)
            if time.monotonic() >= next_sample:
                process = psutil.Process(server.process.pid)
                metrics = await asyncio.to_thread(scrape, server)
                samples.append({
                    "minute": round((time.monotonic() - start) / 60, 1),
                    "rss_mib": round(process.memory_info().rss / 2**20, 1),
                    "open_fds": process.num_fds(),
                    "asyncio_tasks": int(metrics.value("llmserve_asyncio_tasks")),
                    "requests_running": int(metrics.value("vllm:num_requests_running")),
                    "calls": sum(load.calls.values()),
                })
                next_sample += SAMPLE_EVERY_SECONDS
        await asyncio.gather(*workers)
        at_end = await asyncio.to_thread(measure, server)
    finally:
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await load.close()
    return {"after_warmup": after_warmup, "at_end": at_end, "samples": samples,
            "calls": dict(load.calls), "tokens": load.tokens, "errors": load.errors,
            "minutes": round((time.monotonic() - start) / 60, 1)}


# The soak itself, plus the server's start and stop.
@pytest.mark.timeout(SOAK_SECONDS + 600)
def test_soak_at_64_concurrent_requests(tiny_llama, tmp_path):
    server = ServerProcess(tiny_llama, log_path=tmp_path / "server.log").start()
    try:
        result = asyncio.run(soak(server))
    finally:
        stopped_cleanly(server)
    warm, end = result["after_warmup"], result["at_end"]
    rss_growth = end["rss_mib"] / warm["rss_mib"] - 1
    passed = (not result["errors"] and sum(result["calls"].values()) > 0
              and rss_growth < RSS_GROWTH_LIMIT and end["open_fds"] <= warm["open_fds"]
              and end["asyncio_tasks"] == warm["asyncio_tasks"])
    record("soak", slow=True, passed=passed, title="Soak at C=64 (real engine)",
           load=f"{result['minutes']} minutes, {CONCURRENCY} concurrent workers over {CHANNELS} "
                "channels, tiny random Llama: 70% StreamGenerate, 25% Generate (8-128 tokens, "
                "greedy or temperature 0.8), 5% Tokenize+Detokenize",
           faults="none (sustained load); measurements with the server idle after a "
                  f"{WARMUP_SECONDS:.0f} s warm-up and at the end, connections kept open",
           outcome={"calls": result["calls"], "generated tokens": result["tokens"],
                    "errors": len(result["errors"]), "first errors": result["errors"][:5],
                    "after warm-up (idle)": warm, "at the end (idle)": end,
                    "RSS growth after warm-up": f"{rss_growth:+.2%}",
                    "samples under load": result["samples"]})
    assert result["errors"] == []
    assert sum(result["calls"].values()) > 0
    assert rss_growth < RSS_GROWTH_LIMIT
    assert end["open_fds"] <= warm["open_fds"]
    assert end["asyncio_tasks"] == warm["asyncio_tasks"]
