"""The HTTP frontend over the wire, with the fake engine: vLLM demo /generate, health, errors."""

import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import REGISTRY

from llmserve.engine.fake import FakeEngine
from llmserve.http_api import _listen
from llmserve_client import LlmClient, full_text
from tests.integration.conftest import ThreadedServer, server_config
from tests.integration.test_server import wait_until
from tests.support.certs import make_pki
from tests.support.netfilter import needs_nft, packets_from_port_dropped
from tests.support.processes import free_port
from tests.support.proxy import FreezableProxy


def http_url(server: ThreadedServer, scheme: str = "http") -> str:
    return f"{scheme}://127.0.0.1:{server.server.http.port}"


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def stop_cleanly(server: ThreadedServer) -> None:
    """Stops the server; proves the HTTP port closed and no engine request was left running."""
    port = server.server.http.port
    server.stop()
    assert refuses_connections(port)
    assert not server.engine.running


def start(engine: FakeEngine, **config) -> ThreadedServer:
    return ThreadedServer(engine, http_port=free_port(), **config).start()


@pytest.fixture
def http_server(fake_engine):
    server = start(fake_engine)
    yield server
    stop_cleanly(server)


@pytest.fixture
def client(http_server):
    with httpx.Client(base_url=http_url(http_server), timeout=30) as client:
        yield client


def stream_lines(client: httpx.Client, body: dict, **kwargs) -> list[dict]:
    with client.stream("POST", "/generate", json={**body, "stream": True}, **kwargs) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/x-ndjson"
        return [json.loads(line) for line in response.iter_lines()]


def test_generate_returns_prompt_and_completion_like_vllm_demo(client):
    response = client.post("/generate", json={"prompt": "My name is", "max_tokens": 5})
    assert response.status_code == 200
    body = response.json()
    assert body["text"] == ["My name isThe q"]
    assert body["finish_reasons"] == ["length"]
    assert body["usage"] == {"prompt_tokens": 11, "completion_tokens": 5}
    timings = body["timings"]
    assert set(timings) == {"queued_ms", "time_to_first_token_ms", "total_ms"}
    assert timings["total_ms"] >= timings["time_to_first_token_ms"] > 0
    assert response.headers["x-request-id"] == body["request_id"]


def test_sampling_fields_reach_the_engine(client, fake_engine):
    response = client.post("/generate", json={
        "prompt": "Hi", "n": 2, "max_tokens": 12, "stop": "quick", "temperature": 0.5,
        "top_p": 0.9, "top_k": 5, "min_p": 0.1, "seed": 7, "ignore_eos": True,
        "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1,
        "min_tokens": 1, "stop_token_ids": [2], "echo": False,
    })
    assert response.status_code == 200, response.text
    assert response.json()["text"] == ["The ", "he "]
    assert response.json()["finish_reasons"] == ["stop_sequence", "stop_sequence"]
    sent = fake_engine.requests[-1]
    assert (sent.n, sent.max_tokens, sent.stop, sent.temperature, sent.top_k, sent.seed) == (
        2, 12, ["quick"], 0.5, 5, 7)
    assert sent.ignore_eos and sent.stop_token_ids == [2]


def test_logprobs_when_asked(client):
    body = client.post("/generate", json={"prompt": "Hi", "max_tokens": 3, "logprobs": 1}).json()
    assert [p["chosen"]["token"] for p in body["logprobs"][0]] == ["T", "h", "e"]


def test_request_id_header_is_used_and_returned(client, fake_engine):
    response = client.post("/generate", json={"prompt": "Hi", "max_tokens": 2},
                           headers={"x-request-id": "my-id"})
    assert response.headers["x-request-id"] == "my-id"
    assert response.json()["request_id"] == "my-id"
    assert fake_engine.requests[-1].request_id.startswith("my-id-")


def test_stream_sends_growing_texts_then_the_summary(client):
    lines = stream_lines(client, {"prompt": "Hi", "max_tokens": 6})
    assert [line["text"] for line in lines] == [
        ["HiT"], ["HiTh"], ["HiThe"], ["HiThe "], ["HiThe q"], ["HiThe qu"]]
    assert all(set(line) == {"text"} for line in lines[:-1])
    assert lines[-1]["finish_reasons"] == ["length"]
    assert lines[-1]["usage"] == {"prompt_tokens": 3, "completion_tokens": 6}
    assert lines[-1]["timings"]["total_ms"] >= lines[-1]["timings"]["time_to_first_token_ms"] > 0


