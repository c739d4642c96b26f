"""HTTP beside gRPC with the real vLLM engine: the original write-up's curl works unchanged."""

import json
import shutil
import subprocess

import httpx
import pytest

from llmserve_client import LlmClient, full_text
from tests.e2e.conftest import RUNNING, metric_value, wait_for_idle

pytestmark = pytest.mark.e2e
CURL = shutil.which("curl")
PROMPT = "My name is"


def curl(*args: str) -> subprocess.CompletedProcess:
    if CURL is None:
        pytest.skip("curl is not installed")
    return subprocess.run([CURL, *args], capture_output=True, text=True, timeout=120,
                          check=False)


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.http_port}"


def test_the_write_ups_curl_returns_generated_text(tiny_server):
    result = curl("-X", "POST", "-H", "Content-Type: application/json",
                  "-d", '{"prompt":"My name is"}', f"{base_url(tiny_server)}/generate")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    (text,) = body["text"]
    assert text.startswith(PROMPT)
    assert len(text) > len(PROMPT)
    assert body["usage"]["completion_tokens"] > 0


def test_health_and_bad_json_with_curl(tiny_server):
    ready = curl("-s", "-o", "/dev/null", "-w", "%{http_code}",
                 f"{base_url(tiny_server)}/v2/health/ready")
    assert ready.stdout == "200"
    bad = curl("-s", "-w", "\n%{http_code}", "-X", "POST", "-H",
               "Content-Type: application/json", "-d", '{"prompt": ',
               f"{base_url(tiny_server)}/generate")
    body, status = bad.stdout.rsplit("\n", 1)
    assert status == "400"
    assert json.loads(body)["error"].startswith("body: not valid JSON")


def test_stream_arrives_in_chunks_and_matches_the_unary_text(tiny_server):
    request = {"prompt": PROMPT, "max_tokens": 24, "temperature": 0, "ignore_eos": True}
    with httpx.Client(base_url=base_url(tiny_server), timeout=120) as client:
        unary = client.post("/generate", json=request).json()
        with client.stream("POST", "/generate", json={**request, "stream": True}) as response:
            assert response.status_code == 200
            lines = [json.loads(line) for line in response.iter_lines()]
    assert len(lines) > 1
    assert lines[-1]["text"] == unary["text"]
    assert lines[-1]["usage"]["completion_tokens"] == 24
    assert lines[-1]["finish_reasons"] == ["length"]


def test_http_and_grpc_generate_the_same_greedy_text(tiny_server):
    with httpx.Client(base_url=base_url(tiny_server), timeout=120) as client:
        body = client.post("/generate", json={"prompt": "The capital of France is",
                                              "max_tokens": 32, "temperature": 0}).json()
    with LlmClient(tiny_server.target) as grpc_client:
        response = grpc_client.generate("The capital of France is", max_tokens=32,
                                        temperature=0)
    assert body["text"] == ["The capital of France is" + full_text(response)]


def test_client_leaving_a_stream_frees_the_engine(tiny_server):
    with httpx.Client(base_url=base_url(tiny_server), timeout=120) as client, client.stream(
            "POST", "/generate", json={"prompt": "Cancel me", "stream": True,
                                       "max_tokens": 900, "ignore_eos": True}) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert metric_value(tiny_server, RUNNING) == 1
    # Leaving the block closed the connection mid-stream.
    assert wait_for_idle(tiny_server) == 0


def test_client_leaving_a_unary_request_frees_the_engine(tiny_server):
    with httpx.Client(base_url=base_url(tiny_server), timeout=0.5) as client, pytest.raises(
            httpx.ReadTimeout):
        client.post("/generate", json={"prompt": "Too slow", "max_tokens": 900,
                                       "ignore_eos": True})
    assert wait_for_idle(tiny_server) == 0
