"""A bare grpc.aio StreamGenerate server: the gRPC limit in Python, for frontend-only benchmarks.

It streams `max_tokens` messages shaped like llmserve's (one token each, usage in the last) with
no engine, validation or logging behind them:
    python -m llmserve_client.bench.echo_server --port 50100
"""

import argparse
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from llmserve import event_loop
from llmserve.v1 import llmserve_pb2 as pb
from llmserve.v1 import llmserve_pb2_grpc as pb_grpc

logger = logging.getLogger(__name__)

TOKEN_ID, TOKEN_TEXT = 42, " a"


class EchoServicer(pb_grpc.LlmServiceServicer):
    async def StreamGenerate(self, request, context):
        for _ in range(request.max_tokens - 1):
            yield pb.GenerateResponse(
                request_id=request.request_id,
                completions=[pb.Completion(text=TOKEN_TEXT, token_ids=[TOKEN_ID])])
        yield pb.GenerateResponse(
            request_id=request.request_id,
            completions=[pb.Completion(text=TOKEN_TEXT, token_ids=[TOKEN_ID],
                                       finish_reason=pb.FINISH_REASON_LENGTH)],
            usage=pb.Usage(completion_tokens=request.max_tokens), finished=True)


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    pb_grpc.add_LlmServiceServicer_to_server(EchoServicer(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    logger.info("echo server listening on %s:%d", host, bound)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--event-loop", default="uvloop", choices=event_loop.EVENT_LOOPS,
                        help="The loop to serve on (default: llmserve's default).")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    event_loop.run(serve(args.host, args.port), args.event_loop)


if __name__ == "__main__":
    main()
