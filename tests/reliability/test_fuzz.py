"""Fuzzing a real in-process server (fake engine) over gRPC, HTTP and raw TCP.

Every generated GenerateRequest (and Tokenize/Detokenize request) gets OK or INVALID_ARGUMENT
(never INTERNAL or UNKNOWN), every random POST /generate body 200, 400 or 413 (too large), and
garbage bytes or truncated HTTP/2 frames on either port leave the server healthy: health
SERVING, a normal request still works, no engine request left running. Hypothesis runs
derandomized (the same examples every run) without an example database.
"""

import collections
import json
import math
import random
import socket
import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from llmserve.engine.fake import FakeEngine
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client import LlmClient, full_text
from llmserve_client import pb as llm_pb
from tests.integration.conftest import MODEL_NAME, ThreadedServer
from tests.reliability.results import record
from tests.support.processes import free_port

GRPC_EXAMPLES = 2000
HTTP_EXAMPLES = 1000
TOKENIZER_EXAMPLES = 300
GARBAGE_CONNECTIONS = 150
TRUNCATED_CONNECTIONS = 150
MAX_MESSAGE_BYTES = 256 * 1024
CALL_TIMEOUT = 30.0
SOCKET_TIMEOUT = 5.0
ALLOWED_GRPC = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
ALLOWED_HTTP = {200, 400, 413}
FUZZ_SETTINGS = dict(derandomize=True, database=None, deadline=None, print_blob=True,
                     suppress_health_check=list(HealthCheck))

# Odd unicode (no surrogates: they cannot be encoded as UTF-8, so no client can send them).
ODD_STRINGS = ["", " ", "\x00", "\x00" * 64, "\r\n", "\u202e\u202d", "\ufeff", "\ufffe\uffff",
               "\U0010ffff", "e\u0301" * 50, "🦙" * 300, "\x1b[31m", "<|user|>", "{{ x }}",
               "{% for %}", "%s%n%x", "\\", "\"'", "a" * 5000, "é" * 5000]
unicode_text = st.text(st.characters(codec="utf-8"), max_size=300)
odd_text = st.one_of(unicode_text, st.sampled_from(ODD_STRINGS),
                     st.text(st.characters(codec="utf-8"), min_size=1000, max_size=20000))
FLOAT_EXTREMES = [math.nan, math.inf, -math.inf, -0.0, 0.0, 1e-45, 3.4e38, -3.4e38, 1.0, 2.0,
                  -2.0, 0.5, 1e30]
any_float32 = st.one_of(st.floats(width=32), st.sampled_from(FLOAT_EXTREMES))
UINT32_MAX = 2**32 - 1
any_uint32 = st.one_of(st.integers(0, UINT32_MAX),
                       st.sampled_from([0, 1, 511, 512, 513, 2**31, UINT32_MAX]))
any_int32 = st.integers(-2**31, 2**31 - 1)
any_uint64 = st.one_of(st.integers(0, 2**64 - 1),
                       st.sampled_from([2**63 - 1, 2**63, 2**64 - 1]))
VOCAB = 259  # the fake engine's


def mostly(usual, rare):
    """`usual` nine times in ten: most requests get far enough to generate, some fail a rule."""
    return st.integers(0, 9).flatmap(lambda i: rare if i == 0 else usual)


def floats_in(low: float, high: float):
    return mostly(st.floats(low, high, width=32), any_float32)


def uints_in(low: int, high: int):
    return mostly(st.integers(low, high), any_uint32)


token_id_lists = st.lists(mostly(st.integers(0, VOCAB - 1), any_uint32), max_size=600)
chat_message = st.builds(
    llm_pb.ChatMessage,
    role=mostly(st.sampled_from(["user", "system", "assistant"]), unicode_text),
    content=mostly(st.text(st.characters(codec="utf-8"), max_size=40), odd_text))
