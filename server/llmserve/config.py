"""`llmserve serve` configuration: one argparse parser, every flag also an LLMSERVE_* variable.

The server's own flags are defined here; vLLM's engine arguments (--model, --dtype,
--max-model-len, --tensor-parallel-size, --gpu-memory-utilization, --enforce-eager, ...) are added
by vLLM itself and passed through unchanged, except for the defaults noted below.
"""

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from llmserve.event_loop import EVENT_LOOPS

ENV_PREFIX = "LLMSERVE_"
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})

DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
CPU_KV_CACHE_BYTES = 2 * 1024**3


@dataclass(frozen=True, slots=True)
class ServerConfig:
    host: str
    port: int
    http_port: int
    metrics_port: int
    max_concurrent_rpcs: int | None
    max_message_bytes: int
    default_max_tokens: int
    max_n: int
    shutdown_grace_seconds: float
    keepalive_seconds: float
    keepalive_timeout_seconds: float
    max_queued_requests: int | None
    tls_cert: Path | None
    tls_key: Path | None
    tls_client_ca: Path | None
    api_key: list[str]
    api_key_file: Path | None
    log_level: str
    log_format: str
    access_log: bool
    event_loop: str
    bind_engine_core: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ServerConfig":
        # --log-level is vLLM's flag (absent from args unless given).
        values = {name: getattr(args, name) for name in cls.__slots__ if name != "log_level"}
        return cls(log_level=getattr(args, "log_level", "info").upper(), **values)


