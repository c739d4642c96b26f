"""llmserve-bench's load generator against the in-process fake-engine server: counts only."""

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from llmserve.engine.fake import FakeEngine
from llmserve_client.bench import grpc_settings
from llmserve_client.bench.cli import main as bench_main
from llmserve_client.bench.loadgen import LoadSpec, run_levels
from llmserve_client.bench.prompts import output_lengths, prompt_set
from llmserve_client.bench.report import write_report
from llmserve_client.bench.servers import ServerProcess
from llmserve_client.bench.targets import open_target
from tests.integration.conftest import ThreadedServer
from tests.integration.test_http import http_url
from tests.integration.test_server import wait_until
from tests.support.processes import free_port

OUTPUT_LEN = 8


@pytest.fixture
def bench_server():
    # Room for the bundled prompts: the fake tokenizer makes one token per byte.
    threaded = ThreadedServer(FakeEngine(max_model_len=2048), http_port=free_port()).start()
    yield threaded
    threaded.stop()


def target_url(server: ThreadedServer, scheme: str) -> str:
    return http_url(server) if scheme == "http" else f"{scheme}://{server.target}"


def report_meta(quick: bool) -> dict:
    """The suite's run description, as the report reads it."""
    return {"quick": quick, "started": "now", "command": "llmserve-bench suite",
            "git_commit": None, "cpu_model": "cpu", "cpus": 2, "threads_per_core": "1",
            "cpu_flags": [], "memory_gib": 1.0, "kernel": "k", "python": "3", "versions": {},
            "load_average_start": (0, 0, 0), "output_len": 3}


def run(url: str, specs: list[LoadSpec], **kwargs) -> list[dict]:
    async def main() -> list[dict]:
        target = await open_target(url)
        try:
            return await run_levels(target, specs, **kwargs)
        finally:
            await target.close()

    return asyncio.run(main())


@pytest.mark.parametrize("scheme", ["grpc", "grpc+unary", "http"])
def test_fixed_concurrency_counts_every_request_and_token(bench_server, scheme):
    prompts = prompt_set(8)
    specs = [LoadSpec(prompts, [OUTPUT_LEN] * 6, concurrency=1),
             LoadSpec(prompts, [OUTPUT_LEN] * 10, concurrency=4)]

    results = run(target_url(bench_server, scheme), specs, warmup=1)

    assert [r["concurrency"] for r in results] == [1, 4]
    for result, spec in zip(results, specs, strict=True):
        count = len(spec.output_lens)
        assert result["requests"] == result["completed"] == count
        assert result["errors"] == 0
        assert result["output_tokens"] == result["expected_output_tokens"] == count * OUTPUT_LEN
        if scheme == "grpc+unary":
            assert result["ttft_ms"] is None and result["ttft_outside_server_ms"] is None
            continue
        # One token per message from the fake engine.
        assert result["messages"] == count * OUTPUT_LEN
        # The server's own TTFT lies within the client's, request by request.
        outside = result["ttft_outside_server_ms"]
        assert result["ttft_ms"]["p50"] > outside["p50"] > 0
        assert outside["p90"] >= outside["p50"]


def test_poisson_rate_with_sampled_lengths(bench_server):
    lengths = output_lengths(12, OUTPUT_LEN, (2, 12), seed=3)
    spec = LoadSpec(prompt_set(4), lengths, concurrency=3, rate=200.0, seed=3)

    (result,) = run(f"grpc://{bench_server.target}", [spec], warmup=0)

    assert result["completed"] == 12 and result["errors"] == 0
    assert result["output_tokens"] == sum(lengths)
    assert len(set(lengths)) > 1


def test_errors_are_counted_not_raised(bench_server):
    # More tokens than the fake model's context: every request is INVALID_ARGUMENT.
    spec = LoadSpec(["x" * 100], [4000] * 3, concurrency=2)

    (result,) = run(f"grpc://{bench_server.target}", [spec], warmup=0)

    assert result["completed"] == 0 and result["errors"] == 3
    assert result["error_examples"][0].startswith("INVALID_ARGUMENT")