SCALARS = {
    "add_generation_prompt": st.booleans(),
    "temperature": floats_in(0, 2), "top_p": floats_in(0.25, 1), "min_p": floats_in(0, 1),
    "top_k": mostly(st.integers(-1, 64), any_int32),
    "seed": mostly(st.integers(0, 2**63 - 1), any_uint64),
    "repetition_penalty": floats_in(0.5, 2), "presence_penalty": floats_in(-2, 2),
    "frequency_penalty": floats_in(-2, 2), "n": uints_in(1, 4), "max_tokens": uints_in(1, 64),
    "min_tokens": uints_in(0, 16), "ignore_eos": st.booleans(),
    "time_limit_ms": st.sampled_from([0, 0, 0, 1, 5, 50]) | any_uint32,
    "include_stop_str_in_output": st.booleans(), "logprobs": uints_in(0, 20),
    "prompt_logprobs": uints_in(0, 20), "skip_special_tokens": st.booleans(),
    "echo": st.booleans(), "truncate_prompt_tokens": uints_in(1, 600),
    "stream_interval": uints_in(1, 16),
}


@st.composite
def generate_requests(draw) -> llm_pb.GenerateRequest:
    """A GenerateRequest with any mix of fields set to anything the proto can carry."""
    request = llm_pb.GenerateRequest()
    request.request_id = draw(mostly(st.just("") | st.text("abcdef0123456789-", max_size=40),
                                     odd_text))
    request.model = draw(mostly(st.sampled_from(["", MODEL_NAME]), unicode_text))
    inputs = draw(mostly(st.sampled_from([{"text"}, {"token_ids"}, {"messages"}]),
                         st.sets(st.sampled_from(["text", "token_ids", "messages"]))))
    if "text" in inputs:
        request.text = draw(odd_text)
    if "token_ids" in inputs:
        request.token_ids.extend(draw(token_id_lists))
    if "messages" in inputs:
        count = draw(mostly(st.integers(1, 8), st.integers(0, 200)))
        request.messages.extend(draw(st.lists(chat_message, min_size=count, max_size=count)))
    for name, strategy in SCALARS.items():
        value = draw(st.none() | strategy)
        if value is not None:
            setattr(request, name, value)
    stops = st.sampled_from([" ", "o", "fox", "The", "\x00"]) | odd_text
    request.stop.extend(draw(st.lists(stops, max_size=draw(mostly(st.just(4), st.just(48))))))
    request.stop_token_ids.extend(draw(st.lists(mostly(st.integers(0, VOCAB - 1), any_uint32),
                                                max_size=8)))
    return request


@pytest.fixture(scope="module")
def fuzz_server():
    server = ThreadedServer(FakeEngine(), http_port=free_port(), max_n=4, default_max_tokens=16,
                            max_message_bytes=MAX_MESSAGE_BYTES).start()
    yield server
    server.stop()


def assert_healthy(server: ThreadedServer) -> None:
    """Health SERVING, a normal request over each frontend works, nothing left running."""
    with grpc.insecure_channel(server.target) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                            timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING
    with LlmClient(server.target, retries=0, timeout=10) as client:
        assert full_text(client.generate("Hi", max_tokens=5)) == "The q"
    response = httpx.post(f"http://127.0.0.1:{server.server.http.port}/generate",
                          json={"prompt": "Hi", "max_tokens": 3}, timeout=10)
    assert response.status_code == 200
    assert response.json()["text"] == ["HiThe"]
    assert not server.engine.running


def call(stub: pb_grpc.LlmServiceStub, request: llm_pb.GenerateRequest,
         stream: bool) -> tuple[grpc.StatusCode, str, list[llm_pb.GenerateResponse]]:
    try:
        if stream:
            responses = list(stub.StreamGenerate(request, timeout=CALL_TIMEOUT))
        else:
            responses = [stub.Generate(request, timeout=CALL_TIMEOUT)]
        return grpc.StatusCode.OK, "", responses
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", []


