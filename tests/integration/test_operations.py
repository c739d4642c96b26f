"""Operations with the fake engine: metrics, admission control, TLS, mutual TLS and API keys."""

import asyncio
import io
import json
import logging
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from llmserve.engine.fake import FakeEngine
from llmserve.logs import ACCESS_LOGGER, JsonFormatter, RequestIdFilter
from llmserve_client import AsyncLlmClient, LlmClient, TlsConfig
from tests.integration.conftest import ThreadedServer
from tests.integration.test_server import wait_until
from tests.support.certs import make_pki
from tests.support.processes import free_port


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_metrics_count_requests_by_rpc_and_code():
    engine = FakeEngine()
    server = ThreadedServer(engine, metrics_port=free_port()).start()
    before_ok = sample("llmserve_requests_total", rpc="Generate", code="OK")
    before_bad = sample("llmserve_requests_total", rpc="Generate", code="INVALID_ARGUMENT")
    before_stream = sample("llmserve_stream_messages_total")
    try:
        with LlmClient(server.target, retries=0) as client:
            for _ in range(3):
                client.generate("Hi", max_tokens=2)
            with pytest.raises(grpc.RpcError):
                client.generate("Hi", temperature=-1)
            list(client.stream_generate("Hi", max_tokens=5))
        url = f"http://127.0.0.1:{server.server.metrics.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            families = {f.name: f for f in text_string_to_metric_families(response.read().decode())}
    finally:
        server.stop()
    assert sample("llmserve_requests_total", rpc="Generate", code="OK") - before_ok == 3
    assert sample("llmserve_requests_total", rpc="Generate",
                  code="INVALID_ARGUMENT") - before_bad == 1
    assert sample("llmserve_stream_messages_total") - before_stream == 5
    for name in ("llmserve_requests", "llmserve_request_duration_seconds",
                 "llmserve_requests_in_flight", "llmserve_admission_rejections",
                 "llmserve_cancellations", "llmserve_deadline_expiries"):
        assert name in families, name
    assert sample("llmserve_requests_in_flight", rpc="Generate") == 0


def test_admission_limit_rejects_the_excess_at_once():
    engine = FakeEngine(token_delay=0.01)
    server = ThreadedServer(engine, max_queued_requests=4).start()
    rejections_before = sample("llmserve_admission_rejections_total")

    async def overload():
        async with AsyncLlmClient(server.target, retries=0) as client:
            async def one():
                try:
                    response = await client.generate("Hi", max_tokens=20)
                    return response.usage.completion_tokens
                except grpc.aio.AioRpcError as exc:
                    return exc.code(), exc.details()
            return await asyncio.gather(*(one() for _ in range(16)))

    try:
        results = asyncio.run(overload())
    finally:
        server.stop()
    completed = [r for r in results if r == 20]
    rejected = [r for r in results if r != 20]
    assert len(completed) == 4
    assert len(rejected) == 12
    assert all(code is grpc.StatusCode.RESOURCE_EXHAUSTED for code, _ in rejected)
    assert rejected[0][1] == ("the server is at its limit of 4 queued requests; retry later")
    assert len(engine.requests) == 4  # the excess never reached the engine
    assert sample("llmserve_admission_rejections_total") - rejections_before == 12


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    return make_pki(directory, "good"), make_pki(directory, "other")


def health_status(channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                    timeout=5).status


def test_tls_serves_trusting_clients_only(pki):
    (ca, server_cert, _), (other_ca, _, _) = pki
    server = ThreadedServer(FakeEngine(), tls_cert=server_cert.cert,
                            tls_key=server_cert.key).start()
    try:
        with LlmClient(server.target, tls=TlsConfig(root_certificates=ca)) as client:
            assert client.generate("Hi", max_tokens=2).completions[0].text == "Th"
        with LlmClient(server.target, retries=0) as plaintext, pytest.raises(grpc.RpcError):
            plaintext.server_live(timeout=3)
        with LlmClient(server.target, retries=0,
                       tls=TlsConfig(root_certificates=other_ca)) as wrong_ca:
            with pytest.raises(grpc.RpcError) as excinfo:
                wrong_ca.server_live(timeout=3)
            assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(pki):
    (ca, server_cert, client_cert), (_, _, other_client) = pki
    server = ThreadedServer(FakeEngine(), tls_cert=server_cert.cert, tls_key=server_cert.key,
                            tls_client_ca=ca).start()
    try:
        good = TlsConfig(root_certificates=ca, client_certificate=client_cert.cert,
                         client_key=client_cert.key)
        with LlmClient(server.target, tls=good) as client:
            assert client.server_ready()
        for tls in (TlsConfig(root_certificates=ca),
                    TlsConfig(root_certificates=ca, client_certificate=other_client.cert,
                              client_key=other_client.key)):
            with LlmClient(server.target, retries=0, tls=tls) as client, pytest.raises(
                    grpc.RpcError) as excinfo:
                client.server_ready(timeout=3)
            assert excinfo.value.code() is grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_api_key_is_required_except_for_health_checks(tmp_path):
    key_file = tmp_path / "keys"
    key_file.write_text("# rotated 2026-11\nsecond-key\n")
    server = ThreadedServer(FakeEngine(), api_key=["first-key"], api_key_file=key_file).start()
    failures_before = sample("llmserve_auth_failures_total")
    try:
        for key in ("first-key", "second-key"):
            with LlmClient(server.target, api_key=key) as client:
                assert client.generate("Hi", max_tokens=1).completions[0].text == "T"
        for key in (None, "wrong-key"):
            with LlmClient(server.target, api_key=key, retries=0) as client:
                with pytest.raises(grpc.RpcError) as excinfo:
                    client.generate("Hi", max_tokens=1)
                assert excinfo.value.code() is grpc.StatusCode.UNAUTHENTICATED
                with pytest.raises(grpc.RpcError) as excinfo:
                    list(client.stream_generate("Hi", max_tokens=1))
                assert excinfo.value.code() is grpc.StatusCode.UNAUTHENTICATED
        with grpc.insecure_channel(server.target) as channel:
            assert health_status(channel) == health_pb2.HealthCheckResponse.SERVING
    finally:
        server.stop()
    assert sample("llmserve_auth_failures_total") - failures_before == 4


def test_json_log_lines_carry_the_request_id(server):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    access_logger = logging.getLogger(ACCESS_LOGGER)
    access_logger.addHandler(handler)
    access_logger.setLevel(logging.INFO)
    try:
        with LlmClient(server.target) as client:
            client.generate("Hi", max_tokens=2, request_id="trace-me")
            with pytest.raises(grpc.RpcError):
                client.generate("Hi", top_k=-5, request_id="bad-one")
        # The client has its answer before the server writes the access line: wait (bounded).
        wait_until(lambda: len(stream.getvalue().splitlines()) >= 2)
    finally:
        access_logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["request_id"], e["rpc"], e["code"]) for e in lines] == [
        ("trace-me", "Generate", "OK"), ("bad-one", "Generate", "INVALID_ARGUMENT")]
    assert lines[0]["completion_tokens"] == 2
