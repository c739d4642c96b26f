"""A real `llmserve serve` with the tiny random Llama and an admission limit, and its metrics."""

import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import stopped_cleanly
from tests.support.processes import ServerProcess

# --max-queued-requests of the shared server; the overload test sends four times as many calls
# at once. Other tests stay well below it: a client that starts a new call as soon as one of
# its calls was cancelled can find the server still winding the old one down (counted).
ADMISSION_LIMIT = 96


class Metrics:
    """One scrape of a server's metrics endpoint."""

    def __init__(self, text: str):
        self.samples = [sample for family in text_string_to_metric_families(text)
                        for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        return sum(s.value for s in self.samples if s.name == name
                   and all(s.labels.get(k) == v for k, v in labels.items()))

    def by_label(self, name: str, label: str) -> dict[str, float]:
        totals: dict[str, float] = {}
        for s in self.samples:
            if s.name == name:
                totals[s.labels.get(label, "")] = totals.get(s.labels.get(label, ""), 0) + s.value
        return totals


def scrape(server: ServerProcess) -> Metrics:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        return Metrics(response.read().decode())


def wait_for(server: ServerProcess, condition: Callable[[Metrics], bool],
             timeout: float = 60) -> Metrics:
    """Scrapes (bounded) until `condition` holds; returns the last scrape."""
    deadline = time.monotonic() + timeout
    metrics = scrape(server)
    while not condition(metrics) and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = scrape(server)
    return metrics


def idle(metrics: Metrics) -> bool:
    return (metrics.value("vllm:num_requests_running") == 0
            and metrics.value("vllm:num_requests_waiting") == 0
            and metrics.value("llmserve_requests_in_flight") == 0)


def idle_baseline_scrape(server: ServerProcess, steady_seconds: float = 1.0,
                         timeout: float = 60) -> Metrics:
    """An idle scrape to compare later ones with. The last call's own tasks (grpc.aio's handler
    of a call whose client already has its answer) can still be winding down at the first idle
    scrape, so the task count must also hold for `steady_seconds` (a CI run once took a baseline
    two tasks too high)."""
    deadline = time.monotonic() + timeout
    previous = wait_for(server, idle, timeout)
    while time.monotonic() < deadline:
        time.sleep(steady_seconds)
        metrics = scrape(server)
        if idle(metrics) and idle(previous) and (metrics.value("llmserve_asyncio_tasks")
                                                 == previous.value("llmserve_asyncio_tasks")):
            return metrics
        previous = metrics
    raise AssertionError(f"the server did not settle idle within {timeout} s")


@pytest.fixture(scope="package")
def limited_server(tiny_llama, tmp_path_factory):
    """The tiny model behind `--max-queued-requests`, shared by the load tests."""
    log_path = tmp_path_factory.mktemp("reliability") / "server.log"
    server = ServerProcess(tiny_llama, "--max-queued-requests", str(ADMISSION_LIMIT),
                           log_path=log_path).start()
    yield server
    stopped_cleanly(server)