def test_stream_and_unary_and_grpc_agree(client, http_server):
    request = {"prompt": "Hello", "max_tokens": 9, "n": 2, "temperature": 0}
    unary = client.post("/generate", json=request).json()
    streamed = stream_lines(client, request)[-1]
    with LlmClient(http_server.target) as grpc_client:
        response = grpc_client.generate("Hello", max_tokens=9, n=2, temperature=0)
    expected = ["Hello" + full_text(response, i) for i in range(2)]
    assert unary["text"] == streamed["text"] == expected


@pytest.mark.parametrize(("body", "message"), [
    ("{not json", "body: not valid JSON"),
    ("[1, 2]", "body: must be a JSON object"),
    ('{"max_tokens": 5}', "prompt: required, a string"),
    ('{"prompt": 42}', "prompt: required, a string"),
    ('{"prompt": "Hi", "stream": "yes"}', "stream: expected true or false, got 'yes'"),
    ('{"prompt": "Hi", "max_tokens": "many"}', "max_tokens: expected an integer >= 0, got 'many'"),
    ('{"prompt": "Hi", "max_tokens": -1}', "max_tokens: expected an integer >= 0, got -1"),
    ('{"prompt": "Hi", "temperature": "hot"}', "temperature: expected a number, got 'hot'"),
    ('{"prompt": "Hi", "stop": [1]}', "stop: expected a list of strings, got [1]"),
    ('{"prompt": "Hi", "best_of": 2}', "best_of: unknown field"),
    ('{"prompt": "Hi", "token_ids": [5]}', "token_ids: unknown field"),
    ('{"prompt": "Hi", "temperature": -1}', "temperature: must be >= 0"),
    ('{"prompt": "Hi", "n": 9}', "n: must be in [1, 4]"),
    ('{"prompt": ""}', "input: one of text, token_ids or messages is required"),
])
def test_bad_requests_are_400_naming_the_field(client, body, message):
    response = client.post("/generate", content=body, headers={"x-request-id": "bad-1"})
    assert response.status_code == 400
    assert response.json()["error"].startswith(message)
    assert response.json()["request_id"] == "bad-1"
    assert response.headers["x-request-id"] == "bad-1"


def test_a_stream_request_is_validated_before_it_starts(client):
    response = client.post("/generate", json={"prompt": "Hi", "stream": True, "top_p": 2})
    assert response.status_code == 400
    assert response.json()["error"] == "top_p: must be in (0, 1]"


def test_body_larger_than_the_message_limit_is_413(client, http_server):
    prompt = "x" * (http_server.config.max_message_bytes + 1)
    response = client.post("/generate", json={"prompt": prompt})
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]


def test_health_routes(client):
    assert client.get("/health").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200


def test_draining_server_is_not_ready_and_refuses_generation(client, http_server):
    http_server.loop.call_soon_threadsafe(setattr, http_server.server.state, "draining", True)
    assert wait_until(lambda: not http_server.server.state.ready)
    assert client.get("/health").status_code == 503
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/health/live").status_code == 200
    response = client.post("/generate", json={"prompt": "Hi"})
    assert response.status_code == 503
    assert response.json()["error"] == "the server is shutting down"


def test_dead_engine_is_503_and_ends_a_running_stream_with_an_error(client, fake_engine):
    fake_engine.token_delay = 0.01
    with client.stream("POST", "/generate",
                       json={"prompt": "Hi", "stream": True, "max_tokens": 200}) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["text"] == ["HiT"]
        fake_engine.kill()
        rest = [json.loads(line) for line in lines]
    assert rest[-1]["error"] == "the inference engine has stopped"
    assert client.get("/health").status_code == 503
    assert client.post("/generate", json={"prompt": "Hi"}).status_code == 503


def test_over_the_admission_limit_is_429():
    engine = FakeEngine(token_delay=0.01)
    server = start(engine, max_queued_requests=1)
    try:
        with httpx.Client(base_url=http_url(server), timeout=30) as client, client.stream(
                "POST", "/generate",
                json={"prompt": "Hi", "stream": True, "max_tokens": 300}) as held:
            lines = held.iter_lines()  # kept: dropping it would close the connection
            first = next(lines)
            for stream in (False, True):
                response = client.post("/generate", json={"prompt": "Hi", "stream": stream})
                assert response.status_code == 429
                assert response.json()["error"] == (
                    "the server is at its limit of 1 queued requests; retry later")
    finally:
        stop_cleanly(server)
    assert json.loads(first)["text"] == ["HiT"]


