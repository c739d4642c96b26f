"""Renders RELIABILITY.md from the results the reliability tests recorded in their last run.

    python -m tests.reliability.report [RESULTS_DIR] [OUTPUT]

Defaults: reliability-results/ (or $LLMSERVE_RELIABILITY_RESULTS) and RELIABILITY.md at the
repository root. Only what was recorded is reported; a test without a result says so.
"""

import json
import sys
from pathlib import Path

from tests.reliability.results import ROOT, results_dir

# Result name → the test that records it, in the order of the report.
TESTS = {
    "fuzz_grpc": "tests/reliability/test_fuzz.py::"
                 "test_fuzzed_generate_requests_get_ok_or_invalid_argument",
    "fuzz_tokenizer": "tests/reliability/test_fuzz.py::"
                      "test_fuzzed_tokenize_and_detokenize_get_ok_or_invalid_argument",
    "fuzz_http": "tests/reliability/test_fuzz.py::"
                 "test_fuzzed_http_generate_bodies_get_200_400_or_413",
    "fuzz_wire": "tests/reliability/test_fuzz.py::"
                 "test_garbage_bytes_and_truncated_http2_frames_do_not_hurt_the_server",
    "disconnect_storm": "tests/reliability/test_load.py::"
                        "test_disconnect_storm_leaves_nothing_behind",
    "slow_consumer": "tests/reliability/test_load.py::"
                     "test_slow_consumer_does_not_hold_up_others_and_expires",
    "overload": "tests/reliability/test_load.py::"
                "test_overload_rejects_the_excess_at_once_and_completes_the_rest",
    "client_restart": "tests/reliability/test_restart.py::test_clients_ride_out_server_restarts",
    "soak": "tests/reliability/test_soak.py::test_soak_at_64_concurrent_requests",
    "lifecycle_repeated": "tests/reliability/test_lifecycle_repeated.py::"
                          "test_lifecycle_repeated",
}

HEADER = """\
# Reliability

What llmserve does under load, faults and bad input, as measured by the tests in
`tests/reliability/` on their last run. This file is generated from the results those tests
record (`reliability-results/*.json`) by `python -m tests.reliability.report`; the numbers
below are what that run saw, nothing else.

Reproduce: `make test` runs the fast tests (fuzzing, disconnect storm, slow consumer,
overload, restarts: about 100 s on 2 cores), `make test-slow` the slow ones (soak 10.5 min,
15 lifecycle runs 8 min), then `.venv/bin/python -m tests.reliability.report`.
All traffic goes to 127.0.0.1; every loop is bounded in count and time; every server started is
stopped and checked to leave no `VLLM::EngineCore` process. No test asserts on timing.
"""

# (found by, symptom, fix): the bugs these tests found, all fixed.
FOUND = [
    ("gRPC fuzzing",
     "a `request_id` with control characters, non-ASCII or too long: `INTERNAL` (\"Invalid "
     "metadata\", the x-request-id trailer) and HTTP 500 (response header)",
     "`validation.py`: at most 128 printable ASCII characters, else `INVALID_ARGUMENT`; the "
     "Python client no longer puts such ids in metadata"),
    ("gRPC fuzzing",
     "~2% of short `time_limit_ms` streams ended `INTERNAL` (`TOO_MANY_OPERATIONS`): the time "
     "limit cancelled a write in progress, then the TIME_LIMIT message was written",
     "`generation.py`: deadline and time limit stop generation between outputs, never inside "
     "a write"),
    ("HTTP fuzzing (its slowness)",
     "every HTTP response waited ~40 ms for the client's delayed ACK (200 requests: 9.2 s, now "
     "0.19 s): the HTTP listening socket lacked `TCP_NODELAY`",
     "`http_api.py`: `TCP_NODELAY` on the listening socket"),
    ("slow consumer",
     "a stream blocked on flow control whose deadline passed (or whose client cancelled) was "
     "counted `INTERNAL`, with an \"unexpected error\" traceback in the log",
     "`servicer.py`: such a failed write is `DEADLINE_EXCEEDED` or `CANCELLED`"),
    ("client restart",
     "streams still running when the drain period ended read `UNAVAILABLE` \"Cancelling all "
     "calls\" (HTTP: a dropped connection)",
     "`app.py`, `generation.py`: they are cut off with `UNAVAILABLE` \"the server is shutting "
     "down: the request did not finish within the drain period\" (HTTP: that error line)"),
    ("client restart",
     "retried unary calls still failed across restarts: the channel's 1 s reconnect backoff "
     "outlasted the retries, and a stopping server's gRPC core sends `CANCELLED` to calls that "
     "arrived as it stopped",
     "client: reconnect backoff 0.2-2 s like the retries; `CANCELLED` from the server is "
     "retried too"),
]
FOUND_FOOTER = """\
Regression tests: `test_request_ids_that_cannot_be_echoed_are_invalid_arguments` and
`test_time_limits_that_expire_mid_write_end_streams_with_time_limit` (test_fuzz.py),
`test_a_stalled_stream_ends_as_expired_or_cancelled` (test_stalled_streams.py), the restart
test, and `test_stop_aborts_a_stream_still_running_after_the_grace_period`
(tests/integration/test_http.py). A `llmserve_asyncio_tasks` gauge was added to the metrics
so that leaked tasks show.
"""