def check_server_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Rules between flags, reported like argparse's own errors."""
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")
    if args.tls_client_ca and not args.tls_cert:
        parser.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    for flag in ("tls_cert", "tls_key", "tls_client_ca", "api_key_file"):
        path = getattr(args, flag)
        if path is not None and not path.is_file():
            parser.error(f"--{flag.replace('_', '-')}: no such file: {path}")
    if args.keepalive_seconds < 0 or args.keepalive_timeout_seconds <= 0:
        parser.error("--keepalive-seconds must be >= 0 and --keepalive-timeout-seconds > 0")
    if args.max_queued_requests is not None and args.max_queued_requests < 1:
        parser.error("--max-queued-requests must be >= 1")


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("llmserve server")
    group.add_argument("--host", default="0.0.0.0",
                       help="Address to bind (default 0.0.0.0; [::] for IPv6).")
    group.add_argument("--port", type=int, default=DEFAULT_GRPC_PORT,
                       help="gRPC port (default %(default)s, as Triton).")
    group.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                       help="HTTP port: POST /generate (vLLM demo api_server format) and "
                            "/v2/health/* (default %(default)s, as Triton; 0 disables).")
    group.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                       help="Prometheus metrics port, GET /metrics (default %(default)s, as "
                            "Triton; 0 disables).")
    group.add_argument("--max-concurrent-rpcs", type=int, default=None,
                       help="Most RPCs the gRPC server runs at once; more are refused with "
                            "RESOURCE_EXHAUSTED (default: unlimited).")
    group.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES,
                       help="Largest gRPC message accepted or sent (default 16 MiB).")
    group.add_argument("--default-max-tokens", type=int, default=256,
                       help="max_tokens of requests that leave it unset (capped by the context "
                            "left after the prompt; default %(default)s).")
    group.add_argument("--max-n", type=int, default=16,
                       help="Largest `n` (completions per request) accepted (default %(default)s).")
    group.add_argument("--shutdown-grace-seconds", type=float, default=30.0,
                       help="On SIGTERM, how long in-flight requests may run before they are "
                            "aborted (default %(default)s).")
    group.add_argument("--keepalive-seconds", type=float, default=60.0,
                       help="Ping each gRPC connection after this long without news from its "
                            "client (HTTP/2 keepalive; HTTP connections: TCP keepalive), so a "
                            "client whose machine or network is gone is noticed and its requests "
                            "are aborted (default %(default)s; 0 disables).")
    group.add_argument("--keepalive-timeout-seconds", type=float, default=20.0,
                       help="How long a keepalive ping may go unanswered before the connection "
                            "is closed and its calls cancelled; on HTTP connections also how long "
                            "response data may go unacknowledged (default %(default)s).")
    group.add_argument("--max-queued-requests", type=int, default=None,
                       help="Most generation requests held at once (running + waiting in the "
                            "engine); more are refused at once with RESOURCE_EXHAUSTED "
                            "(default: unlimited).")
    group.add_argument("--tls-cert", type=Path, help="Server certificate (PEM) to serve gRPC over "
                                                     "TLS; needs --tls-key.")
    group.add_argument("--tls-key", type=Path, help="Private key (PEM) of --tls-cert.")
    group.add_argument("--tls-client-ca", type=Path,
                       help="CA (PEM) that signs client certificates: enables mutual TLS, "
                            "clients without a valid certificate are refused.")
    group.add_argument("--api-key", action="append", default=[],
                       help="Require 'authorization: Bearer <key>' on every RPC but health "
                            "checks (repeatable).")
    group.add_argument("--api-key-file", type=Path,
                       help="File with accepted API keys, one per line.")
    group.add_argument("--log-format", default="text", choices=["text", "json"],
                       help="`json` writes one JSON object per line (default text).")
    group.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                       help="One line per request on the llmserve.access logger: method, "
                            "status, duration, token counts (default on; off saves about 15 %% of "
                            "the server's CPU per short request).")
    group.add_argument("--event-loop", default="uvloop", choices=EVENT_LOOPS,
                       help="Event loop of the gRPC and HTTP servers: uvloop (default, as vLLM's "
                            "servers; cheaper per streamed message) or asyncio's own.")
    group.add_argument("--bind-engine-core", action=argparse.BooleanOptionalAction, default=True,
                       help="CPU platforms: bind vLLM's engine-core process to its workers' "
                            "cores, so that its busy-wait leaves the cores vLLM reserves for the "
                            "API server to llmserve (default on; no effect on GPUs).")


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """vLLM's engine arguments, with defaults that work without a model hub and on the CPU."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    from llmserve.engine.vllm_engine import is_cpu_platform

    AsyncEngineArgs.add_cli_args(parser)
    defaults = {"model": None}
    if is_cpu_platform():
        # bfloat16 is slow and inaccurate without AVX512-BF16; torch.compile takes minutes; a
        # fixed KV cache (instead of a fraction of all memory) starts beside other processes.
        defaults |= {"dtype": "float32", "enforce_eager": True,
                     "kv_cache_memory_bytes": CPU_KV_CACHE_BYTES}
    parser.set_defaults(**defaults)
    for action in parser._actions:
        if action.dest == "model":
            action.help = ("Hugging Face model directory to serve (default: the embedded "
                           "SmolLM2-135M-Instruct, prepared on first use).")


def env_name(action: argparse.Action) -> str | None:
    long_options = [o for o in action.option_strings if o.startswith("--")]
    if not long_options or action.dest == "help":
        return None
    return ENV_PREFIX + long_options[0][2:].replace("-", "_").upper()


def _given(action: argparse.Action, argv: Sequence[str]) -> bool:
    return any(arg == opt or arg.startswith(opt + "=")
               for arg in argv for opt in action.option_strings)


def _env_arguments(action: argparse.Action, name: str, value: str) -> list[str]:
    option = action.option_strings[0]
    if action.nargs == 0:
        word = value.strip().lower()
        if word not in TRUE_WORDS | FALSE_WORDS:
            raise SystemExit(f"{name}: expected true or false, got {value!r}")
        if word in TRUE_WORDS:
            return [option]
        if isinstance(action, argparse.BooleanOptionalAction):
            return [next(o for o in action.option_strings if o.startswith("--no-"))]
        return []
    if action.nargs in ("+", "*"):
        return [option, *value.split()]
    return [option, value]


def with_env_arguments(parser: argparse.ArgumentParser, argv: Sequence[str],
                       environ: Mapping[str, str] = os.environ) -> list[str]:
    """Returns argv preceded by the flags set through LLMSERVE_* variables.

    Flags given on the command line win. Values go through the parser like typed flags, so
    they are converted and checked the same way.
    """
    from_env: list[str] = []
    for action in parser._actions:
        name = env_name(action)
        if name and name in environ and not _given(action, argv):
            from_env += _env_arguments(action, name, environ[name])
    return [*from_env, *argv]


def resolve_model(args: argparse.Namespace) -> None:
    """Fills in the embedded default model and the served model name."""
    from llmserve.models.default import DEFAULT_MODEL_NAME, prepare_default_model

    if args.model is None:
        args.model = str(prepare_default_model())
        args.served_model_name = args.served_model_name or [DEFAULT_MODEL_NAME]
    if not args.served_model_name:
        args.served_model_name = [Path(args.model).name or args.model]
