"""BENCHMARKS.md and its plot, from the suite's results (see `suite.py` for their shape)."""

import logging
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmserve_client.bench import grpc_settings

logger = logging.getLogger(__name__)

TARGET_LABELS = {
    "inprocess": "in-process AsyncLLM (the limit)",
    "llmserve-stream": "llmserve gRPC StreamGenerate",
    "llmserve-unary": "llmserve gRPC Generate (unary)",
    "llmserve-http": "llmserve HTTP",
    "vllm-serve": "`vllm serve` OpenAI HTTP, streaming (the peer)",
    "fake": "llmserve + fake engine, StreamGenerate",
    "fake-merged": "llmserve + fake engine merging unread tokens (like vLLM)",
    "echo": "bare grpc.aio echo server",
}
GROUP_TITLES = {
    "smollm2": "SmolLM2-135M-Instruct, float32 (engine-bound)",
    "tiny": "tiny converted Llama, 2 layers, dim 256, float32 (frontend-bound)",
    "frontend": "Frontend only: no engine",
}
LIMIT, PEER, ECHO = "inprocess", "vllm-serve", "echo"
# Issue 6: llmserve's frontend CPU per token at most this times `vllm serve`'s.
CPU_GOAL = 0.7
# A target whose speed probe took this much longer than the fastest one's ran on a slower host.
SLOW_HOST_RATIO = 1.25