def test_fuzzed_generate_requests_get_ok_or_invalid_argument(fuzz_server):
    seen: collections.Counter = collections.Counter()
    unexpected: list[tuple] = []
    fields_rejected: collections.Counter = collections.Counter()

    with grpc.insecure_channel(fuzz_server.target, options=[
            ("grpc.max_receive_message_length", 64 * 1024 * 1024)]) as channel:
        stub = pb_grpc.LlmServiceStub(channel)

        @settings(max_examples=GRPC_EXAMPLES, **FUZZ_SETTINGS)
        @given(request=generate_requests(), stream=st.booleans())
        def check(request, stream):
            for name in ("messages", "stop", "text"):  # oversized messages are another test
                if request.ByteSize() > MAX_MESSAGE_BYTES - 1024:
                    request.ClearField(name)
            code, details, responses = call(stub, request, stream)
            seen[(("stream" if stream else "unary"), code.name)] += 1
            if code not in ALLOWED_GRPC:
                unexpected.append((code.name, details, request))
            assert code in ALLOWED_GRPC, (code, details)
            if code is grpc.StatusCode.INVALID_ARGUMENT:
                field, _, rule = details.partition(": ")
                assert field and rule, details
                fields_rejected[field.split("[")[0]] += 1
            else:  # finished, and the usage counts every token sent
                final = responses[-1]
                assert final.finished
                tokens = sum(len(c.token_ids) for r in responses for c in r.completions)
                assert final.usage.completion_tokens == tokens

        check()
    assert_healthy(fuzz_server)
    total = sum(seen.values())
    assert total >= GRPC_EXAMPLES
    record("fuzz_grpc", title="Fuzzed GenerateRequests over gRPC",
           load=f"{total} hypothesis-generated requests (derandomized), unary and streaming, "
                "one at a time, in-process server with the fake engine",
           faults="random values for every field: odd unicode (NUL, BiDi, BOM, noncharacters, "
                  "emoji, combining marks, template syntax, 20k-character strings), NaN/±inf/"
                  "huge/negative/denormal floats, int32/uint32/uint64 extremes, token ids out "
                  "of range, up to 48 stop strings, up to 200 chat messages, conflicting inputs",
           outcome={"calls": total,
                    "calls by kind and status": {f"{k} {c}": n for (k, c), n in
                                                 sorted(seen.items())},
                    "INVALID_ARGUMENT by the field named": dict(fields_rejected.most_common()),
                    "INTERNAL or UNKNOWN": len(unexpected),
                    "afterwards": "health SERVING, a normal request works over gRPC and HTTP, "
                                  "no engine request left running"})


@pytest.mark.parametrize("request_id", ["\x1f", "tab\there", "é", "🦙", "x" * 129])
def test_request_ids_that_cannot_be_echoed_are_invalid_arguments(fuzz_server, request_id):
    """Found by the fuzzer: such ids broke the x-request-id trailer/header (INTERNAL, HTTP 500)."""
    with LlmClient(fuzz_server.target, retries=0, timeout=10) as client:
        with pytest.raises(grpc.RpcError) as excinfo:
            client.generate("Hi", max_tokens=2, request_id=request_id)
        assert excinfo.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert excinfo.value.details() == (
            "request_id: at most 128 printable ASCII characters")
        assert client.generate("Hi", max_tokens=2, request_id="x" * 128).request_id == "x" * 128
    response = httpx.post(f"http://127.0.0.1:{fuzz_server.server.http.port}/generate",
                          json={"prompt": "Hi", "request_id": request_id}, timeout=10)
    assert response.status_code == 400
    assert response.json()["error"] == "request_id: at most 128 printable ASCII characters"
    assert len(response.headers["x-request-id"]) == 32  # one of the server's own


