"""`llmserve-bench`: run the load generator against one target, or the whole benchmark suite.

    llmserve-bench run grpc://127.0.0.1:8001 --concurrency 1 16 --json out.json
    llmserve-bench run openai://127.0.0.1:8000 --rate 4 --num-requests 100
    llmserve-bench inprocess --model DIR --concurrency 1 16     (vLLM's AsyncLLM, no network)
    llmserve-bench suite [--quick]                               (what `make bench` runs)
    llmserve-bench report bench.json                             (BENCHMARKS.md and the plot again)
"""

import argparse
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from llmserve_client.bench import grpc_settings
from llmserve_client.bench.loadgen import LoadSpec, run_async, run_levels
from llmserve_client.bench.prompts import output_lengths, prompt_set

logger = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = (1, 16, 64, 256)
QUICK_CONCURRENCY = (1, 16)


def length_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        result = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LOW:HIGH, got {text!r}") from None
    if not 0 < result[0] <= result[1]:
        raise argparse.ArgumentTypeError(f"expected 0 < LOW <= HIGH, got {text!r}")
    return result


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def add_load_arguments(parser: argparse.ArgumentParser, concurrency: Sequence[int]) -> None:
    group = parser.add_argument_group("load")
    group.add_argument("--concurrency", type=int, nargs="+", default=list(concurrency),
                       help="Requests in flight at once; one run per value "
                            "(default %(default)s). With --rate: a cap.")
    group.add_argument("--rate", type=float, default=None,
                       help="Poisson arrivals, requests per second, instead of fixed "
                            "concurrency (then --concurrency caps the requests in flight).")
    group.add_argument("--num-requests", type=int, default=None,
                       help="Requests per run (default: max(--min-requests, "
                            "--requests-per-concurrency × concurrency)).")
    group.add_argument("--min-requests", type=int, default=8)
    group.add_argument("--requests-per-concurrency", type=int, default=2)
    group.add_argument("--output-len", type=int, default=64,
                       help="Output tokens of every request (EOS ignored; default %(default)s).")
    group.add_argument("--output-len-range", type=length_range, default=None, metavar="LOW:HIGH",
                       help="Sample each request's output length uniformly in [LOW, HIGH].")
    group.add_argument("--num-prompts", type=int, default=64,
                       help="Distinct prompts from the bundled set (default %(default)s).")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--ttft-probe", type=int, default=0, metavar="RUNS",
                       help="After the levels, this many runs of one-token requests at C=1: "
                            "TTFT with little else in it (default none).")
    group.add_argument("--ttft-probe-requests", type=positive_int, default=64,
                       help="Requests per TTFT probe run (default %(default)s).")
    group.add_argument("--warmup", type=int, default=2,
                       help="Short requests sent before measuring (default %(default)s).")
    group.add_argument("--json", type=Path, default=None, help="Also write the results here.")
    group.add_argument("--no-progress", action="store_true", help="No progress bar.")
    group.add_argument("--no-uvloop", action="store_true",
                       help="Run the load generator on asyncio's default loop instead of "
                            "uvloop (which keeps it lighter on the cores it shares).")


def load_specs(args: argparse.Namespace) -> list[LoadSpec]:
    prompts = prompt_set(args.num_prompts, args.seed)
    specs = []
    for concurrency in args.concurrency:
        count = args.num_requests or max(args.min_requests,
                                         args.requests_per_concurrency * concurrency)
        lengths = output_lengths(count, args.output_len, args.output_len_range, args.seed)
        specs.append(LoadSpec(prompts, lengths, concurrency=concurrency, rate=args.rate,
                              seed=args.seed))
    probe = LoadSpec(prompts, [1] * args.ttft_probe_requests, concurrency=1, seed=args.seed,
                     ttft_probe=True)
    return specs + [probe] * args.ttft_probe


def _emit(results: list[dict], args: argparse.Namespace) -> None:
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print(text)


def run_command(args: argparse.Namespace) -> int:
    from llmserve_client.bench.targets import open_target

    async def main() -> list[dict]:
        target = await open_target(args.target, args.model)
        try:
            return await run_levels(target, load_specs(args), warmup=args.warmup,
                                    server_pid=args.server_pid,
                                    progress=not args.no_progress)
        finally:
            await target.close()

    results = run_async(main(), not args.no_uvloop)
    _emit(results, args)
    return 1 if any(r["errors"] for r in results) else 0


