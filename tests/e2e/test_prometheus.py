"""A real Prometheus server scrapes the metrics port; PromQL sees our counts and vLLM's."""

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest

from llmserve_client import LlmClient
from tests.support.processes import free_port

pytestmark = pytest.mark.e2e
PROMETHEUS = shutil.which("prometheus")
SCRAPE_CONFIG = """global:
  scrape_interval: 1s
scrape_configs:
  - job_name: llmserve
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""


@pytest.fixture
def prometheus(tiny_server, tmp_path):
    if PROMETHEUS is None:
        pytest.skip("Debian's prometheus is not installed (.ci/run installs it)")
    config = tmp_path / "prometheus.yml"
    config.write_text(SCRAPE_CONFIG.format(port=tiny_server.metrics_port))
    port = free_port()
    process = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    yield f"http://127.0.0.1:{port}"
    process.terminate()
    assert process.wait(timeout=30) == 0


def query(base_url: str, promql: str) -> float | None:
    url = f"{base_url}/api/v1/query?query={urllib.parse.quote(promql)}"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            result = json.load(response)["data"]["result"]
    except OSError:
        return None
    return sum(float(r["value"][1]) for r in result) if result else None


def wait_for(base_url: str, promql: str, condition, timeout: float = 60) -> float | None:
    """Polls PromQL (bounded) until `condition(value)`; returns the last value."""
    deadline = time.monotonic() + timeout
    value = query(base_url, promql)
    while not (value is not None and condition(value)) and time.monotonic() < deadline:
        time.sleep(0.5)
        value = query(base_url, promql)
    return value


def test_prometheus_sees_request_counts_and_vllm_tokens(tiny_server, prometheus):
    ok = 'sum(llmserve_requests_total{rpc="Generate",code="OK"})'
    invalid = 'sum(llmserve_requests_total{rpc="Generate",code="INVALID_ARGUMENT"})'
    # The shared server has served other tests: count from what Prometheus sees first.
    assert wait_for(prometheus, "up", lambda v: v == 1) == 1
    ok_before = wait_for(prometheus, ok, lambda v: True) or 0.0
    invalid_before = query(prometheus, invalid) or 0.0

    with LlmClient(tiny_server.target, retries=0) as client:
        for _ in range(5):
            client.generate("count me", max_tokens=8, ignore_eos=True)
        for _ in range(2):
            with pytest.raises(grpc.RpcError):
                client.generate("bad", temperature=-1)

    assert wait_for(prometheus, ok, lambda v: v >= ok_before + 5) == ok_before + 5
    assert wait_for(prometheus, invalid, lambda v: v >= invalid_before + 2) == invalid_before + 2
    # Scraped as OpenMetrics, vLLM's `vllm:` names reach Prometheus as `vllm_`.
    generated = wait_for(prometheus, "sum(vllm_generation_tokens_total)", lambda v: v >= 40)
    assert generated is not None and generated >= 40