def test_client_leaving_mid_stream_aborts_the_engine_request(client, fake_engine):
    fake_engine.token_delay = 0.01
    with client.stream("POST", "/generate", json={"prompt": "Hi", "stream": True,
                                                  "max_tokens": 500},
                       headers={"x-request-id": "gone"}) as response:
        lines = response.iter_lines()
        for _ in range(3):
            next(lines)
    # Leaving the block closed the connection with the body unread.
    assert wait_until(lambda: any(a.startswith("gone-") for a in fake_engine.aborted))
    assert wait_until(lambda: not fake_engine.running)


def test_client_leaving_a_unary_request_aborts_the_engine_request(http_server, fake_engine):
    fake_engine.token_delay = 0.01
    with httpx.Client(base_url=http_url(http_server), timeout=0.3) as client, pytest.raises(
            httpx.ReadTimeout):
        client.post("/generate", json={"prompt": "Hi", "max_tokens": 500},
                    headers={"x-request-id": "impatient"})
    assert wait_until(lambda: any(a.startswith("impatient-") for a in fake_engine.aborted))
    assert wait_until(lambda: not fake_engine.running)


@contextlib.contextmanager
def accepted_connection(**config) -> Iterator[socket.socket]:
    """A connection accepted by an HTTP listening socket made with these settings."""
    with _listen(server_config(http_port=0, **config)) as listener, \
            socket.create_connection(listener.getsockname()):
        accepted, _ = listener.accept()
        with accepted:
            yield accepted


def test_accepted_connections_carry_tcp_keepalive_and_a_user_timeout():
    with accepted_connection(keepalive_seconds=7.5, keepalive_timeout_seconds=9) as accepted:
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 8
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 9000
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_no_keepalive_leaves_the_kernel_defaults():
    with accepted_connection(keepalive_seconds=0) as accepted:
        assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 0


def test_a_stream_whose_client_stopped_reading_is_reset_and_its_request_aborted():
    # Long lines (each carries the whole text so far) fill the socket buffers soon.
    engine = FakeEngine(token_delay=0.005, max_model_len=8192)
    server = start(engine, keepalive_seconds=1.0, keepalive_timeout_seconds=1.0)
    try:
        with FreezableProxy(server.server.http.port) as proxy, httpx.Client(
                base_url=f"http://127.0.0.1:{proxy.port}", timeout=30) as client, \
                client.stream("POST", "/generate", json={"prompt": "Hi", "stream": True,
                                                         "max_tokens": 8000},
                              headers={"x-request-id": "stopped"}) as response:
            lines = response.iter_lines()
            next(lines)
            proxy.freeze()  # nothing read any more: the server's sends stall, then time out
            # Reset once its data has waited 1 s on a closed window, long before the 40 s
            # the request would take.
            assert wait_until(lambda: engine.aborted, timeout=15)
            response.close()
        assert [a.split("-")[0] for a in engine.aborted] == ["stopped"]
    finally:
        stop_cleanly(server)