def test_cli_json_and_report(bench_server, tmp_path, capsys):
    out = tmp_path / "run.json"
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["run", f"grpc://{bench_server.target}", "--concurrency", "2",
                    "--num-requests", "4", "--output-len", "3", "--no-progress",
                    "--server-pid", str(os.getpid()), "--json", str(out)])
    assert exit_info.value.code == 0
    (level,) = json.loads(out.read_text())
    assert level["completed"] == 4 and level["output_tokens"] == 12
    assert level["server_cpu_s"] >= 0

    results = {
        "meta": report_meta(quick=True) | {"grpc_client_experiments": "-event_engine_client"},
        "runs": [{"model": "frontend", "target": "fake", "levels": [level], "error": None},
                 {"model": "frontend", "target": "echo", "levels": [], "error": "boom"}],
        "profile": None,
    }
    write_report(results, tmp_path / "BENCHMARKS.md", None)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "Quick run" in text and "| C=2 |" in text and "failed" in text
    assert "tok/msg" in text and "| 1.00 |" in text  # one token per message
    assert "`GRPC_EXPERIMENTS=-event_engine_client`, for grpc's iomgr TCP client" in text

    results["meta"]["grpc_client_experiments"] = "fuse_filters"  # the user's own
    write_report(results, tmp_path / "BENCHMARKS.md", None)
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "`GRPC_EXPERIMENTS=fuse_filters`, or aiohttp" in text and "iomgr" not in text


# What grpc's TCP tracer logs when a channel connects, by TCP client.
IOMGR_CONNECT, EVENT_ENGINE_CONNECT = "tcp_client_posix.cc", "EventEngine::Connect"


def _connect_trace(setup: str) -> str:
    """grpc's TCP trace of a fresh Python that runs `setup`, then connects a channel once."""
    script = setup + textwrap.dedent("""
        import grpc
        channel = grpc.insecure_channel("127.0.0.1:1")
        try:
            grpc.channel_ready_future(channel).result(timeout=1)
        except grpc.FutureTimeoutError:
            pass
    """)
    env = {k: v for k, v in os.environ.items() if k != grpc_settings.EXPERIMENTS_VARIABLE}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env | {"GRPC_TRACE": "tcp,event_engine", "GRPC_VERBOSITY": "debug"},
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_the_load_generator_connects_with_iomgrs_tcp_client():
    """`llmserve-bench` chooses it before its imports start grpc; its servers keep the default."""
    default = _connect_trace("")
    assert EVENT_ENGINE_CONNECT in default and IOMGR_CONNECT not in default
    chosen = _connect_trace(textwrap.dedent("""
        from llmserve_client.bench.cli import grpc_settings
        grpc_settings.use_iomgr_client()
        assert "GRPC_EXPERIMENTS" not in grpc_settings.server_environment()
    """))
    assert IOMGR_CONNECT in chosen and EVENT_ENGINE_CONNECT not in chosen


def test_grpc_experiments_set_by_the_user_stay_and_a_started_grpc_is_left_alone(monkeypatch):
    monkeypatch.setenv(grpc_settings.EXPERIMENTS_VARIABLE, "fuse_filters")
    grpc_settings.use_iomgr_client()
    assert grpc_settings.client_experiments() == "fuse_filters"
    assert grpc_settings.server_environment()["GRPC_EXPERIMENTS"] == "fuse_filters"

    monkeypatch.delenv(grpc_settings.EXPERIMENTS_VARIABLE)
    grpc_settings.use_iomgr_client()  # this test process imported grpc long ago
    assert grpc_settings.client_experiments() == ""


def test_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the bench extra draws the plot")
    from llmserve_client.bench.report import plot_results

    level = {"concurrency": 1, "output_tokens_per_s": 10.0, "ttft_ms": {"p50": 5.0}}
    plot_results({"meta": {"quick": False},
                  "runs": [{"model": "tiny", "target": "inprocess", "levels": [level]}]},
                 tmp_path / "bench.png")
    assert (tmp_path / "bench.png").stat().st_size > 0


