"""The `llmserve` command: `serve` runs the server; other subcommands prepare models."""

import argparse
import logging
import sys
from collections.abc import Sequence

from llmserve import __version__, event_loop
from llmserve.config import (
    ServerConfig,
    add_engine_arguments,
    add_server_arguments,
    check_server_arguments,
    resolve_model,
    with_env_arguments,
)
from llmserve.logs import configure_logging
from llmserve.models import commands as model_commands

logger = logging.getLogger(__name__)


def serve(args: argparse.Namespace) -> int:
    from vllm.engine.arg_utils import AsyncEngineArgs

    from llmserve.app import LlmServer
    from llmserve.engine.vllm_engine import VllmEngine
    from llmserve.reaper import start_reaper

    config = ServerConfig.from_args(args)
    configure_logging(config.log_level, config.log_format, config.access_log)
    start_reaper()
    resolve_model(args)
    engine_args = AsyncEngineArgs.from_cli_args(args)
    served_model_name = args.served_model_name[0]
    logger.info("llmserve %s serving %s as %r on %s", __version__, args.model, served_model_name,
                config.event_loop)

    async def start_engine():
        return await VllmEngine.start(engine_args, served_model_name, config.bind_engine_core)

    async def run() -> int:
        return await LlmServer(config, start_engine, served_model_name).run()

    return event_loop.run(run(), config.event_loop)


def build_parser(with_engine_arguments: bool) -> tuple[argparse.ArgumentParser,
                                                       argparse.ArgumentParser]:
    """Returns the top-level parser and the `serve` parser.

    vLLM's engine arguments are added only when needed: importing vLLM takes seconds.
    """
    parser = argparse.ArgumentParser(
        prog="llmserve", description="Triton-style gRPC inference server for LLMs, on vLLM.")
    parser.add_argument("--version", action="version", version=f"llmserve {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve", help="Serve a model over gRPC (port 8001).",
        description="Serve a model over gRPC. Every flag can also be set with an environment "
                    "variable LLMSERVE_<FLAG>, e.g. LLMSERVE_MAX_MODEL_LEN=2048.")
    add_server_arguments(serve_parser)
    if with_engine_arguments:
        add_engine_arguments(serve_parser)
    serve_parser.set_defaults(func=serve)
    model_commands.register(commands)
    return parser, serve_parser


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    serving = argv[:1] == ["serve"]
    parser, serve_parser = build_parser(with_engine_arguments=serving)
    if serving:
        argv = ["serve", *with_env_arguments(serve_parser, argv[1:])]
    args = parser.parse_args(argv)
    if serving:
        check_server_arguments(serve_parser, args)
    sys.exit(args.func(args))