@needs_nft
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_a_request_whose_client_host_vanished_is_aborted(stream):
    engine = FakeEngine(token_delay=0.05)  # 500 tokens: 25 s
    server = start(engine, keepalive_seconds=1.0, keepalive_timeout_seconds=1.0)
    port = server.server.http.port
    body = json.dumps({"prompt": "Hi", "max_tokens": 500, "stream": stream}).encode()
    try:
        with socket.create_connection(("127.0.0.1", port)) as connection:
            connection.sendall(b"POST /generate HTTP/1.1\r\nHost: llmserve\r\n"
                               b"Content-Type: application/json\r\nx-request-id: gone\r\n"
                               b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert wait_until(lambda: engine.running)
            with packets_from_port_dropped(port):
                # A stream's data, or a quiet connection's keepalive probe (after 1 s), goes
                # unacknowledged for 1 s: the connection is reset and the request aborted.
                assert wait_until(lambda: engine.aborted, timeout=15)
        assert [a.split("-")[0] for a in engine.aborted] == ["gone"]
    finally:
        stop_cleanly(server)


def test_stop_lets_a_running_stream_finish_and_closes_the_port():
    engine = FakeEngine(token_delay=0.01)
    server = start(engine)
    port = server.server.http.port
    with httpx.Client(base_url=http_url(server), timeout=30) as client, client.stream(
            "POST", "/generate", json={"prompt": "Hi", "stream": True, "max_tokens": 50}) as held:
        lines = held.iter_lines()
        next(lines)
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        rest = [json.loads(line) for line in lines]
    stopper.join(30)
    assert rest[-1]["finish_reasons"] == ["length"]
    assert rest[-1]["usage"]["completion_tokens"] == 50
    assert refuses_connections(port)
    assert not engine.aborted


def test_api_key_guards_generate_but_not_health():
    server = start(FakeEngine(), api_key=["s3cret"])
    try:
        with httpx.Client(base_url=http_url(server), timeout=30) as client:
            for headers in ({}, {"authorization": "Bearer wrong"}):
                response = client.post("/generate", json={"prompt": "Hi"}, headers=headers)
                assert response.status_code == 401
                assert "API key" in response.json()["error"]
            response = client.post("/generate", json={"prompt": "Hi", "max_tokens": 2},
                                   headers={"authorization": "Bearer s3cret"})
            assert response.json()["text"] == ["HiTh"]
            assert client.get("/v2/health/ready").status_code == 200
    finally:
        stop_cleanly(server)


def test_stop_aborts_a_stream_still_running_after_the_grace_period():
    engine = FakeEngine(token_delay=0.01)
    server = start(engine, shutdown_grace_seconds=0.2)
    port = server.server.http.port
    with httpx.Client(base_url=http_url(server), timeout=30) as client, client.stream(
            "POST", "/generate", json={"prompt": "Hi", "stream": True, "max_tokens": 500},
            headers={"x-request-id": "late"}) as held:
        lines = held.iter_lines()
        next(lines)
        server.stop()
        last = json.loads(list(lines)[-1])
    assert last == {"error": "the server is shutting down: the request did not finish within "
                             "the drain period", "request_id": "late"}
    assert any(a.startswith("late-") for a in engine.aborted)
    assert not engine.running
    assert refuses_connections(port)


def test_https_with_the_grpc_certificate(tmp_path):
    ca, server_cert, _ = make_pki(tmp_path, "http")
    server = start(FakeEngine(), tls_cert=server_cert.cert, tls_key=server_cert.key)
    try:
        with httpx.Client(base_url=http_url(server, "https"), timeout=30,
                          verify=ssl.create_default_context(cafile=ca)) as client:
            response = client.post("/generate", json={"prompt": "Hi", "max_tokens": 2})
        assert response.json()["text"] == ["HiTh"]
    finally:
        stop_cleanly(server)


def test_mutual_tls_refuses_clients_without_a_certificate(tmp_path):
    ca, server_cert, client_cert = make_pki(tmp_path, "mtls")
    server = start(FakeEngine(), tls_cert=server_cert.cert, tls_key=server_cert.key,
                   tls_client_ca=ca)
    anonymous = ssl.create_default_context(cafile=ca)
    known = ssl.create_default_context(cafile=ca)
    known.load_cert_chain(client_cert.cert, client_cert.key)
    try:
        with httpx.Client(base_url=http_url(server, "https"), timeout=30,
                          verify=anonymous) as client, pytest.raises(httpx.TransportError):
            client.get("/v2/health/ready")
        with httpx.Client(base_url=http_url(server, "https"), timeout=30,
                          verify=known) as client:
            assert client.get("/v2/health/ready").status_code == 200
    finally:
        stop_cleanly(server)


def test_http_requests_are_counted_like_grpc_ones(client):
    def count(code: str) -> float:
        return REGISTRY.get_sample_value("llmserve_requests_total",
                                         {"rpc": "http_generate", "code": code}) or 0.0

    ok_before, bad_before = count("OK"), count("INVALID_ARGUMENT")
    assert client.post("/generate", json={"prompt": "Hi", "max_tokens": 2}).status_code == 200
    assert client.post("/generate", json={"prompt": "Hi", "top_p": 5}).status_code == 400
    assert (count("OK") - ok_before, count("INVALID_ARGUMENT") - bad_before) == (1, 1)
    assert REGISTRY.get_sample_value("llmserve_requests_in_flight", {"rpc": "http_generate"}) == 0
