"""Wiring and lifecycle: the gRPC server, health, reflection, the engine, signals and drain.

Start: the gRPC port opens at once (ServerLive, health NOT_SERVING), the engine loads, then
health turns SERVING. Stop (SIGTERM/SIGINT, or the engine dying), always in this order: health
NOT_SERVING and new requests refused, in-flight requests get the grace period, the rest are
aborted, then the engine shuts down.
"""

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from llmserve.auth import ApiKeyInterceptor, ApiKeys, load_api_keys, server_credentials
from llmserve.config import ServerConfig
from llmserve.engine.protocol import Engine
from llmserve.generation import ServerState
from llmserve.http_api import HttpServer
from llmserve.metrics import MetricsEndpoint, count_asyncio_tasks
from llmserve.servicer import LlmServicer
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve.validation import RequestLimits

logger = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["LlmService"].full_name
EXTENSIONS = ("health", "reflection", "metrics")
ENGINE_WATCH_INTERVAL_SECONDS = 1.0
# After the engine died, in-flight calls only need time to send their UNAVAILABLE.
ENGINE_FAILED_GRACE_SECONDS = 1.0
# Requests still running when the grace period ends are stopped with UNAVAILABLE ("shutting
# down"); they get this long to send it before gRPC and uvicorn cancel what is left.
CUT_OFF_SECONDS = 1.0

EngineFactory = Callable[[], Awaitable[Engine]]


def grpc_server_options(config: ServerConfig) -> list[tuple[str, int | bool]]:
    """Every gRPC server option we set, in one place."""
    options = [
        ("grpc.max_send_message_length", config.max_message_bytes),
        ("grpc.max_receive_message_length", config.max_message_bytes),
        # A second server on the same port must fail to start, not silently share it.
        ("grpc.so_reuseport", 0),
        # A unary Generate writes nothing while the engine decodes: tolerate client keepalive
        # pings meanwhile instead of answering GOAWAY(too_many_pings).
        ("grpc.http2.max_ping_strikes", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", True),
    ]
    if config.keepalive_seconds > 0:
        # Our own pings find clients that vanished without closing their connection (machine
        # or network gone): their calls are cancelled and their engine requests aborted,
        # instead of generating for nobody. Unlimited pings without data: a unary Generate
        # sends no data until its end.
        options += [
            ("grpc.keepalive_time_ms", int(config.keepalive_seconds * 1000)),
            ("grpc.keepalive_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
            # grpcio 1.85 waits this long for a keepalive ping's answer (default a minute),
            # whatever keepalive_timeout_ms says.
            ("grpc.http2.ping_timeout_ms", int(config.keepalive_timeout_seconds * 1000)),
            ("grpc.http2.max_pings_without_data", 0),
        ]
    return options


class LlmServer:
    """One server process: gRPC API, health and reflection in front of one engine."""

    def __init__(self, config: ServerConfig, engine_factory: EngineFactory,
                 served_model_name: str):
        self.config = config
        self.state = ServerState(served_model_name, config.max_queued_requests)
        self.health = health.aio.HealthServicer()
        self._engine_factory = engine_factory
        self._served_model_name = served_model_name
        self._server: grpc.aio.Server | None = None
        self.http: HttpServer | None = None
        self.metrics = MetricsEndpoint(config.host, config.metrics_port)
        self._stop_requested = asyncio.Event()
        self._engine_failed = False
        self._tasks: list[asyncio.Task] = []
        self.port = 0

    async def _set_serving(self, serving: bool) -> None:
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)

    async def start(self) -> int:
        """Opens the gRPC port and starts loading the engine; returns the bound port."""
        config = self.config
        api_keys = load_api_keys(config.api_key, config.api_key_file)
        interceptors = [ApiKeyInterceptor(ApiKeys(api_keys))] if api_keys else []
        self._server = grpc.aio.server(
            options=grpc_server_options(config),
            maximum_concurrent_rpcs=config.max_concurrent_rpcs,
            interceptors=interceptors,
        )
        pb_grpc.add_LlmServiceServicer_to_server(LlmServicer(self.state, EXTENSIONS), self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server
        )
        address = f"{config.host}:{config.port}"
        if config.tls_cert:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
            self.port = self._server.add_secure_port(address, credentials)
        else:
            self.port = self._server.add_insecure_port(address)
        await self._set_serving(False)
        await self._server.start()
        logger.info("gRPC server listening on %s (port %d, %s%s)", address, self.port,
                    "mutual TLS" if config.tls_client_ca else "TLS" if config.tls_cert
                    else "plaintext", ", API key required" if api_keys else "")
        if config.http_port:
            self.http = HttpServer(self.state, config, ApiKeys(api_keys) if api_keys else None)
            self.http.start()
        if config.metrics_port:
            count_asyncio_tasks(asyncio.get_running_loop())
            self.metrics.start()
        self._tasks.append(asyncio.create_task(self._load_engine(), name="load-engine"))
        return self.port

    async def _load_engine(self) -> None:
        try:
            engine = await self._engine_factory()
        except Exception:
            logger.exception("the engine failed to start")
            self._engine_failed = True
            self._stop_requested.set()
            return
        info = engine.model_info
        self.state.limits = RequestLimits(
            served_model_name=self._served_model_name,
            max_model_len=info.max_model_len,
            vocab_size=info.vocab_size,
            default_max_tokens=self.config.default_max_tokens,
            max_n=self.config.max_n,
        )
        self.state.engine = engine
        if self._stop_requested.is_set():
            return
        await self._set_serving(True)
        logger.info("model %s ready (max_model_len=%d, dtype=%s)", self._served_model_name,
                    info.max_model_len, info.dtype)
        self._tasks.append(asyncio.create_task(self._watch_engine(engine), name="watch-engine"))

    async def wait_ready(self) -> None:
        """Returns once the engine can generate (or raises if it failed to start)."""
        while not self.state.ready:
            if self._engine_failed:
                raise RuntimeError("the engine failed to start")
            await asyncio.sleep(0.05)

    async def _watch_engine(self, engine: Engine) -> None:
        """Notices the engine dying: health flips at once, then the server stops."""
        while True:
            await asyncio.sleep(ENGINE_WATCH_INTERVAL_SECONDS)
            try:
                await engine.check_health()
            except Exception:
                logger.error("the engine has died; stopping the server")
                self._engine_failed = True
                await self._set_serving(False)
                self._stop_requested.set()
                return

    def request_stop(self) -> None:
        self._stop_requested.set()

    async def stop(self) -> None:
        """Drains and stops, in the fixed order: health, gRPC and HTTP drain, engine."""
        self.state.draining = True
        await self.health.enter_graceful_shutdown()
        grace = (ENGINE_FAILED_GRACE_SECONDS if self._engine_failed
                 else self.config.shutdown_grace_seconds)
        logger.info("draining: in-flight requests have %.0f s to finish", grace)
        cut_off = asyncio.get_running_loop().call_later(grace, self.state.cut_off)
        draining = [self._server.stop(grace + CUT_OFF_SECONDS)]
        if self.http is not None:
            draining.append(self.http.stop(grace + CUT_OFF_SECONDS))
        await asyncio.gather(*draining)
        cut_off.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.state.engine is not None:
            self.state.engine.shutdown()
        self.metrics.stop()
        logger.info("server stopped")

    async def run(self) -> int:
        """Serves until SIGTERM/SIGINT or engine death; returns the process exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.start()
        await self._stop_requested.wait()
        await self.stop()
        return 1 if self._engine_failed else 0