def _number(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def _pct(stats: dict | None, key: str) -> float | None:
    return None if stats is None else stats.get(key)


def _levels(run: dict) -> dict[int, dict]:
    return {level["concurrency"]: level for level in run["levels"]}


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return ""
    return f"{value / reference:.2f}×"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _matrix(runs: dict[str, dict], concurrency: list[int], value: Callable[[dict], float | None],
            fmt: Callable[[float | None], str], references: tuple[str, ...]) -> list[str]:
    """Targets × concurrency; each cell the value and its ratios to the reference targets."""
    rows = []
    for key, run in runs.items():
        label = TARGET_LABELS.get(key, key)
        if run["error"]:
            rows.append([label, *(["failed"] * len(concurrency))])
            continue
        levels = _levels(run)
        row = [label]
        for c in concurrency:
            level = levels.get(c)
            cell = fmt(value(level) if level else None)
            ratios = []
            for reference in references:
                if reference in runs and reference != key and level:
                    other = _levels(runs[reference]).get(c)
                    ratios.append(_ratio(value(level), value(other) if other else None))
            ratios = [r for r in ratios if r]
            row.append(f"{cell} ({' / '.join(ratios)})" if ratios and cell != "—" else cell)
        rows.append(row)
    return _table(["target", *(f"C={c}" for c in concurrency)], rows)


def _tokens_per_message(level: dict) -> str:
    """Tokens per streamed message: above 1 when outputs were merged (unary calls: —)."""
    messages = level.get("messages")
    return f"{level['output_tokens'] / messages:.2f}" if messages else "—"


def _details(runs: dict[str, dict]) -> list[str]:
    rows = []
    for key, run in runs.items():
        for level in run["levels"]:
            ttft, itl, e2e = level["ttft_ms"], level["itl_ms"], level["e2e_ms"]
            rows.append([
                TARGET_LABELS.get(key, key), str(level["concurrency"]), str(level["completed"]),
                _number(level["requests_per_s"]), _number(level["output_tokens_per_s"]),
                " / ".join(_ms(_pct(ttft, p)) for p in ("p50", "p90", "p99")),
                _ms(_pct(level.get("ttft_outside_server_ms"), "p50")),
                " / ".join(_ms(_pct(itl, p)) for p in ("p50", "p99")),
                " / ".join(_ms(_pct(e2e, p)) for p in ("p50", "p99")),
                _tokens_per_message(level),
                _ms(level.get("server_cpu_ms_per_token")),
                _ms(_client_cpu_ms_per_token(level)),
                str(level["errors"]),
            ])
    return _table(["target", "C", "requests", "req/s", "tok/s", "TTFT p50/p90/p99 ms",
                   "TTFT outside the server p50 ms", "ITL p50/p99 ms", "e2e p50/p99 ms",
                   "tok/msg", "server CPU ms/tok", "client CPU ms/tok", "errors"], rows)


def _group_section(group: str, runs: dict[str, dict], concurrency: list[int]) -> list[str]:
    lines = [f"## {GROUP_TITLES.get(group, group)}", ""]
    failed = [f"{TARGET_LABELS.get(k, k)}: {r['error']}" for k, r in runs.items() if r["error"]]
    references = (ECHO,) if group == "frontend" else (LIMIT, PEER)
    names = " / ".join(f"× {TARGET_LABELS[r]}" for r in references)
    tokens = lambda level: level["output_tokens_per_s"]  # noqa: E731
    lines += [f"Output tokens/s ({names}):", ""]
    lines += _matrix(runs, concurrency, tokens, _number, references)
    lines += ["", f"TTFT p50, ms ({names}):", ""]
    lines += _matrix(runs, concurrency, lambda level: _pct(level["ttft_ms"], "p50"), _ms,
                     references)
    lines += _ttft_probe_lines(runs)
    cpu_runs = {k: r for k, r in runs.items() if k != LIMIT}
    reference = (ECHO,) if group == "frontend" else (PEER,)
    lines += ["", "Frontend CPU per output token, ms: CPU time of the server process, without "
              f"its engine-core child ({' / '.join(f'× {TARGET_LABELS[r]}' for r in reference)}):",
              ""]
    lines += _matrix(cpu_runs, concurrency, lambda level: level.get("server_cpu_ms_per_token"),
                     _ms, reference)
    lines += ["", "<details><summary>All numbers</summary>", ""]
    lines += _details(runs)
    lines += ["", "</details>", ""]
    if failed:
        lines += ["Failed: " + "; ".join(failed), ""]
    return lines


# Per one-token C=1 probe run (warm-up runs left out), a target's TTFT p50, and the p50 of the
# part of it outside the server's own clock (llmserve's targets only).
PROBE_TTFT = "ttft_probe_p50_ms"
PROBE_OUTSIDE_SERVER = "ttft_probe_outside_server_p50_ms"


def _probe_values(run: dict | None, field: str = PROBE_TTFT) -> tuple[float, ...]:
    """A run's values of a probe field, one per probe run; none for a failed run."""
    return tuple(run.get(field, ())) if run and not run["error"] else ()


def _per_run(values: Sequence[float]) -> str:
    return f"{', '.join(_ms(v) for v in values)} (median {_ms(statistics.median(values))})"


def _ttft_probe_lines(runs: dict[str, dict]) -> list[str]:
    probed = {key: values for key, run in runs.items() if (values := _probe_values(run))}
    if not probed:
        return []
    lines = ["", "TTFT p50 of one-token requests at C=1, ms, per probe run (after a warm-up run): "
             + "; ".join(f"{TARGET_LABELS.get(key, key)} {_per_run(values)}"
                         for key, values in probed.items()) + "."]
    outside = {key: values for key, run in runs.items()
               if (values := _probe_values(run, PROBE_OUTSIDE_SERVER))}
    if outside:
        lines += ["", "Of that, the part outside the server's own clock (the client's TTFT minus "
                  "the server's `timings.time_to_first_token_ms`, which starts when the call "
                  "arrives; paired per request, so the host's drift between targets stays out), "
                  "p50, ms: " + "; ".join(f"{TARGET_LABELS.get(key, key)} {_per_run(values)}"
                                          for key, values in outside.items()) + "."]
    return lines


def _level(groups: dict, group: str, target: str, c: int) -> dict | None:
    run = groups.get(group, {}).get(target)
    return _levels(run).get(c) if run and not run["error"] else None


def level_value(level: dict, field: str, pct: str | None = None) -> float | None:
    """A level's `field`, or its percentile `pct` (a latency's "p50")."""
    value = level.get(field)
    return _pct(value, pct) if pct else value


def _client_cpu_ms_per_token(level: dict) -> float | None:
    """The load generator's process CPU per output token (with the in-process target, the
    engine's client too)."""
    tokens = level["output_tokens"]
    return level["client_cpu_s"] * 1000 / tokens if tokens else None


def _value(groups: dict, group: str, target: str, c: int, field: str, pct: str | None = None):
    level = _level(groups, group, target, c)
    return None if level is None else level_value(level, field, pct)


# The fields the suite keeps for every repeat (`suite.median_levels`), and under which key: the
# goals show their spread from them.
REPEATS_KEYS = {
    ("output_tokens_per_s", None): "repeats_output_tokens_per_s",
    ("ttft_ms", "p50"): "repeats_ttft_p50_ms",
    ("server_cpu_ms_per_token", None): "repeats_server_cpu_ms_per_token",
}


@dataclass(frozen=True)
class Cell:
    """One goal's comparison at one place: llmserve's value and the reference's, each with the
    values of every repeat of its run (just the value itself when the target ran once)."""

    context: str
    value: float | None
    reference: float | None
    value_repeats: tuple[float, ...] = ()
    reference_repeats: tuple[float, ...] = ()


def _repeats(groups: dict, group: str, target: str, c: int, field: str,
             pct: str | None = None) -> tuple[float, ...]:
    level = _level(groups, group, target, c)
    if level is None:
        return ()
    values = [v for v in level.get(REPEATS_KEYS.get((field, pct)), ()) if v is not None]
    median = _value(groups, group, target, c, field, pct)
    return tuple(values) or ((median,) if median is not None else ())


def _cell(context: str, groups: dict, target: tuple[str, str, int],
          reference: tuple[str, str, int], field: str, pct: str | None = None) -> Cell:
    """The cell comparing `field` of target (group, key, C) against reference (group, key, C)."""
    return Cell(context, _value(groups, *target, field, pct),
                _value(groups, *reference, field, pct), _repeats(groups, *target, field, pct),
                _repeats(groups, *reference, field, pct))


def _c1_ttft_cell(groups: dict, model: str) -> Cell:
    """llmserve StreamGenerate's C=1 TTFT p50 against in-process: from the one-token probe
    (median and every run) when both targets ran it, else from the C=1 level."""
    ours = _probe_values(groups[model].get("llmserve-stream"))
    limit = _probe_values(groups[model].get(LIMIT))
    if ours and limit:
        return Cell(f"{model} (probe)", statistics.median(ours), statistics.median(limit),
                    ours, limit)
    return _cell(model, groups, (model, "llmserve-stream", 1), (model, LIMIT, 1), "ttft_ms",
                 "p50")


def _messages_per_s(groups: dict, target: str, c: int) -> float | None:
    messages = _value(groups, "frontend", target, c, "messages")
    duration = _value(groups, "frontend", target, c, "duration_s")
    return messages / duration if messages and duration else None


def _messages_cell(groups: dict, target: str, reference: str, c: int) -> Cell:
    """messages/s of two frontend-only targets; each repeat's from its tokens/s (same tokens per
    message as the median run)."""

    def repeats(key: str) -> tuple[float, ...]:
        per_s = _messages_per_s(groups, key, c)
        tokens_per_s = _value(groups, "frontend", key, c, "output_tokens_per_s")
        runs = _repeats(groups, "frontend", key, c, "output_tokens_per_s")
        return tuple(t * per_s / tokens_per_s for t in runs) if per_s and tokens_per_s else ()

    return Cell(f"C={c}", _messages_per_s(groups, target, c),
                _messages_per_s(groups, reference, c), repeats(target), repeats(reference))


@dataclass(frozen=True)
class Goal:
    """A target of issue 6: a measure of (llmserve's value, the reference), when it passes,
    and how it reads."""

    label: str
    measure: Callable[[float, float], float]
    passes: Callable[[float], bool]
    show: Callable[[float], str]

    def check(self, cells: list[Cell]) -> list[str]:
        """PASS/FAIL/not measured, with each cell's measure and its range over the repeats.

        A FAIL where some repeat of llmserve against some repeat of the reference passes is
        marked as within the run-to-run spread: another run could pass it.
        """
        measured = [cell for cell in cells if cell.value is not None
                    and cell.reference is not None]
        if not measured:
            return [f"- not measured: {self.label}"]
        details, failed, decisive = [], False, False
        for cell in measured:
            value = self.measure(cell.value, cell.reference)
            spread = [self.measure(a, b) for a in cell.value_repeats
                      for b in cell.reference_repeats]
            text = f"{cell.context} {self.show(value)}"
            if len(spread) > 1 and min(spread) != max(spread):
                text += f" [{self.show(min(spread))} to {self.show(max(spread))}]"
            details.append(text)
            if not self.passes(value):
                failed = True
                decisive |= not any(self.passes(x) for x in spread)
        verdict = ("FAIL" if decisive else "FAIL within the run-to-run spread" if failed
                   else "PASS")
        return [f"- {verdict}: {self.label} ({', '.join(details)})"]


def _ratio_goal(label: str, passes: Callable[[float], bool]) -> Goal:
    return Goal(label, lambda a, b: a / b, passes, lambda x: f"{x:.2f}×")


def _goals_section(groups: dict, concurrency: list[int]) -> list[str]:
    """Issue 6's targets, checked against this run's numbers."""
    stream = "llmserve-stream"
    lines = ["## Goals (issue 6), checked against this run", "",
             "Each cell: the measure between the median rounds, then [its lowest to its highest "
             "between any round of llmserve and any round of the reference]. A FAIL that "
             "some pair of rounds would pass is marked *within the run-to-run spread*.", ""]
    models = [m for m in ("smollm2", "tiny") if m in groups]

    def versus(reference: str, field: str, pct: str | None = None) -> list[Cell]:
        return [_cell(f"{m} C={c}", groups, (m, stream, c), (m, reference, c), field, pct)
                for m in models for c in concurrency]

    lines += _ratio_goal("llmserve StreamGenerate tokens/s above `vllm serve` at every C, both "
                         "models", lambda x: x > 1).check(versus(PEER, "output_tokens_per_s"))
    lines += _ratio_goal("llmserve StreamGenerate TTFT p50 below `vllm serve` at every C, both "
                         "models", lambda x: x < 1).check(versus(PEER, "ttft_ms", "p50"))
    lines += _ratio_goal(f"llmserve frontend CPU per token ≤ {CPU_GOAL}× `vllm serve`'s",
                         lambda x: x <= CPU_GOAL).check(versus(PEER, "server_cpu_ms_per_token"))
    lines += _cpu_budget_lines(groups, models, concurrency)
    for model, goal in (("smollm2", 0.95), ("tiny", 0.9)):
        lines += _ratio_goal(
            f"llmserve StreamGenerate ≥ {goal}× in-process tokens/s at C=64 on {model}",
            lambda x, goal=goal: x >= goal,
        ).check([_cell("C=64", groups, (model, stream, 64), (model, LIMIT, 64),
                       "output_tokens_per_s")])
    lines += Goal("llmserve StreamGenerate TTFT p50 at most 3 ms over in-process at C=1 "
                  "(one-token requests where the run has the probe)",
                  lambda a, b: a - b, lambda x: x <= 3, lambda x: f"{x:+.1f} ms").check(
        [_c1_ttft_cell(groups, m) for m in models])
    lines += _outside_server_lines(groups, models)
    lines += _ratio_goal("frontend only: llmserve + fake engine ≥ 0.8× the echo server's "
                         "messages/s", lambda x: x >= 0.8).check(
        [_messages_cell(groups, "fake", ECHO, c) for c in concurrency])
    merged = [(_value(groups, "frontend", "fake-merged", c, "output_tokens_per_s"), c)
              for c in concurrency]
    best, best_c = max(((v, c) for v, c in merged if v is not None), default=(None, None))
    lines += Goal("frontend only: ≥ 50,000 tokens/s (with coalescing: unread tokens merged)",
                  lambda a, b: a, lambda x: x >= 50_000, lambda x: f"{x:,.0f} tok/s").check(
        [Cell(f"best (C={best_c})", best, 1.0,
              _repeats(groups, "frontend", "fake-merged", best_c, "output_tokens_per_s"),
              (1.0,))] if best is not None else [])
    return [*lines, ""]


def _cpu_budget_lines(groups: dict, models: list[str], concurrency: list[int]) -> list[str]:
    """Under the CPU goal: what its budget leaves for a frontend's own work, once vLLM's engine
    client (in the server's process in both servers; the in-process target's CPU) is paid,
    next to what the bare echo server's grpc.aio messages cost alone."""
    left = []
    for m in models:
        for c in concurrency:
            peer = _value(groups, m, PEER, c, "server_cpu_ms_per_token")
            limit = _level(groups, m, LIMIT, c)
            engine_client = _client_cpu_ms_per_token(limit) if limit else None
            if peer is not None and engine_client is not None:
                left.append(f"{m} C={c} {CPU_GOAL * peer - engine_client:.3f}")
    if not left:
        return []
    echo = [f"C={c} {cpu:.3f}" for c in concurrency
            if (cpu := _value(groups, "frontend", ECHO, c, "server_cpu_ms_per_token"))
            is not None]
    line = (f"  - left per token for the frontend's own work within {CPU_GOAL}×, ms: "
            f"{CPU_GOAL}× `vllm serve`'s CPU less the in-process target's (vLLM's engine client, "
            "which runs in either server's process, with the load generator): " + ", ".join(left))
    if echo:
        line += ("; the bare grpc.aio echo server's CPU per message, with nothing behind it: "
                 + ", ".join(echo))
    return [line]


def _outside_server_lines(groups: dict, models: list[str]) -> list[str]:
    """Under the C=1 TTFT goal: the part of that overhead measured within each request."""
    measured = [(m, values) for m in models
                if (values := _probe_values(groups[m].get("llmserve-stream"),
                                            PROBE_OUTSIDE_SERVER))]
    if not measured:
        return []
    return ["  - paired per request, llmserve StreamGenerate's C=1 TTFT outside its server's own "
            "clock (gRPC in and out, loopback, the client): " + ", ".join(
                f"{m} {_ms(statistics.median(v))} ms [{_ms(min(v))} to {_ms(max(v))}]"
                for m, v in measured)
            + "; the rest of the overhead is what the server does before the engine "
            "(validation, tokenization) beyond what the in-process engine does with a text "
            "prompt (tokenization)"]


def _profile_section(profile: dict) -> list[str]:
    level = profile["level"]
    lines = [
        "## Where llmserve's frontend CPU goes",
        "",
        f"py-spy sampled the llmserve server process (not its engine core) at "
        f"{profile['rate_hz']} Hz, idle time excluded, through one run at "
        f"C={profile['concurrency']} on the tiny model ({level['completed']} requests, "
        f"{_number(level['output_tokens_per_s'])} tok/s while profiled, "
        f"{profile['samples']} samples). A Python frame's self time includes the C code it "
        "calls (grpc's Cython core under `context.write`, protobuf's upb). Self time by the "
        "leaf frame's package:",
        "",
    ]
    lines += _table(["where", "% of samples"],
                    [[name, f"{share:.1f}"] for name, share in profile["categories"]])
    lines += ["", "Top functions by self time:", ""]
    lines += _table(["function", "% self"],
                    [[f"`{name}`", f"{share:.1f}"] for name, share in profile["self"]])
    lines += ["", "Top functions by inclusive time (event loop, thread and entry-point frames "
              "left out):", ""]
    lines += _table(["function", "% inclusive"],
                    [[f"`{name}`", f"{share:.1f}"] for name, share in profile["inclusive"]])
    return [*lines, ""]


def _speed_probes(runs: list[dict]) -> list[tuple[str, list[float]]]:
    """(target, its speed probe before each round × the fastest probe of the run), for runs
    that have them (one number, not a list, in JSON from before the rounds)."""
    probes = [(f"{run['model']} {TARGET_LABELS.get(run['target'], run['target'])}",
               ms if isinstance(ms, list) else [ms])
              for run in runs if (ms := run.get("speed_probe_ms"))]
    fastest = min((ms for _, values in probes for ms in values), default=0)
    return [(name, [ms / fastest for ms in values]) for name, values in probes]


def _ratios(ratios: list[float]) -> str:
    return "/".join(f"{ratio:.2f}×" for ratio in ratios)


def _slow_host_warning(runs: list[dict]) -> list[str]:
    slow = [f"{name} ({_ratios(ratios)})" for name, ratios in _speed_probes(runs)
            if max(ratios) >= SLOW_HOST_RATIO]
    if not slow:
        return []
    return [f"> **The host slowed down** during the run: a fixed Python loop took at least "
            f"{SLOW_HOST_RATIO:.2f}× its fastest time before some rounds of "
            f"{', '.join(slow)}. Those rounds ran on a slower machine than the others; compare "
            "them with care.", ""]


def _speed_probe_line(runs: list[dict]) -> list[str]:
    probes = _speed_probes(runs)
    if not probes:
        return []
    return ["- Host speed before each target's rounds (a fixed Python loop, × its fastest "
            "time): " + ", ".join(f"{name} {_ratios(ratios)}" for name, ratios in probes)]


def _repeats_note(repeats: int) -> str:
    if repeats <= 1:
        return ""
    return (f"; the targets ran in {repeats} rounds, each target once per round and in the "
            "opposite order every other round, so that a drift of the host's speed falls on "
            "every target alike; each cell is the round with the median tokens/s at that C "
            "(all rounds' tokens/s in the JSON)")


def _stream_interval_note(stream_interval: int) -> str:
    if stream_interval <= 1:
        return ""
    return (f"; every engine, llmserve's and `vllm serve`'s included, with vLLM's "
            f"`--stream-interval {stream_interval}`: at most {stream_interval} tokens per "
            "streamed message")


def _grpc_client_note(experiments: str) -> str:
    if not experiments:
        return ""
    note = f" with `GRPC_EXPERIMENTS={experiments}`"
    if experiments == grpc_settings.LOAD_GENERATOR_EXPERIMENTS:
        note += (", for grpc's iomgr TCP client, which costs it a third less CPU per message "
                 "than the default EventEngine one here")
    return note


def markdown(results: dict, plot: Path | None, markdown_path: Path) -> str:
    meta = results["meta"]
    groups: dict[str, dict[str, dict]] = {}
    for run in results["runs"]:
        groups.setdefault(run["model"], {})[run["target"]] = run
    concurrency = sorted({level["concurrency"] for run in results["runs"]
                          for level in run["levels"]})
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items() if v)
    lines = ["# Benchmarks", ""]
    if meta["quick"]:
        lines += ["> **Quick run** (`make bench-quick`): few requests per level, noisy. "
                  "`make bench` gives the full numbers.", ""]
    # The load at the end includes the benchmark's own processes; at the start it is others'.
    load_before = meta["load_average_start"][0]
    if load_before >= 1.0:
        lines += [f"> **Noisy**: other processes were running when the benchmark started (1-minute "
                  f"load average {load_before:.1f} on {meta['cpus']} CPUs); compare targets "
                  "within one run, and rerun on an idle machine for absolute numbers.", ""]
    lines += _slow_host_warning(results["runs"])
    lines += [
        f"Measured {meta['started']} (commit {meta['git_commit'] or 'unknown'}) by "
        f"`{meta['command']}`; reproduce with `make bench` (`make bench-quick` for a short "
        f"run). Raw results: `{meta.get('results_json', 'docs/bench.json')}`.",
        "",
        "Every target ran on this machine, one at a time, with the same prompts, output "
        "lengths and engine settings (vLLM float32, eager mode, 2 GiB KV cache, greedy "
        "decoding, every request exactly "
        f"{meta['output_len']} output tokens with `ignore_eos`"
        f"{_stream_interval_note(meta.get('stream_interval', 1))}). The load "
        "generator (`llmserve-bench` on uvloop: grpc.aio with one channel"
        f"{_grpc_client_note(meta.get('grpc_client_experiments', ''))}, or aiohttp with a "
        "connection pool) shares the cores with the server and its engine core, so a "
        "frontend's CPU cost shows up as lost throughput; every process runs in the "
        "benchmark's session, so the kernel shares the cores between their threads alike (a "
        "session of its own is a scheduler autogroup of its own). vLLM's CPU worker runs on "
        "one core and leaves the other to the frontend; in every target the engine-core "
        "process is bound to the worker's core (`llmserve serve` does it itself, "
        "`--bind-engine-core`; the harness does it for `vllm serve` and the in-process "
        "engine), since its busy-wait on the "
        "frontend's core stalls streams for whole requests. Each level is a fixed number of "
        "concurrent requests (C); each server gets 2 short warm-up requests first"
        f"{_repeats_note(meta.get('repeats', 1))}. With vLLM's "
        "CPU worker busy-polling a core, a single cell can differ a lot from one run to the "
        "next on 2 CPUs: compare targets within a run, and repeat a run before trusting one "
        "cell.",
        "",
        "- **in-process AsyncLLM**: vLLM's engine driven from the benchmark process itself, no "
        "network, no serialization: the limit.",
        "- **`vllm serve`**: `python -m vllm.entrypoints.openai.api_server`, streaming "
        "`/v1/completions` with the final usage chunk.",
        "- **Frontend only**: llmserve with a fake engine that yields tokens at once "
        "(`python -m llmserve_client.bench.fake_server`) against a bare grpc.aio server that "
        "streams the same messages with nothing behind it (`echo_server`), both on uvloop like "
        "`llmserve serve`: the gRPC limit in Python on these cores. One token per message "
        "there, except for the fake engine `--merge-unread-outputs`, which streams like vLLM: "
        "one engine loop gives every stream a token per event-loop turn, and tokens a stream "
        "has not sent yet (because its previous message is still being written) go out "
        "together in its next message (`tok/msg` in the details).",
        "- TTFT: request sent → first streamed message with a token. ITL: gap between "
        "streamed messages. Unary `Generate` has neither.",
        "- TTFT probe: after their levels, the in-process engine, llmserve StreamGenerate and "
        "`vllm serve` run one-token requests at C=1 (`--ttft-probe`), per round a warm-up run "
        "and then the runs listed in each model's section: TTFT p50s with next to no decoding "
        "in them and many requests behind them, whose medians the C=1 TTFT goal compares. "
        "llmserve's responses also carry the server's own TTFT, from the call's arrival, so "
        "for its targets the client's TTFT minus the server's splits off, request by request, "
        "the part that the network and the protocol on both sides add.",
        "",
        "## Machine",
        "",
        f"- CPU: {meta['cpu_model']}, {meta['cpus']} logical CPUs "
        f"({meta['threads_per_core']} thread(s) per core), "
        f"{', '.join(meta['cpu_flags']) or 'no AVX2/AVX-512 flags seen'}",
        f"- Memory: {meta['memory_gib']} GiB; Linux {meta['kernel']}; Python {meta['python']}",
        f"- {versions}",
        "- Load average (1/5/15 min) at start: "
        f"{' / '.join(f'{x:.2f}' for x in meta['load_average_start'])}, at the end: "
        f"{' / '.join(f'{x:.2f}' for x in meta.get('load_average_end', ()))}",
        *_speed_probe_line(results["runs"]),
        "",
    ]
    if plot is not None:
        relative = os.path.relpath(plot, markdown_path.parent)
        lines += [f"![Output tokens/s and TTFT p50 against concurrency]({relative})", ""]
    lines += _goals_section(groups, concurrency)
    for group in ("smollm2", "tiny", "frontend"):
        if group in groups:
            lines += _group_section(group, groups[group], concurrency)
    if results.get("profile"):
        lines += _profile_section(results["profile"])
    return "\n".join(lines)