def inprocess_command(args: argparse.Namespace) -> int:
    from llmserve_client.bench.inprocess import run_inprocess

    results = run_async(run_inprocess(args.model, load_specs(args), args.warmup,
                                      not args.no_progress, args.stream_interval),
                        not args.no_uvloop)
    _emit(results, args)
    return 1 if any(r["errors"] for r in results) else 0


def _exit_on_sigterm(signum: int, frame) -> None:
    raise SystemExit(128 + signum)


def suite_command(args: argparse.Namespace) -> int:
    from llmserve_client.bench.suite import run_suite

    # A SIGTERM (`kill`, a cancelled CI job) ends the suite as Ctrl-C does: on the way out it
    # stops the servers it started and the in-process engine's process group.
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return run_suite(args)


def report_command(args: argparse.Namespace) -> int:
    from llmserve_client.bench.report import write_report

    write_report(json.loads(args.results.read_text()), args.markdown, args.plot)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmserve-bench", description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n", 1)[1])
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="Load one server.")
    run.add_argument("target", help="grpc://HOST:PORT (StreamGenerate), grpc+unary://HOST:PORT "
                                    "(Generate) or openai://HOST:PORT (streaming completions).")
    run.add_argument("--model", default=None,
                     help="Model name for openai:// targets (default: the server's first).")
    run.add_argument("--server-pid", type=int, default=None,
                     help="Report this process's CPU time per output token (same machine).")
    add_load_arguments(run, (1,))
    run.set_defaults(func=run_command)

    inprocess = commands.add_parser("inprocess", help="Load vLLM's AsyncLLM in this process.")
    inprocess.add_argument("--model", type=Path, required=True, help="Model directory.")
    inprocess.add_argument("--stream-interval", type=positive_int, default=1,
                           help="vLLM's --stream-interval (default %(default)s).")
    add_load_arguments(inprocess, (1,))
    inprocess.set_defaults(func=inprocess_command)

    suite = commands.add_parser("suite", help="Every target one after another; BENCHMARKS.md.")
    suite.add_argument("--quick", action="store_true",
                       help="A short, noisy run: C=1 and 16, few requests.")
    suite.add_argument("--models", nargs="*", default=["smollm2", "tiny"],
                       choices=["smollm2", "tiny"],
                       help="The real-engine groups to run (none: only the frontend-only one).")
    suite.add_argument("--concurrency", type=int, nargs="+", default=None,
                       help=f"Default {list(DEFAULT_CONCURRENCY)} "
                            f"(--quick: {list(QUICK_CONCURRENCY)}).")
    suite.add_argument("--output-len", type=int, default=64)
    suite.add_argument("--repeats", type=positive_int, default=1,
                       help="Run the targets in this many rounds (the order reversed every "
                            "other round) and report, per concurrency, the round with the "
                            "median tokens/s (default %(default)s).")
    suite.add_argument("--stream-interval", type=positive_int, default=1,
                       help="vLLM's --stream-interval for every engine (in-process, llmserve, "
                            "vllm serve): at most this many tokens per streamed message "
                            "(default %(default)s).")
    suite.add_argument("--no-frontend-only", dest="frontend_only", action="store_false",
                       help="Skip the fake-engine and echo servers.")
    suite.add_argument("--no-profile", dest="profile", action="store_false",
                       help="Skip the py-spy profile of llmserve (tiny model, C=64).")
    suite.add_argument("--work-dir", type=Path, default=Path("bench-results"),
                       help="Server logs, raw results and the profile (default %(default)s).")
    suite.add_argument("--json", type=Path, default=Path("docs/bench.json"))
    suite.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"))
    suite.add_argument("--plot", type=Path, default=Path("docs/bench.png"))
    suite.set_defaults(func=suite_command)

    report = commands.add_parser("report", help="Write BENCHMARKS.md and the plot from JSON.")
    report.add_argument("results", type=Path)
    report.add_argument("--markdown", type=Path, default=Path("BENCHMARKS.md"))
    report.add_argument("--plot", type=Path, default=Path("docs/bench.png"))
    report.set_defaults(func=report_command)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    grpc_settings.use_iomgr_client()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    sys.exit(args.func(args))