def test_repeated_runs_keep_each_levels_median():
    from llmserve_client.bench.suite import median_levels

    def level(c: int, tokens_per_s: float) -> dict:
        return {"concurrency": c, "output_tokens_per_s": tokens_per_s}

    runs = [[level(1, 10.0), level(16, 300.0)],
            [level(1, 30.0), level(16, 100.0)],
            [level(1, 20.0), level(16, 200.0)]]

    assert median_levels(runs) == [
        {**level(1, 20.0), "repeats_output_tokens_per_s": [10.0, 30.0, 20.0]},
        {**level(16, 200.0), "repeats_output_tokens_per_s": [300.0, 100.0, 200.0]},
    ]
    assert median_levels(runs[:1]) == runs[0]


def test_repeated_runs_keep_every_repeats_ttft_and_cpu():
    from llmserve_client.bench.suite import median_levels

    def level(tokens_per_s: float, ttft: float, cpu: float) -> dict:
        return {"concurrency": 1, "output_tokens_per_s": tokens_per_s, "ttft_ms": {"p50": ttft},
                "server_cpu_ms_per_token": cpu}

    (median,) = median_levels([[level(10.0, 5.0, 0.3)], [level(30.0, 4.0, 0.1)],
                               [level(20.0, 6.0, 0.2)]])

    assert median["output_tokens_per_s"] == 20.0
    assert median["repeats_ttft_p50_ms"] == [5.0, 4.0, 6.0]
    assert median["repeats_server_cpu_ms_per_token"] == [0.3, 0.1, 0.2]


def test_goal_verdicts_tell_a_decisive_fail_from_one_within_the_spread():
    from llmserve_client.bench.report import Cell, Goal

    at_least_twice = Goal("twice the reference", lambda a, b: a / b, lambda x: x >= 2,
                          lambda x: f"{x:.1f}x")

    passing = at_least_twice.check([Cell("C=1", 4.0, 1.0, (4.0, 5.0), (1.0, 1.5))])
    # The medians fail (1.5x), but the best repeat against the worst one passes (3.0 / 1.0).
    close = at_least_twice.check([Cell("C=1", 4.0, 1.0, (4.0,), (1.0,)),
                                  Cell("C=16", 3.0, 2.0, (2.5, 3.0), (1.0, 2.0))])
    decisive = at_least_twice.check([Cell("C=1", 3.0, 2.0, (3.0, 3.2), (1.9, 2.0))])

    assert passing == ["- PASS: twice the reference (C=1 4.0x [2.7x to 5.0x])"]
    assert close == ["- FAIL within the run-to-run spread: twice the reference "
                     "(C=1 4.0x, C=16 1.5x [1.2x to 3.0x])"]
    assert decisive == ["- FAIL: twice the reference (C=1 1.5x [1.5x to 1.7x])"]
    assert at_least_twice.check([Cell("C=1", None, 1.0)]) == [
        "- not measured: twice the reference"]


def test_report_names_the_targets_that_ran_while_the_host_was_slower(tmp_path):
    from llmserve_client.bench.suite import speed_probe_ms

    def results(probes: dict[str, list[float] | float]) -> dict:
        runs = [{"model": "frontend", "target": target, "levels": [], "error": None,
                 "speed_probe_ms": ms} for target, ms in probes.items()]
        return {"meta": report_meta(quick=False), "runs": runs, "profile": None}

    def report(probes: dict[str, list[float] | float]) -> str:
        write_report(results(probes), tmp_path / "BENCHMARKS.md", None)
        return (tmp_path / "BENCHMARKS.md").read_text()

    slowed = report({"fake": [20.0, 21.0], "fake-merged": [22.0, 20.0], "echo": [21.0, 30.0]})
    steady = report({"fake": [20.0, 20.0], "echo": [21.0, 20.0]})
    before_rounds = report({"fake": 20.0, "echo": 30.0})  # JSON from before the rounds

    assert "> **The host slowed down** during the run" in slowed
    assert "before some rounds of frontend bare grpc.aio echo server (1.05×/1.50×)." in slowed
    assert "merging unread tokens (like vLLM) (1.10×" not in slowed
    assert ("Host speed before each target's rounds (a fixed Python loop, × its fastest time): "
            "frontend llmserve + fake engine, StreamGenerate 1.00×/1.05×") in slowed
    assert "slowed down" not in steady and "bare grpc.aio echo server 1.05×/1.00×" in steady
    assert "before some rounds of frontend bare grpc.aio echo server (1.50×)." in before_rounds
    assert speed_probe_ms() > 0