def test_time_limits_that_expire_mid_write_end_streams_with_time_limit(fuzz_server):
    """Found by the fuzzer: a time limit firing inside a stream write left gRPC's send pending;
    the TIME_LIMIT message then failed with TOO_MANY_OPERATIONS (INTERNAL), ~2% of streams."""
    reasons: collections.Counter = collections.Counter()
    with grpc.insecure_channel(fuzz_server.target) as channel:
        stub = pb_grpc.LlmServiceStub(channel)
        for i in range(200):
            request = llm_pb.GenerateRequest(text="Hi", max_tokens=400, n=4, logprobs=5,
                                             time_limit_ms=1 + i % 5)
            final = list(stub.StreamGenerate(request, timeout=CALL_TIMEOUT))[-1]
            reasons[llm_pb.FinishReason.Name(final.completions[0].finish_reason)] += 1
    assert reasons == {"FINISH_REASON_TIME_LIMIT": 200}


def test_fuzzed_tokenize_and_detokenize_get_ok_or_invalid_argument(fuzz_server):
    seen: collections.Counter = collections.Counter()
    with grpc.insecure_channel(fuzz_server.target) as channel:
        stub = pb_grpc.LlmServiceStub(channel)

        @settings(max_examples=TOKENIZER_EXAMPLES, **FUZZ_SETTINGS)
        @given(text=odd_text | st.just(""), messages=st.lists(chat_message, max_size=4),
               flags=st.tuples(*[st.none() | st.booleans()] * 3), token_ids=token_id_lists)
        def check(text, messages, flags, token_ids):
            add_special, add_generation_prompt, skip_special = flags
            tokenize = llm_pb.TokenizeRequest(text=text, messages=messages,
                                              return_tokens=bool(len(text) % 2))
            if add_special is not None:
                tokenize.add_special_tokens = add_special
            if add_generation_prompt is not None:
                tokenize.add_generation_prompt = add_generation_prompt
            detokenize = llm_pb.DetokenizeRequest(token_ids=token_ids)
            if skip_special is not None:
                detokenize.skip_special_tokens = skip_special
            for name, method, request in (("Tokenize", stub.Tokenize, tokenize),
                                          ("Detokenize", stub.Detokenize, detokenize)):
                try:
                    method(request, timeout=CALL_TIMEOUT)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.RpcError as exc:
                    code, details = exc.code(), exc.details()
                seen[f"{name} {code.name}"] += 1
                assert code in ALLOWED_GRPC, (name, code, details)

        check()
    assert_healthy(fuzz_server)
    record("fuzz_tokenizer", title="Fuzzed Tokenize and Detokenize over gRPC",
           load=f"{sum(seen.values())} calls from {TOKENIZER_EXAMPLES} hypothesis examples "
                "(derandomized), one at a time",
           faults="odd unicode text or chat messages (empty roles, template syntax), both or "
                  "neither, optional flags unset/true/false; token ids out of range",
           outcome={"calls by RPC and status": dict(sorted(seen.items())),
                    "INTERNAL or UNKNOWN": 0})


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), unicode_text,
                         st.sampled_from([0, 1, 4, -1, 2**32, 2**64, 1e308, "4", ""]))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=5)
                           | st.dictionaries(unicode_text, children, max_size=5), max_leaves=20)
short_text = st.text(st.characters(codec="utf-8"), max_size=60)
# Usual values of the demo API's fields (each replaced by random JSON one time in ten).
HTTP_FIELDS = {
    "stream": st.booleans(), "max_tokens": st.integers(1, 32), "temperature": st.floats(0, 2),
    "top_p": st.floats(0.25, 1), "top_k": st.integers(-1, 50), "n": st.integers(1, 4),
    "stop": short_text | st.lists(short_text, max_size=4),
    "stop_token_ids": st.lists(st.integers(3, VOCAB - 1), max_size=4),
    "seed": st.integers(0, 2**63 - 1), "logprobs": st.integers(0, 5),
    "ignore_eos": st.booleans(), "request_id": st.text("abc123-", max_size=20),
    "echo": st.booleans(), "min_p": st.floats(0, 1), "min_tokens": st.integers(0, 8),
    "time_limit_ms": st.sampled_from([0, 5]), "presence_penalty": st.floats(-2, 2),
    "model": st.sampled_from(["", MODEL_NAME]), "stream_interval": st.integers(1, 8),
    "unknown_field": json_values,
}


