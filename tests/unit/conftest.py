"""The servicer under grpc_testing, with the fake engine.

grpc_testing drives synchronous handlers, so each async RPC method runs to completion on its
own event loop behind a small adapter that gives it the grpc.aio context methods it uses.
"""

import asyncio

import grpc_testing
import pytest

from llmserve.engine.fake import FakeEngine
from llmserve.generation import ServerState
from llmserve.servicer import LlmServicer
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.validation import RequestLimits

SERVICE = pb.DESCRIPTOR.services_by_name["LlmService"]
MODEL_NAME = "fake-model"


class AioContext:
    """A grpc_testing context seen through the grpc.aio ServicerContext methods we use."""

    def __init__(self, context):
        self._context = context
        self.written: list = []

    def time_remaining(self):
        return self._context.time_remaining()

    def invocation_metadata(self):
        return self._context.invocation_metadata()

    def set_trailing_metadata(self, metadata):
        self._context.set_trailing_metadata(metadata)

    async def abort(self, code, details):
        self._context.abort(code, details)

    async def write(self, message):
        self.written.append(message)


def sync_servicer(servicer: LlmServicer):
    """A synchronous servicer object whose methods run `servicer`'s coroutines."""

    def unary(name):
        def handler(request, context):
            return asyncio.run(getattr(servicer, name)(request, AioContext(context)))
        return handler

    def streaming(name):
        def handler(request, context):
            aio_context = AioContext(context)
            asyncio.run(getattr(servicer, name)(request, aio_context))
            yield from aio_context.written
        return handler

    methods = {m.name: (streaming if m.server_streaming else unary)(m.name)
               for m in SERVICE.methods}
    return type("SyncLlmServicer", (), {k: staticmethod(v) for k, v in methods.items()})()


class ServicerHarness:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.state = ServerState(MODEL_NAME)
        self.state.limits = RequestLimits(
            served_model_name=MODEL_NAME, max_model_len=engine.model_info.max_model_len,
            vocab_size=engine.model_info.vocab_size, default_max_tokens=16)
        self.state.engine = engine
        self.servicer = LlmServicer(self.state, ("health",))
        self.server = grpc_testing.server_from_dictionary(
            {SERVICE: sync_servicer(self.servicer)}, grpc_testing.strict_real_time())

    def unary(self, method: str, request, metadata=(), timeout=None):
        """Returns (response, trailing_metadata, code, details)."""
        rpc = self.server.invoke_unary_unary(SERVICE.methods_by_name[method], metadata,
                                             request, timeout)
        return rpc.termination()

    def stream(self, method: str, request, metadata=(), timeout=None):
        """Returns (responses, trailing_metadata, code, details)."""
        rpc = self.server.invoke_unary_stream(SERVICE.methods_by_name[method], metadata,
                                              request, timeout)
        responses = []
        while True:
            try:
                responses.append(rpc.take_response())
            except ValueError:
                break
        return (responses, *rpc.termination())


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def harness(engine):
    return ServicerHarness(engine)