def run_frontend_rounds(monkeypatch, tmp_path, server_for, repeats: int, concurrency: int,
                        output_len: int):
    """The suite's frontend-only targets in rounds (quick budgets), with `server_for(module,
    log_dir, key, extra_args, real_server)` making each round's server."""
    import argparse

    from llmserve_client.bench import suite as suite_module

    real_server = suite_module.bench_grpc_server
    monkeypatch.setattr(suite_module, "bench_grpc_server",
                        lambda *args: server_for(*args, real_server))
    suite = suite_module.Suite(argparse.Namespace(
        quick=True, concurrency=[concurrency], work_dir=tmp_path, repeats=repeats,
        output_len=output_len))
    suite.run_frontend_only()
    return suite


def test_the_suite_runs_its_targets_in_rounds_in_alternating_order(tmp_path, monkeypatch):
    """Three rounds of the frontend-only targets: a server of its own per round, stopped after
    it; the middle round in the opposite order; each record keeps its three rounds."""
    started: list[ServerProcess] = []

    def recording_server(module: str, log_dir, key: str, extra_args,
                         real_server) -> ServerProcess:
        started.append(real_server(module, log_dir, key, extra_args))
        return started[-1]

    suite = run_frontend_rounds(monkeypatch, tmp_path, recording_server, repeats=3,
                                concurrency=2, output_len=4)

    order = ["fake", "fake-merged", "echo"]
    assert [server.name for server in started] == [*order, *order[::-1], *order]
    assert all(server.process.poll() is not None for server in started)
    assert [run["target"] for run in suite.runs] == order
    for run in suite.runs:
        assert run["error"] is None and len(run["speed_probe_ms"]) == 3
        (level,) = run["levels"]
        assert level["concurrency"] == 2 and level["errors"] == 0
        assert len(level["repeats_output_tokens_per_s"]) == 3


def test_a_target_whose_server_fails_to_start_is_not_retried_in_later_rounds(tmp_path,
                                                                              monkeypatch):
    started: list[str] = []

    def server(module: str, log_dir, key: str, extra_args, real_server) -> ServerProcess:
        started.append(key)
        if key == "echo":
            return ServerProcess(key, [sys.executable, "-c", "raise SystemExit(3)"],
                                 lambda: False, log_dir / "echo.log", "grpc://unused")
        return real_server(module, log_dir, key, extra_args)

    suite = run_frontend_rounds(monkeypatch, tmp_path, server, repeats=2, concurrency=1,
                                output_len=2)

    assert started == ["fake", "fake-merged", "echo", "fake-merged", "fake"]
    runs = {run["target"]: run for run in suite.runs}
    assert runs["echo"]["levels"] == []
    assert runs["echo"]["error"].startswith("server failed to start: echo exited with 3")
    assert len(runs["fake"]["levels"][0]["repeats_output_tokens_per_s"]) == 2


def test_the_ttft_probe_runs_one_token_requests_at_c1_after_the_levels(bench_server, tmp_path):
    out = tmp_path / "run.json"
    with pytest.raises(SystemExit) as exit_info:
        bench_main(["run", f"grpc://{bench_server.target}", "--concurrency", "2",
                    "--num-requests", "4", "--output-len", "3", "--ttft-probe", "2",
                    "--ttft-probe-requests", "3", "--no-progress", "--json", str(out)])
    assert exit_info.value.code == 0
    level, *probes = json.loads(out.read_text())
    assert "ttft_probe" not in level and level["output_tokens"] == 12
    assert [(p["ttft_probe"], p["concurrency"], p["completed"], p["output_tokens"])
            for p in probes] == [(True, 1, 3, 3)] * 2
    assert all(p["ttft_ms"]["p50"] > 0 for p in probes)