@st.composite
def http_bodies(draw) -> bytes:
    kind = draw(mostly(st.just("fields"), st.sampled_from(["any_json", "bytes", "huge"])))
    if kind == "bytes":
        return draw(st.binary(max_size=2000))
    if kind == "huge":
        return json.dumps({"prompt": "x" * (MAX_MESSAGE_BYTES + draw(st.integers(1, 5000)))
                           }).encode()
    if kind == "any_json":
        body = draw(json_values)
    else:
        body = {"prompt": draw(mostly(short_text, odd_text | json_scalars))}
        for name in draw(st.lists(st.sampled_from(sorted(HTTP_FIELDS)), max_size=8,
                                  unique=True)):
            body[name] = draw(mostly(HTTP_FIELDS[name], json_values))
    return json.dumps(body, allow_nan=True).encode()


def test_fuzzed_http_generate_bodies_get_200_400_or_413(fuzz_server):
    seen: collections.Counter = collections.Counter()
    url = f"http://127.0.0.1:{fuzz_server.server.http.port}/generate"

    with httpx.Client(timeout=CALL_TIMEOUT) as client:
        @settings(max_examples=HTTP_EXAMPLES, **FUZZ_SETTINGS)
        @given(body=http_bodies())
        def check(body):
            response = client.post(url, content=body,
                                   headers={"content-type": "application/json"})
            # NDJSON lines end with b"\n" only (iter_lines would also split at U+0085, U+2028).
            lines = [json.loads(line) for line in response.content.split(b"\n") if line]
            seen[response.status_code] += 1
            assert response.status_code in ALLOWED_HTTP, lines
            if response.status_code == 200:
                assert "error" not in lines[-1], lines[-1]
                assert lines[-1]["finish_reasons"]
            else:
                assert lines[0]["error"]

        check()
    assert_healthy(fuzz_server)
    total = sum(seen.values())
    record("fuzz_http", title="Fuzzed POST /generate bodies over HTTP",
           load=f"{total} hypothesis-generated bodies (derandomized), one at a time",
           faults="arbitrary JSON documents, objects with the known fields set to random JSON "
                  "values (NaN, ±Infinity, 2**70, nested lists/objects, odd unicode), random "
                  f"bytes, bodies just over the {MAX_MESSAGE_BYTES} byte limit",
           outcome={"requests": total,
                    "requests by HTTP status": {str(k): v for k, v in sorted(seen.items())},
                    "other statuses (500 ...)": 0,
                    "afterwards": "health SERVING, a normal request works over gRPC and HTTP, "
                                  "no engine request left running"})


# Raw bytes on the wire.

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
ENDINGS = ("half-close", "abandon", "reset")


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(
        ">I", stream_id) + payload


