"""The load generator: fixed concurrency or Poisson arrivals against a `Target`, then a summary.

Per streamed message it only appends a timestamp; everything else (token counts from the final
usage, percentiles) is computed once per request or once per run, so the generator stays light
beside the server it measures on the same cores.
"""

import asyncio
import itertools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, TypeVar

logger = logging.getLogger(__name__)

# A request that takes longer has failed (SmolLM2 at C=256 on 2 cores needs about a minute).
REQUEST_TIMEOUT_SECONDS = 900.0
WARMUP_OUTPUT_LEN = 8
MAX_ERROR_EXAMPLES = 3

T = TypeVar("T")


class Reply(NamedTuple):
    """One request's outcome, as a target reports it."""

    # Output tokens, as the server counted them.
    tokens: int
    # The `time.perf_counter()` arrival of each streamed message that carried tokens.
    times: list[float]
    # The server's own time to first token, from the call's arrival (llmserve's `timings`).
    server_ttft_ms: float | None = None


class Target(Protocol):
    """A server (or engine) under test, seen from the load generator."""

    name: str
    # False for unary APIs: no time to first token or inter-token latency then.
    streaming: bool

    async def request(self, prompt: str, output_len: int) -> Reply:
        """Runs one request of exactly `output_len` output tokens (EOS ignored)."""
        ...

    async def close(self) -> None: ...


@dataclass(frozen=True)
class LoadSpec:
    prompts: Sequence[str]
    # One output length per request: their number is the number of requests.
    output_lens: Sequence[int]
    # Requests in flight at once (a cap on top of `rate` when both are set).
    concurrency: int | None = None
    # Poisson arrivals, requests per second.
    rate: float | None = None
    seed: int = 0
    # A run of the C=1 TTFT probe (one-token requests), not a load level.
    ttft_probe: bool = False

    def __post_init__(self):
        if not self.concurrency and not self.rate:
            raise ValueError("give a concurrency, a request rate, or both")


@dataclass(slots=True)
class Sample:
    start: float
    end: float = 0.0
    tokens: int = 0
    times: list[float] | None = None
    server_ttft_ms: float | None = None
    error: str | None = None


def _error_text(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if callable(code) and callable(getattr(exc, "details", None)):  # grpc.RpcError
        return f"{exc.code().name}: {exc.details()}"[:200]
    return f"{type(exc).__name__}: {exc}"[:200]


def _progress_bar(total: int, description: str, enabled: bool):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=description, leave=False, unit="req", disable=None)


async def run_load(target: Target, spec: LoadSpec,
                   progress: bool = False) -> tuple[list[Sample], float]:
    """Sends every request of `spec`; returns one sample per request and the wall time."""
    count = len(spec.output_lens)
    samples: list[Sample] = []
    bar = _progress_bar(count, f"{target.name} C={spec.concurrency or '-'}", progress)
    prompts = spec.prompts

    async def one(i: int) -> None:
        sample = Sample(time.perf_counter())
        try:
            sample.tokens, sample.times, sample.server_ttft_ms = await target.request(
                prompts[i % len(prompts)], spec.output_lens[i])
        except Exception as exc:
            sample.error = _error_text(exc)
        sample.end = time.perf_counter()
        samples.append(sample)
        if bar is not None:
            bar.update(1)

    started = time.perf_counter()
    try:
        if spec.rate:
            await _poisson(one, count, spec.rate, spec.concurrency, spec.seed)
        else:
            counter = itertools.count()

            async def worker() -> None:
                while (i := next(counter)) < count:
                    await one(i)

            await asyncio.gather(*(worker() for _ in range(min(spec.concurrency, count))))
    finally:
        if bar is not None:
            bar.close()
    return samples, time.perf_counter() - started