def test_the_suite_keeps_probe_runs_apart(tmp_path):
    import argparse

    from llmserve_client.bench.suite import Suite

    def level(ttft: float, probe: bool = False) -> dict:
        return {"concurrency": 1, "output_tokens_per_s": 100.0, "ttft_ms": {"p50": ttft},
                "ttft_outside_server_ms": {"p50": ttft / 10, "p90": ttft / 5},
                **({"ttft_probe": True} if probe else {})}

    suite = Suite(argparse.Namespace(quick=False, concurrency=[1], work_dir=tmp_path, repeats=2))
    for levels in ([level(80.0), level(40.0, True), level(11.0, True)],
                   [level(90.0), level(40.0, True), level(12.0, True)]):
        suite._measure("tiny", "llmserve-stream", lambda levels=levels: levels)
    suite._record("tiny", "llmserve-stream")

    (run,) = suite.runs
    assert run["levels"] == [{**level(80.0), "repeats_output_tokens_per_s": [100.0, 100.0],
                              "repeats_ttft_p50_ms": [80.0, 90.0]}]
    assert run["ttft_probe_p50_ms"] == [11.0, 12.0]  # each round's first probe run warms up
    assert run["ttft_probe_outside_server_p50_ms"] == [1.1, 1.2]


def test_the_c1_ttft_goal_uses_the_probe_when_both_targets_ran_it(bench_server, tmp_path):
    level = run(f"grpc://{bench_server.target}",
                [LoadSpec(prompt_set(2), [3, 3], concurrency=1)], warmup=0)[0]
    level["ttft_ms"]["p50"] = 30.0  # a C=1 level 30 ms over the limit's, below

    def results(probes: dict[str, list[float]]) -> dict:
        limit = {**level, "ttft_ms": {**level["ttft_ms"], "p50": 0.0}}
        runs = [{"model": "tiny", "target": target, "levels": [limit if target == "inprocess"
                                                               else level],
                 "error": None, **({"ttft_probe_p50_ms": probes[target]}
                                   if target in probes else {}),
                 **({"ttft_probe_outside_server_p50_ms": [0.9, 1.5, 1.2]}
                    if target == "llmserve-stream" else {})}
                for target in ("inprocess", "llmserve-stream")]
        return {"meta": report_meta(quick=False), "runs": runs, "profile": None}

    def report(probes: dict[str, list[float]]) -> str:
        write_report(results(probes), tmp_path / "BENCHMARKS.md", None)
        return (tmp_path / "BENCHMARKS.md").read_text()

    probed = report({"inprocess": [9.0, 10.0], "llmserve-stream": [11.0, 12.0]})
    unprobed = report({"inprocess": [9.0, 10.0]})

    # The probe's medians (11.5 - 9.5 ms), not the C=1 levels' 30 ms.
    assert ("- PASS: llmserve StreamGenerate TTFT p50 at most 3 ms over in-process at C=1 "
            "(one-token requests where the run has the probe) (tiny (probe) +2.0 ms "
            "[+1.0 ms to +3.0 ms])") in probed
    assert ("TTFT p50 of one-token requests at C=1, ms, per probe run (after a warm-up run): "
            "in-process AsyncLLM (the limit) 9.00, 10.0 (median 9.50); llmserve gRPC "
            "StreamGenerate 11.0, 12.0 (median 11.5).") in probed
    assert "(tiny +30.0 ms)" in unprobed and "- FAIL: llmserve StreamGenerate TTFT" in unprobed
    # The paired part: per probe run in the model's section, their median under the goal.
    assert ("Of that, the part outside the server's own clock (the client's TTFT minus the "
            "server's `timings.time_to_first_token_ms`") in probed
    assert "p50, ms: llmserve gRPC StreamGenerate 0.90, 1.50, 1.20 (median 1.20)." in probed
    assert ("  - paired per request, llmserve StreamGenerate's C=1 TTFT outside its server's "
            "own clock (gRPC in and out, loopback, the client): tiny 1.20 ms [0.90 to 1.50]"
            ) in probed


