"""Real `llmserve serve` processes with the real vLLM engine, started once and stopped cleanly."""

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e
RUNNING = "vllm:num_requests_running"


def metric_value(server: ServerProcess, name: str) -> float:
    """Sum of the samples of `name` on the server's metrics endpoint."""
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples if sample.name == name)


def wait_for_idle(server: ServerProcess, timeout: float = 30) -> float:
    """Polls (bounded) until the engine runs no request; returns the last running count."""
    deadline = time.monotonic() + timeout
    while (running := metric_value(server, RUNNING)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return running


def stopped_cleanly(server: ServerProcess) -> None:
    """Stops a server with SIGTERM and checks it exited 0 and left no engine process."""
    engine_pids = list(server.engine_pids)
    exit_code = server.stop()
    assert exit_code == 0, server.log_tail()
    assert engine_pids, "the server had no engine process to check"
    assert server.wait_engine_gone() == [], "vLLM engine processes left behind"


@pytest.fixture(scope="session")
def tiny_server(tiny_llama, tmp_path_factory):
    server = ServerProcess(tiny_llama, log_path=tmp_path_factory.mktemp("tiny") / "server.log")
    server.start()
    yield server
    stopped_cleanly(server)
