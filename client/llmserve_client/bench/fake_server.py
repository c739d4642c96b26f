"""llmserve with the fake engine yielding tokens instantly: the frontend's own cost, for benchmarks.

A development entry point, not part of the `llmserve` CLI:
    python -m llmserve_client.bench.fake_server --port 50101
"""

import argparse
import logging

from llmserve import event_loop
from llmserve.app import LlmServer
from llmserve.cli import build_parser
from llmserve.config import ServerConfig, check_server_arguments, with_env_arguments
from llmserve.engine.fake import FakeEngine
from llmserve.logs import configure_logging

logger = logging.getLogger(__name__)

MODEL_NAME = "fake"
# Room for the bundled prompts (one token per byte) plus long outputs.
MAX_MODEL_LEN = 8192


def config(host: str, port: int) -> ServerConfig:
    """`llmserve serve`'s defaults and LLMSERVE_* variables on the given address: gRPC only."""
    _, serve_parser = build_parser(with_engine_arguments=False)
    argv = ["--host", host, "--port", str(port), "--metrics-port", "0"]
    if "http_port" in ServerConfig.__slots__:
        argv += ["--http-port", "0"]
    args = serve_parser.parse_args(with_env_arguments(serve_parser, argv))
    check_server_arguments(serve_parser, args)
    return ServerConfig.from_args(args)


async def serve(server_config: ServerConfig, merge_unread_outputs: bool) -> int:
    async def start_engine() -> FakeEngine:
        return FakeEngine(max_model_len=MAX_MODEL_LEN, name=MODEL_NAME,
                          merge_unread_outputs=merge_unread_outputs)

    return await LlmServer(server_config, start_engine, MODEL_NAME).run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--merge-unread-outputs", action="store_true",
                        help="Stream like vLLM: tokens a stream has not sent yet go out together "
                             "in its next message (default: one message per token).")
    args = parser.parse_args()
    server_config = config(args.host, args.port)
    configure_logging(server_config.log_level, server_config.log_format,
                      server_config.access_log)
    raise SystemExit(event_loop.run(serve(server_config, args.merge_unread_outputs),
                                    server_config.event_loop))


if __name__ == "__main__":
    main()
