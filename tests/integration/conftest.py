"""An in-process llmserve server with the fake engine, on its own event loop thread.

A thread of its own lets tests use the sync client, the asyncio client and subprocesses
(grpcurl) alike without blocking the server.
"""

import asyncio
import dataclasses
import threading
from concurrent.futures import Future

import pytest
import uvloop

from llmserve.app import LlmServer
from llmserve.cli import build_parser
from llmserve.config import ServerConfig
from llmserve.engine.fake import FakeEngine

MODEL_NAME = "fake-model"


def server_config(**overrides) -> ServerConfig:
    """`llmserve serve`'s defaults (from its own parser), on loopback and with small limits."""
    _, serve_parser = build_parser(with_engine_arguments=False)
    defaults = ServerConfig.from_args(serve_parser.parse_args([]))
    values = dict(host="127.0.0.1", port=0, http_port=0, metrics_port=0,
                  max_message_bytes=4 * 1024 * 1024, default_max_tokens=16, max_n=4,
                  shutdown_grace_seconds=5.0)
    return dataclasses.replace(defaults, **{**values, **overrides})


class ThreadedServer:
    def __init__(self, engine: FakeEngine, **config_overrides):
        self.engine = engine
        self.config = server_config(**config_overrides)
        # The loop `llmserve serve` would run the server on (uvloop by default).
        self.loop = (uvloop.new_event_loop() if self.config.event_loop == "uvloop"
                     else asyncio.new_event_loop())
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server: LlmServer | None = None

    def run(self, coroutine, timeout: float = 30):
        """Runs a coroutine on the server's loop and returns its result."""
        future: Future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    def start(self) -> "ThreadedServer":
        self._thread.start()

        async def start():
            async def make_engine():
                return self.engine

            self.server = LlmServer(self.config, make_engine, MODEL_NAME)
            await self.server.start()
            await self.server.wait_ready()

        self.run(start())
        self.target = f"127.0.0.1:{self.server.port}"
        return self

    def stop(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture
def fake_engine():
    return FakeEngine(token_delay=0.001)


@pytest.fixture
def server(fake_engine):
    threaded = ThreadedServer(fake_engine).start()
    yield threaded
    threaded.stop()