NOTES = """\
## Limits and observations

- A client whose deadline fires first cancels the call a little before the server's copy of
  the deadline (which started when the request arrived) runs out; the server counts a
  cancellation within 50 ms of its deadline as `DEADLINE_EXCEEDED`. Calls a client cancels
  before their handler starts never reach the server's counters.
- vLLM does not apply back-pressure: for a client that stops reading, the engine keeps
  generating into its output buffer until the request finishes or the deadline aborts it.
- The soak bounds RSS growth between two idle points; its samples under load show the trend
  in between (the "RSS trend" line of the soak above). A slow climb within the 5% bound over
  10 minutes would need a longer soak to tell a leak from allocator warm-up.
- The client's retry policy (3 retries, 0.2-2 s backoff) covers blips: a server draining, a
  port handed over, a restart within about a second. A longer outage (a real restart reloads the
  model) fails the calls fast with `UNAVAILABLE`; streams are never retried.
"""


def _value(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list):
        return ", ".join(_value(v) for v in value) or "none"
    return str(value)


def _table(rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_value(row[c]) for c in columns) + " |" for row in rows]
    return lines


def _outcome(outcome: dict) -> list[str]:
    lines = []
    for key, value in outcome.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            lines += [f"- {key}:", "", *("  " + line for line in _table(value)), ""]
        elif isinstance(value, dict) and any(isinstance(v, dict) for v in value.values()):
            lines.append(f"- {key}:")
            lines += [f"  - {k}: {_value(v)}" for k, v in value.items()]
        else:
            lines.append(f"- {key}: {_value(value)}")
    return lines


def _trend(outcome: dict) -> str | None:
    """The soak's RSS under load, first sample to last."""
    samples = outcome.get("samples under load") or []
    if len(samples) < 2:
        return None
    first, last = samples[0], samples[-1]
    change = last["rss_mib"] - first["rss_mib"]
    return (f"- RSS trend under load: {first['rss_mib']:g} MiB at minute {first['minute']:g}, "
            f"{last['rss_mib']:g} MiB at minute {last['minute']:g} ({change:+.1f} MiB)")


def render(directory: Path) -> str:
    results = {}
    for path in sorted(directory.glob("*.json")):
        data = json.loads(path.read_text())
        results[data["name"]] = data
    names = [*TESTS, *sorted(set(results) - set(TESTS))]
    lines = [HEADER, "## Summary", "",
             "| Test | Kind | Result | Run at |", "|---|---|---|---|"]
    for name in names:
        data = results.get(name)
        if data is None:
            lines.append(f"| {name} | | not run | |")
            continue
        kind = "slow" if data["slow"] else "`make test`"
        verdict = "passed" if data.get("passed", True) else "**FAILED**"
        lines.append(f"| [{data['title']}](#{name.replace('_', '-')}) | {kind} | {verdict} | "
                     f"{data['finished_at']} |")
    machines = sorted({data["machine"] for data in results.values()})
    lines += ["", f"Machine: {'; '.join(machines) or 'no results'}.", ""]
    for name in names:
        data = results.get(name)
        lines.append(f'<a id="{name.replace("_", "-")}"></a>')
        if data is None:
            lines += [f"## {name}", "", f"Not run in the last run (`{TESTS.get(name, name)}`).",
                      ""]
            continue
        lines += [f"## {data['title']}", "", f"`{TESTS.get(name, name)}`", "",
                  f"**Load:** {data['load']}", "",
                  f"**Faults and bad inputs:** {data['faults']}", "",
                  "**Measured:**", "", *_outcome(data["outcome"])]
        if trend := _trend(data["outcome"]):
            lines.append(trend)
        lines.append("")
    lines += ["## Bugs these tests found (fixed)", "", "| Found by | Symptom | Fix |",
              "|---|---|---|", *(f"| {a} | {b} | {c} |" for a, b, c in FOUND), "",
              FOUND_FOOTER, NOTES]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str]) -> None:
    directory = Path(argv[0]) if argv else results_dir()
    output = Path(argv[1]) if len(argv) > 1 else ROOT / "RELIABILITY.md"
    output.write_text(render(directory))
    print(f"wrote {output} from {directory}")


if __name__ == "__main__":
    main(sys.argv[1:])
