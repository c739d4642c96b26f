"""Lifecycle with the real engine in real processes: drain, engine death, SIGKILL, no orphans."""

import signal
import threading
import time

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from llmserve_client import LlmClient
from llmserve_client import pb as llm_pb
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def start_server(tiny_llama, tmp_path, *args) -> ServerProcess:
    return ServerProcess(tiny_llama, *args, log_path=tmp_path / "server.log").start()


def test_sigterm_lets_in_flight_streams_finish(tiny_llama, tmp_path):
    server = start_server(tiny_llama, tmp_path, "--shutdown-grace-seconds", "60")
    results: dict[int, list] = {}
    started = threading.Barrier(17)

    def stream(i: int) -> None:
        with LlmClient(server.target, timeout=120) as client:
            messages = []
            for message in client.stream_generate(f"stream {i}", max_tokens=300,
                                                  ignore_eos=True):
                if not messages:
                    started.wait(timeout=60)
                messages.append(message)
            results[i] = messages

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    started.wait(timeout=60)  # all 16 streams have their first token
    server.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if server.health() != SERVING:
                break
        except grpc.RpcError:
            break
        time.sleep(0.05)
    with LlmClient(server.target, retries=0) as late_client, pytest.raises(
            grpc.RpcError) as excinfo:
        late_client.generate("too late", max_tokens=4, timeout=10)
    assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(results) == list(range(16))
    for messages in results.values():
        final = messages[-1]
        assert final.finished
        assert final.completions[0].finish_reason == llm_pb.FINISH_REASON_LENGTH
        assert final.usage.completion_tokens == 300
    assert server.process.wait(timeout=120) == 0
    assert server.wait_engine_gone() == []


def test_engine_death_turns_health_off_fails_requests_and_exits_nonzero(tiny_llama, tmp_path):
    server = start_server(tiny_llama, tmp_path)
    statuses: list[int] = []
    channel = grpc.insecure_channel(server.target)
    watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(),
                                                      timeout=120)

    def follow_health() -> None:
        try:
            for response in watch:
                statuses.append(response.status)
        except grpc.RpcError:
            pass

    follower = threading.Thread(target=follow_health)
    follower.start()
    with LlmClient(server.target, retries=0, timeout=60) as client:
        stream = client.stream_generate("doomed", max_tokens=900, ignore_eos=True)
        next(stream)
        (engine_core,) = [p for p in map(psutil.Process, server.engine_pids)
                          if "EngineCore" in p.name()]
        engine_core.kill()
        with pytest.raises(grpc.RpcError) as excinfo:
            for _ in stream:
                pass
    assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE
    exit_code = server.process.wait(timeout=60)
    follower.join(timeout=60)
    channel.close()
    assert exit_code != 0
    assert statuses[0] == SERVING
    assert NOT_SERVING in statuses
    assert server.wait_engine_gone() == []


def test_sigkill_leaves_no_engine_process(tiny_llama, tmp_path):
    server = start_server(tiny_llama, tmp_path)
    assert server.engine_pids
    server.stop(signal.SIGKILL)
    assert server.wait_engine_gone(timeout=30) == [], "engine outlived a SIGKILLed server"


def test_sigint_drains_like_sigterm(tiny_llama, tmp_path):
    server = start_server(tiny_llama, tmp_path)
    with LlmClient(server.target) as client:
        assert client.generate("hello", max_tokens=4, ignore_eos=True).usage.completion_tokens == 4
    engine_pids = list(server.engine_pids)
    assert server.stop(signal.SIGINT) == 0
    assert engine_pids
    assert server.wait_engine_gone() == []