def test_the_cpu_goal_shows_what_its_budget_leaves_beyond_the_engine_client(bench_server,
                                                                           tmp_path):
    level = run(f"grpc://{bench_server.target}",
                [LoadSpec(prompt_set(2), [3, 3], concurrency=1)], warmup=0)[0]
    tokens = level["output_tokens"]

    def cpu(client_ms: float = 0.0, server_ms: float | None = None) -> dict:
        """The level with this much load-generator and server CPU per token."""
        return {**level, "client_cpu_s": client_ms * tokens / 1000,
                "server_cpu_ms_per_token": server_ms}

    runs = [{"model": model, "target": target, "levels": [levels], "error": None}
            for model, target, levels in (
                ("tiny", "inprocess", cpu(client_ms=0.04)),
                ("tiny", "vllm-serve", cpu(server_ms=0.1)),
                ("tiny", "llmserve-stream", cpu(server_ms=0.09)),
                ("frontend", "echo", cpu(server_ms=0.035)))]
    write_report({"meta": report_meta(quick=False), "runs": runs, "profile": None},
                 tmp_path / "BENCHMARKS.md", None)
    report = (tmp_path / "BENCHMARKS.md").read_text()

    assert ("- FAIL: llmserve frontend CPU per token ≤ 0.7× `vllm serve`'s (tiny C=1 0.90×)"
            in report)
    # 0.7 × 0.1 − 0.04 ms: next to it, what the echo server's messages alone cost.
    assert ("  - left per token for the frontend's own work within 0.7×, ms: 0.7× `vllm serve`'s "
            "CPU less the in-process target's (vLLM's engine client, which runs in either "
            "server's process, with the load generator): tiny C=1 0.030; the bare grpc.aio echo "
            "server's CPU per message, with nothing behind it: C=1 0.035") in report


def test_suite_refuses_zero_repeats(capsys):
    with pytest.raises(SystemExit):
        bench_main(["suite", "--repeats", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_a_terminated_suite_stops_the_servers_it_started(tmp_path):
    """SIGTERM while the suite starts its first (frontend-only) server: the suite exits and
    leaves no process behind."""
    args = [sys.executable, "-m", "llmserve_client.bench", "suite", "--models", "--quick",
            "--no-profile", "--work-dir", str(tmp_path), "--json", str(tmp_path / "bench.json"),
            "--markdown", str(tmp_path / "BENCHMARKS.md"), "--plot", str(tmp_path / "bench.png")]
    suite = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    descendants: list[psutil.Process] = []

    def fake_server_started() -> bool:
        descendants[:] = psutil.Process(suite.pid).children(recursive=True)
        return any("llmserve_client.bench.fake_server" in _command_line(p) for p in descendants)

    try:
        assert wait_until(fake_server_started, timeout=60), "the suite started no fake server"
        suite.send_signal(signal.SIGTERM)
        assert suite.wait(60) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(descendants, timeout=30)
        assert alive == []
    finally:
        if suite.poll() is None:
            suite.kill()
            suite.wait()
        for process in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()


def _command_line(process: psutil.Process) -> str:
    try:
        return " ".join(process.cmdline())
    except psutil.NoSuchProcess:
        return ""


def test_bench_servers_share_the_benchmarks_session_in_a_group_of_their_own(tmp_path):
    """Stoppable as one group; the same session, so the same scheduler autogroup as the load
    generator (a session of its own would cap a server at half the cores)."""
    server = ServerProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                           lambda: True, tmp_path / "sleeper.log", "grpc://unused")
    with server:
        assert os.getpgid(server.pid) == server.pid != os.getpgid(0)
        assert os.getsid(server.pid) == os.getsid(0)
    assert server.process.poll() is not None
