"""Clients that stop reading, with the fake engine in-process: the server's writes block on HTTP/2
flow control; the deadline or a cancel must end the call as DEADLINE_EXCEEDED or CANCELLED
(found by the slow-consumer test: the failed write was counted as INTERNAL)."""

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from llmserve.engine.fake import FakeEngine
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc
from llmserve_client import pb as llm_pb
from tests.integration.conftest import ThreadedServer
from tests.integration.test_server import wait_until


def requests_total(code: str) -> float:
    return REGISTRY.get_sample_value("llmserve_requests_total",
                                     {"rpc": "StreamGenerate", "code": code}) or 0.0


def in_flight() -> float:
    return REGISTRY.get_sample_value("llmserve_requests_in_flight",
                                     {"rpc": "StreamGenerate"}) or 0.0


@pytest.fixture(scope="module")
def roomy_server():
    """Long outputs (8k-token context) of many small messages: enough to fill a window."""
    server = ThreadedServer(FakeEngine(max_model_len=8192), max_n=4).start()
    yield server
    server.stop()


async def stall(target: str, ending: str) -> str:
    options = [("grpc.http2.bdp_probe", 0)]  # the window stays at 64 KiB
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = pb_grpc.LlmServiceStub(channel).StreamGenerate(
            llm_pb.GenerateRequest(text="stall", max_tokens=8000, n=4, logprobs=1,
                                   ignore_eos=True), timeout=2 if ending == "deadline" else 60)
        await call.read()
        if ending == "cancel":
            # Bounded wait until the server's writes are blocked (its stream is still open).
            await asyncio.sleep(0.5)
            call.cancel()
        try:
            await asyncio.wait_for(call.code(), timeout=30)
        except asyncio.CancelledError:
            return "CANCELLED"
        return (await call.code()).name


@pytest.mark.parametrize(("ending", "code"), [("deadline", "DEADLINE_EXCEEDED"),
                                              ("cancel", "CANCELLED")])
def test_a_stalled_stream_ends_as_expired_or_cancelled(roomy_server, ending, code):
    before = {c: requests_total(c) for c in ("INTERNAL", code)}
    assert asyncio.run(stall(roomy_server.target, ending)) == code
    assert wait_until(lambda: in_flight() == 0, timeout=10)
    assert requests_total(code) == before[code] + 1
    assert requests_total("INTERNAL") == before["INTERNAL"]
    assert wait_until(lambda: not roomy_server.engine.running, timeout=10)