async def _poisson(one: Callable[[int], Awaitable[None]], count: int, rate: float,
                   cap: int | None, seed: int) -> None:
    rng = random.Random(seed)
    slots = asyncio.Semaphore(cap) if cap else None

    async def limited(i: int) -> None:
        if slots is None:
            await one(i)
            return
        async with slots:
            await one(i)

    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(limited(i)))
        await asyncio.sleep(rng.expovariate(rate))
    await asyncio.gather(*tasks)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _percentiles(values: Sequence[float], qs: Sequence[int]) -> dict[str, float] | None:
    if not values:
        return None
    return {f"p{q}": round(percentile(values, q), 3) for q in qs}


def summarize(samples: Sequence[Sample], duration: float, spec: LoadSpec,
              streaming: bool) -> dict:
    """Throughput and latency percentiles (milliseconds) of one load level."""
    ok = [s for s in samples if s.error is None]
    tokens = sum(s.tokens for s in ok)
    errors = [s.error for s in samples if s.error is not None]
    ttft, outside_server, itl = [], [], []
    if streaming:
        for s in ok:
            if s.times:
                ttft.append((s.times[0] - s.start) * 1000)
                if s.server_ttft_ms is not None:
                    outside_server.append(ttft[-1] - s.server_ttft_ms)
                itl.extend((b - a) * 1000 for a, b in itertools.pairwise(s.times))
    return {
        "concurrency": spec.concurrency,
        "rate": spec.rate,
        "requests": len(samples),
        "completed": len(ok),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:MAX_ERROR_EXAMPLES],
        "duration_s": round(duration, 3),
        "requests_per_s": round(len(ok) / duration, 3),
        "output_tokens": tokens,
        "expected_output_tokens": sum(spec.output_lens),
        "output_tokens_per_s": round(tokens / duration, 2),
        "messages": sum(len(s.times or ()) for s in ok),
        "ttft_ms": _percentiles(ttft, (50, 90, 99)),
        # Per request, the TTFT the client saw minus the server's own: the call's way in and the
        # first message's way out (gRPC or HTTP, loopback, the client), paired, so a drift of the
        # host's speed between targets does not reach it.
        "ttft_outside_server_ms": _percentiles(outside_server, (50, 90)),
        "itl_ms": _percentiles(itl, (50, 99)),
        "e2e_ms": _percentiles([(s.end - s.start) * 1000 for s in ok], (50, 99)),
    }


def _cpu_seconds(process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def run_levels(target: Target, specs: Sequence[LoadSpec], *, warmup: int = 2,
                     server_pid: int | None = None, progress: bool = False) -> list[dict]:
    """Warms up, then runs each load level in turn; one summary per level.

    With `server_pid`, each summary also has the CPU time that process (not its children, such
    as vLLM's engine core) spent during the level, and per output token.
    """
    server = None
    if server_pid is not None:
        import psutil

        server = psutil.Process(server_pid)
    if warmup:
        first = specs[0]
        await run_load(target, LoadSpec(first.prompts, [WARMUP_OUTPUT_LEN] * warmup,
                                        concurrency=warmup))
    results = []
    for spec in specs:
        server_cpu = _cpu_seconds(server) if server else 0.0
        client_cpu = time.process_time()
        samples, duration = await run_load(target, spec, progress)
        result = summarize(samples, duration, spec, target.streaming)
        result["client_cpu_s"] = round(time.process_time() - client_cpu, 3)
        if spec.ttft_probe:
            result["ttft_probe"] = True
        if server is not None:
            cpu = _cpu_seconds(server) - server_cpu
            result["server_cpu_s"] = round(cpu, 3)
            result["server_cpu_ms_per_token"] = (
                round(cpu * 1000 / result["output_tokens"], 4) if result["output_tokens"]
                else None)
        logger.info("%s C=%s rate=%s: %.1f tok/s, %.2f req/s, TTFT p50 %s ms, errors %d",
                    target.name, spec.concurrency, spec.rate, result["output_tokens_per_s"],
                    result["requests_per_s"], (result["ttft_ms"] or {}).get("p50"),
                    result["errors"])
        results.append(result)
    return results


def run_async(main: Awaitable[T], use_uvloop: bool = True) -> T:
    """Runs a coroutine on uvloop when it is installed (lighter per message), else asyncio."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(main)
    return asyncio.run(main)
