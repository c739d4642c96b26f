"""A real gRPC server on a random port with the fake engine: every RPC over the wire."""

import asyncio
import contextlib
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from llmserve.engine.fake import FakeEngine
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client import AsyncLlmClient, LlmClient, full_text
from llmserve_client.cli import main as client_main
from tests.integration.conftest import ThreadedServer
from tests.support.netfilter import needs_nft, packets_from_port_dropped
from tests.support.proxy import FreezableProxy

GRPCURL = shutil.which("grpcurl") or str(Path(sys.executable).parent / "grpcurl")


def wait_until(condition, timeout: float = 5.0) -> bool:
    """Polls `condition` (bounded); returns its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_every_unary_rpc(server):
    with LlmClient(server.target) as client:
        assert client.server_live()
        assert client.server_ready()
        assert client.model_ready()
        assert client.model_ready("fake-model")
        assert client.server_metadata().name == "llmserve"
        assert client.model_metadata().engine == "fake"
        assert client.detokenize(client.tokenize("hello").token_ids) == "hello"
        response = client.generate("Hi", max_tokens=5, request_id="r1")
        assert full_text(response) == "The q"
        assert response.request_id == "r1"


def test_stream_messages_arrive_in_order(server):
    with LlmClient(server.target) as client:
        messages = list(client.stream_generate("Hi", max_tokens=20))
    assert "".join(m.completions[0].text for m in messages) == "The quick brown fox "
    assert [m.finished for m in messages] == [False] * 19 + [True]
    assert messages[-1].usage.completion_tokens == 20


async def test_async_client_streams_and_generates(server):
    async with AsyncLlmClient(server.target) as client:
        texts = [m.completions[0].text async for m in client.stream_generate("Hi", max_tokens=4)]
        response = await client.generate("Hi", max_tokens=4)
    assert "".join(texts) == full_text(response) == "The "


def test_concurrent_streams_are_not_serialized(fake_engine, server):
    """32 streams in flight at once reach the engine together."""
    fake_engine.token_delay = 0.02
    peak = 0

    async def run_all():
        nonlocal peak
        async with AsyncLlmClient(server.target) as client:
            async def one(i):
                return [m async for m in client.stream_generate(f"p{i}", max_tokens=10)]

            tasks = [asyncio.create_task(one(i)) for i in range(32)]
            while not all(t.done() for t in tasks):
                peak = max(peak, len(fake_engine.running))
                await asyncio.sleep(0.005)
            return [t.result() for t in tasks]

    results = asyncio.run(run_all())
    assert all(r[-1].finished and r[-1].usage.completion_tokens == 10 for r in results)
    assert peak == 32


def test_client_cancellation_aborts_the_engine_request(fake_engine, server):
    fake_engine.token_delay = 0.05
    with LlmClient(server.target) as client:
        stream = client.stream_generate("Hi", max_tokens=500)
        next(stream)
        stream.close()  # cancels the RPC
    assert wait_until(lambda: len(fake_engine.aborted) == 1)
    assert fake_engine.aborted == [fake_engine.requests[0].request_id]
    assert wait_until(lambda: not fake_engine.running)


def test_deadline_is_deadline_exceeded_and_aborts(fake_engine, server):
    fake_engine.token_delay = 0.05
    with LlmClient(server.target) as client:
        with pytest.raises(grpc.RpcError) as excinfo:
            client.generate("Hi", max_tokens=500, timeout=0.3)
        assert excinfo.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
        with pytest.raises(grpc.RpcError) as excinfo:
            list(client.stream_generate("Hi", max_tokens=500, timeout=0.3))
        assert excinfo.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert wait_until(lambda: len(fake_engine.aborted) == 2)
    assert sorted(fake_engine.aborted) == sorted(r.request_id for r in fake_engine.requests)


@pytest.mark.parametrize("vanish", ["frozen_proxy", pytest.param("dropped_packets",
                                                                  marks=needs_nft)])
@pytest.mark.parametrize("rpc", ["Generate", "StreamGenerate"])
def test_a_vanished_client_is_found_by_keepalive_and_its_request_aborted(rpc, vanish):
    engine = FakeEngine(token_delay=0.05)
    server = ThreadedServer(engine, keepalive_seconds=1.0, keepalive_timeout_seconds=1.0).start()
    cancelled_before = REGISTRY.get_sample_value(
        "llmserve_requests_total", {"rpc": rpc, "code": "CANCELLED"}) or 0.0
    try:
        with FreezableProxy(server.server.port) as proxy, \
                grpc.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            request = pb.GenerateRequest(text="Hi", max_tokens=500)
            if rpc == "Generate":
                call = pb_grpc.LlmServiceStub(channel).Generate.future(request)
            else:
                call = pb_grpc.LlmServiceStub(channel).StreamGenerate(request)
                next(call)
            assert wait_until(lambda: engine.running)
            with contextlib.ExitStack() as gone:  # no FIN, no RST: the client is just gone
                if vanish == "frozen_proxy":  # its process: the kernel still sends ACKs
                    proxy.freeze()
                else:  # its machine or network: nothing the server sends arrives
                    gone.enter_context(packets_from_port_dropped(server.server.port))
                # Unanswered pings (1 s apart, 1 s to answer) end the call long before its 25 s.
                assert wait_until(lambda: engine.aborted, timeout=15)
            call.cancel()
        assert engine.aborted == [engine.requests[0].request_id]
        assert wait_until(lambda: REGISTRY.get_sample_value(
            "llmserve_requests_total", {"rpc": rpc, "code": "CANCELLED"}) == cancelled_before + 1)
    finally:
        server.stop()


def test_status_codes_over_the_wire(fake_engine, server):
    with LlmClient(server.target, retries=0) as client:
        with pytest.raises(grpc.RpcError) as excinfo:
            client.generate("Hi", top_p=2.0)
        assert excinfo.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert excinfo.value.details() == "top_p: must be in (0, 1]"
        fake_engine.failure = KeyError("secret")
        with pytest.raises(grpc.RpcError) as excinfo:
            client.generate("Hi", request_id="abc")
        assert excinfo.value.code() is grpc.StatusCode.INTERNAL
        assert excinfo.value.details() == "internal error (request_id=abc)"
        fake_engine.failure = None
        fake_engine.kill()
        with pytest.raises(grpc.RpcError) as excinfo:
            list(client.stream_generate("Hi"))
        assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE


def test_oversized_request_is_resource_exhausted(server):
    with LlmClient(server.target, retries=0) as client, pytest.raises(grpc.RpcError) as excinfo:
        client.generate("x" * (5 * 1024 * 1024))
    assert excinfo.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_health_service_follows_the_engine(fake_engine, server):
    with grpc.insecure_channel(server.target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "llmserve.v1.LlmService"):
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING
        fake_engine.kill()
        assert wait_until(lambda: stub.Check(health_pb2.HealthCheckRequest()).status
                          == health_pb2.HealthCheckResponse.NOT_SERVING)


def test_unary_calls_are_retried_on_unavailable():
    """A server that comes up after the first attempt still answers a retried unary call."""
    first = ThreadedServer(FakeEngine()).start()
    port = first.server.port
    first.stop()
    restarted: list[ThreadedServer] = []

    def restart():
        time.sleep(0.3)
        restarted.append(ThreadedServer(FakeEngine(), port=port).start())

    thread = threading.Thread(target=restart)
    try:
        with LlmClient(f"127.0.0.1:{port}", retries=4) as client:
            thread.start()
            assert full_text(client.generate("Hi", max_tokens=2)) == "Th"
    finally:
        thread.join()
        for server in restarted:
            server.stop()


def grpcurl(*args: str) -> str:
    result = subprocess.run([GRPCURL, "-plaintext", *args], capture_output=True, text=True,
                            timeout=30, check=True)
    return result.stdout


def test_grpcurl_lists_and_calls_through_reflection(server):
    services = grpcurl(server.target, "list").split()
    assert {"llmserve.v1.LlmService", "grpc.health.v1.Health"} <= set(services)
    response = json.loads(grpcurl("-d", '{"text": "Hi", "max_tokens": 3}', server.target,
                                  "llmserve.v1.LlmService/Generate"))
    assert response["completions"][0]["text"] == "The"
    stream = grpcurl("-d", '{"text": "Hi", "max_tokens": 3}', server.target,
                     "llmserve.v1.LlmService/StreamGenerate")
    decoder, messages, rest = json.JSONDecoder(), [], stream.strip()
    while rest:
        message, end = decoder.raw_decode(rest)
        messages.append(message)
        rest = rest[end:].strip()
    assert [m["completions"][0].get("text", "") for m in messages] == ["T", "h", "e"]


def test_client_cli_streams_and_prints_json(server, capsys):
    with pytest.raises(SystemExit) as excinfo:
        client_main(["--target", server.target, "generate", "Hi", "--stream",
                     "--max-tokens", "9"])
    assert excinfo.value.code == 0
    assert capsys.readouterr().out == "The quick\n"
    with pytest.raises(SystemExit):
        client_main(["--target", server.target, "generate", "Hi", "--json", "--max-tokens", "3"])
    response = json.loads(capsys.readouterr().out)
    assert response["completions"][0]["text"] == "The"
    assert response["usage"] == {"prompt_tokens": 3, "completion_tokens": 3}


def test_a_client_that_falls_behind_gets_merged_tokens_and_the_same_text():
    # Like vLLM, the engine merges tokens the stream has not sent yet; with a 1 KiB flow-control
    # window the server's writes wait while the client sleeps, so its messages carry several.
    engine = FakeEngine(max_model_len=4096, token_delay=0.0005, merge_unread_outputs=True)
    options = [("grpc.http2.lookahead_bytes", 1024), ("grpc.http2.bdp_probe", 0)]
    request = pb.GenerateRequest(text="Hi", max_tokens=1000, min_tokens=1000, ignore_eos=True)
    threaded = ThreadedServer(engine).start()
    try:
        with grpc.insecure_channel(threaded.target, options=options) as channel:
            messages = []
            for message in pb_grpc.LlmServiceStub(channel).StreamGenerate(request, timeout=60):
                messages.append(message)
                if len(messages) <= 30:
                    time.sleep(0.01)
    finally:
        threaded.stop()
    text = "".join(c.text for m in messages for c in m.completions)
    assert text == (engine.text.decode() * 100)[:1000]
    assert messages[-1].usage.completion_tokens == 1000
    assert len(messages) < 1000
    assert max(len(c.token_ids) for m in messages for c in m.completions) > 1