def literal_header(name: str, value: str) -> bytes:
    """HPACK literal header field without indexing, no Huffman (lengths < 127)."""
    return bytes([0, len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def grpc_call_bytes(authority: str, message: bytes) -> bytes:
    """The bytes of one complete unary Generate call: preface, settings, headers, data."""
    headers = b"".join(literal_header(k, v) for k, v in [
        (":method", "POST"), (":scheme", "http"), (":path", "/llmserve.v1.LlmService/Generate"),
        (":authority", authority), ("content-type", "application/grpc"), ("te", "trailers")])
    grpc_message = b"\x00" + struct.pack(">I", len(message)) + message
    return (PREFACE + frame(4, 0, 0, b"") + frame(4, 1, 0, b"")
            + frame(1, 4, 1, headers)  # HEADERS, END_HEADERS
            + frame(0, 1, 1, grpc_message))  # DATA, END_STREAM


def exchange(port: int, data: bytes, ending: str) -> None:
    """Sends `data` to 127.0.0.1:port, then half-closes and reads until the server closes
    (bounded), or abandons the connection at once, or resets it."""
    with socket.create_connection(("127.0.0.1", port), timeout=SOCKET_TIMEOUT) as sock:
        try:
            sock.sendall(data)
            if ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            elif ending == "half-close":
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(65536):
                    pass
        except OSError:  # reset, timed out, or already closed by the server
            pass


def reply(port: int, data: bytes) -> bytes:
    """What the server sends back to `data` within a second (the connection stays open)."""
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
        sock.sendall(data)
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except TimeoutError:
            pass
    return bytes(received)


def test_garbage_bytes_and_truncated_http2_frames_do_not_hurt_the_server(fuzz_server):
    rng = random.Random(20261125)
    grpc_port, http_port = fuzz_server.server.port, fuzz_server.server.http.port
    request = llm_pb.GenerateRequest(text="Hi", max_tokens=5).SerializeToString()
    complete = grpc_call_bytes(fuzz_server.target, request)
    # The hand-made frames are a real call: the full sequence gets the generated text back.
    assert b"The q" in reply(grpc_port, complete)

    connections: list[tuple[str, int, bytes, str]] = []
    for i in range(GARBAGE_CONNECTIONS):
        garbage = rng.randbytes(rng.choice([1, 8, 24, 100, 4096, 70_000]))
        if i % 3 == 1:  # a valid preface, then garbage frames
            garbage = PREFACE + garbage
        connections.append(("random bytes, gRPC port", grpc_port, garbage, ENDINGS[i % 3]))
        http_garbage = garbage if i % 2 else b"POST /generate HTTP/1.1\r\n" + garbage
        connections.append(("random bytes, HTTP port", http_port, http_garbage, ENDINGS[i % 3]))
    for i in range(TRUNCATED_CONNECTIONS):
        data = bytearray(complete)
        mutation = ("truncated", "truncated", "bit flips", "oversized length")[i % 4]
        if mutation == "truncated":
            data = data[:rng.randrange(len(PREFACE), len(data))]
        elif mutation == "bit flips":
            for _ in range(rng.randint(1, 4)):
                data[rng.randrange(len(PREFACE), len(data))] ^= 1 << rng.randrange(8)
        else:  # a gRPC message length that promises more than is sent
            data = data[:-len(request) - 5] + b"\x00" + struct.pack(">I", 10_000_000) + request
        connections.append((f"HTTP/2 Generate call, {mutation}", grpc_port, bytes(data),
                            ENDINGS[i % 3]))
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda c: exchange(*c[1:]), connections))
    assert_healthy(fuzz_server)
    in_flight = sum(REGISTRY.get_sample_value("llmserve_requests_in_flight", {"rpc": rpc}) or 0
                    for rpc in ("Generate", "StreamGenerate"))
    assert in_flight == 0
    kinds = collections.Counter(kind for kind, *_ in connections)
    record("fuzz_wire", title="Garbage bytes and broken HTTP/2 frames on the ports",
           load=f"{len(connections)} raw TCP connections to 127.0.0.1, 8 at a time",
           faults="random bytes (1 B to 70 kB) on the gRPC and HTTP ports, with and without a "
                  "valid HTTP/2 preface or request line; a hand-made valid Generate call (its "
                  "full form checked to get the generated text back) cut at random points, "
                  "with random bit flips, or with a gRPC length prefix promising 10 MB; each "
                  "connection then half-closed and read to the end, abandoned, or reset",
           outcome={"connections": dict(kinds),
                    "afterwards": "health SERVING, a normal request works over gRPC and HTTP",
                    "engine requests left running": len(fuzz_server.engine.running),
                    "llmserve_requests_in_flight afterwards": in_flight})