def plot_results(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, dict[str, dict]] = {}
    for run in results["runs"]:
        if run["levels"]:
            groups.setdefault(run["model"], {})[run["target"]] = run
    order = [g for g in ("smollm2", "tiny", "frontend") if g in groups]
    figure, axes = plt.subplots(len(order), 2, figsize=(12, 4 * len(order)), squeeze=False)
    for row, group in zip(axes, order, strict=True):
        for key, run in groups[group].items():
            levels = sorted(run["levels"], key=lambda level: level["concurrency"])
            xs = [level["concurrency"] for level in levels]
            style = {"marker": "o", "label": TARGET_LABELS.get(key, key).replace("`", ""),
                     "color": f"C{list(TARGET_LABELS).index(key) % 10}"
                     if key in TARGET_LABELS else None}
            row[0].plot(xs, [level["output_tokens_per_s"] for level in levels], **style)
            ttft = [(level["concurrency"], level["ttft_ms"]["p50"]) for level in levels
                    if level["ttft_ms"]]
            if ttft:
                row[1].plot(*zip(*ttft, strict=True), **style)
        title = GROUP_TITLES.get(group, group)
        row[0].set(title=f"{title}\noutput tokens/s", xscale="log", xlabel="concurrency")
        row[1].set(title=f"{title}\nTTFT p50 (ms)", xscale="log", yscale="log",
                   xlabel="concurrency")
        ticks = sorted({level["concurrency"] for run in groups[group].values()
                        for level in run["levels"]})
        for axis in row:
            axis.set_xticks(ticks, [str(t) for t in ticks])
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize=7)
    if results["meta"]["quick"]:
        figure.suptitle("quick run: few requests per level, noisy")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def write_report(results: dict, markdown_path: Path, plot: Path | None) -> None:
    if plot is not None:
        plot_results(results, plot)
    markdown_path.write_text(markdown(results, plot, markdown_path) + "\n")
    logger.info("wrote %s%s", markdown_path, f" and {plot}" if plot else "")
