"""Servers under test as child processes on free loopback ports, always stopped with their engine.

Each server runs in a process group of its own, so vLLM's engine core (a spawned child) can be
found and stopped even if its parent died first.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve.engine.cpu_placement import bind_engine_core_to_workers
from llmserve_client.bench import grpc_settings

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS = 600
STOP_TIMEOUT_SECONDS = 60
ENGINE_EXIT_TIMEOUT_SECONDS = 30
# Popen's process_group: each server (with its engine core) in a process group of its own, to be
# stopped as one, but in the benchmark's session. A new session would also be a new scheduler
# autogroup (Linux's sched_autogroup), which caps the server at half the cores whenever the load
# generator is busy: a fake-engine server measured 20-25k tok/s that way against 29-31k here.
SAME_SESSION_NEW_GROUP = 0
# Every server gets the same engine settings: float32 (bfloat16 is slow and wrong without
# AVX512-BF16), eager mode (torch.compile takes minutes on the CPU), a 2 GiB KV cache.
KV_CACHE_GIB = 2
ENGINE_ARGS = ("--dtype", "float32", "--enforce-eager",
               "--kv-cache-memory-bytes", str(KV_CACHE_GIB * 1024**3))
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB)}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def grpc_serving(address: str) -> bool:
    try:
        with grpc.insecure_channel(address) as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2).status
    except grpc.RpcError:
        return False
    return status == health_pb2.HealthCheckResponse.SERVING


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class ServerProcess:
    """A server command, its readiness check and its log; a context manager."""

    def __init__(self, name: str, args: list[str], ready: Callable[[], bool], log_path: Path,
                 url: str, env: dict[str, str] | None = None, bind_engine_core: bool = False):
        self.name = name
        # Bind its vLLM engine core to the workers' cores once ready, as `llmserve serve` does.
        self.bind_engine_core = bind_engine_core
        self.args = args
        self.url = url
        # llmserve's HTTP API, when the server has one.
        self.http_url: str | None = None
        self._ready = ready
        self.log_path = log_path
        self._env = {**grpc_settings.server_environment(), **(env or {})}
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "ServerProcess":
        logger.info("starting %s: %s", self.name, " ".join(self.args))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.args, env=self._env, stdout=log,
                                            stderr=subprocess.STDOUT,
                                            process_group=SAME_SESSION_NEW_GROUP)
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not self._ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                                   f"see {self.log_path}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} not ready after {STARTUP_TIMEOUT_SECONDS}s; "
                                   f"see {self.log_path}")
            time.sleep(0.5)
        logger.info("%s ready (pid %d)", self.name, self.pid)
        if self.bind_engine_core:
            bind_engine_core_to_workers(self.pid)
        return self

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if needed; then every process left in its group (engine core)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT_SECONDS)
            except subprocess.TimeoutExpired:
                logger.warning("%s ignored SIGTERM; killing it", self.name)
                self.process.kill()
                self.process.wait(STOP_TIMEOUT_SECONDS)
        stop_process_group(self.pid, self.name)

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_process_group(pgid: int, name: str) -> None:
    """Waits (bounded) for the processes left in group `pgid` to exit, then kills them."""
    deadline = time.monotonic() + ENGINE_EXIT_TIMEOUT_SECONDS
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _group_alive(pgid):
        logger.warning("%s left processes behind; killing its process group %d", name, pgid)
        os.killpg(pgid, signal.SIGKILL)


def llmserve_has_http() -> bool:
    from llmserve.config import ServerConfig

    return "http_port" in ServerConfig.__slots__


def engine_args(stream_interval: int) -> list[str]:
    """The engine settings of every server; vLLM's --stream-interval when above 1."""
    extra = ["--stream-interval", str(stream_interval)] if stream_interval > 1 else []
    return [*ENGINE_ARGS, *extra]


def llmserve_server(model: Path, log_dir: Path, stream_interval: int = 1) -> ServerProcess:
    port = free_port()
    args = [sys.executable, "-m", "llmserve", "serve", "--host", HOST, "--port", str(port),
            "--metrics-port", str(free_port()), "--model", str(model),
            *engine_args(stream_interval)]
    http_port = free_port() if llmserve_has_http() else None
    if http_port:
        args += ["--http-port", str(http_port)]
    address = f"{HOST}:{port}"
    server = ServerProcess("llmserve", args, lambda: grpc_serving(address),
                           log_dir / "llmserve.log", f"grpc://{address}", ENGINE_ENV)
    if http_port:
        server.http_url = f"http://{HOST}:{http_port}"
    return server


def vllm_openai_server(model: Path, log_dir: Path, stream_interval: int = 1) -> ServerProcess:
    """`vllm serve` (its console script fails under the vllm-cpu distribution name)."""
    port = free_port()
    args = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--host", HOST,
            "--port", str(port), "--model", str(model), *engine_args(stream_interval)]
    return ServerProcess("vllm-serve", args, lambda: http_ok(f"http://{HOST}:{port}/v1/models"),
                         log_dir / "vllm-serve.log", f"openai://{HOST}:{port}", ENGINE_ENV,
                         bind_engine_core=True)


def bench_grpc_server(module: str, log_dir: Path, key: str,
                      extra_args: Sequence[str] = ()) -> ServerProcess:
    """One of the bench package's frontend-only servers (fake_server, echo_server)."""
    port = free_port()
    address = f"{HOST}:{port}"
    args = [sys.executable, "-m", f"llmserve_client.bench.{module}", "--host", HOST,
            "--port", str(port), *extra_args]
    return ServerProcess(key, args, lambda: grpc_serving(address), log_dir / f"{key}.log",
                         f"grpc://{address}")
