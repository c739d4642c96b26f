"""Starting a real `llmserve serve` process for tests, and proving it stopped cleanly."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

ENGINE_PROCESS_MARKERS = ("VLLM::EngineCore", "VLLM::Worker")
STARTUP_TIMEOUT_SECONDS = 240


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_engine_process(process: psutil.Process) -> bool:
    try:
        text = process.name() + " " + " ".join(process.cmdline())
        return (process.status() != psutil.STATUS_ZOMBIE
                and any(marker in text for marker in ENGINE_PROCESS_MARKERS))
    except psutil.Error:
        return False


def alive(pids: list[int]) -> list[int]:
    """The pids in `pids` that still run (zombies count as gone)."""
    result = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                result.append(pid)
        except psutil.NoSuchProcess:
            pass
    return result


class ServerProcess:
    """`llmserve serve` in a child process on free loopback ports."""

    def __init__(self, model: Path | None, *extra_args: str, env: dict | None = None,
                 log_path: Path | None = None):
        self.port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        args = [sys.executable, "-m", "llmserve", "serve", "--host", "127.0.0.1",
                "--port", str(self.port), "--http-port", str(self.http_port),
                "--metrics-port", str(self.metrics_port)]
        if model is not None:
            args += ["--model", str(model)]
        self.args = [*args, *extra_args]
        self.env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
        self.log_path = log_path
        self.process: subprocess.Popen | None = None
        self.engine_pids: list[int] = []

    def start(self) -> "ServerProcess":
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(self.args, env=self.env, stdout=log,
                                        stderr=subprocess.STDOUT)
        self.wait_serving()
        self.engine_pids = [p.pid for p in psutil.Process(self.process.pid).children(
            recursive=True) if is_engine_process(p)]
        return self

    def health(self) -> int:
        with grpc.insecure_channel(self.target) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            return stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status

    def wait_serving(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: "
                                   f"{self.log_tail()}")
            try:
                if self.health() == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not serving after {STARTUP_TIMEOUT_SECONDS}s: "
                           f"{self.log_tail()}")

    def log_tail(self, lines: int = 150) -> str:
        if self.log_path and self.log_path.exists():
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 120) -> int:
        """Stops the server; returns its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)

    def wait_engine_gone(self, timeout: float = 30) -> list[int]:
        """Waits (bounded) for the engine processes to exit; returns those still alive."""
        deadline = time.monotonic() + timeout
        while alive(self.engine_pids) and time.monotonic() < deadline:
            time.sleep(0.2)
        return alive(self.engine_pids)
