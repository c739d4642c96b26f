"""Prometheus metrics: llmserve's own `llmserve_*` series and the endpoint that serves them.

The endpoint ("metrics sidecar", its own HTTP port) serves prometheus-client's default registry,
where vLLM's AsyncLLM also records its `vllm:*` series (running/waiting requests, KV-cache usage,
TTFT, inter-token latency, tokens, ...). Labels are bounded: RPC names and status codes only.
"""

import asyncio
import logging
from wsgiref.simple_server import WSGIServer

import prometheus_client
from prometheus_client import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

REQUESTS = Counter("llmserve_requests", "Finished requests by RPC and status code.",
                   ["rpc", "code"])
REQUEST_DURATION = Histogram(
    "llmserve_request_duration_seconds", "Time from arrival to the last byte, by RPC.", ["rpc"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300))
IN_FLIGHT = Gauge("llmserve_requests_in_flight", "Requests being served, by RPC (streams "
                  "included).", ["rpc"])
SIZE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216)
REQUEST_SIZE = Histogram("llmserve_request_size_bytes", "Serialized request size, by RPC.",
                         ["rpc"], buckets=SIZE_BUCKETS)
RESPONSE_SIZE = Histogram("llmserve_response_size_bytes", "Serialized size of unary responses, "
                          "by RPC.", ["rpc"], buckets=SIZE_BUCKETS)
STREAM_MESSAGES = Counter("llmserve_stream_messages", "Messages sent on StreamGenerate streams "
                          "(counted when each stream ends).")
ADMISSION_REJECTIONS = Counter("llmserve_admission_rejections",
                               "Requests refused because --max-queued-requests was reached.")
CANCELLATIONS = Counter("llmserve_cancellations", "Requests cancelled by the client (the engine "
                        "request was aborted), by RPC.", ["rpc"])
DEADLINE_EXPIRIES = Counter("llmserve_deadline_expiries", "Requests whose deadline passed (the "
                            "engine request was aborted), by RPC.", ["rpc"])
AUTH_FAILURES = Counter("llmserve_auth_failures", "Requests refused for a missing or wrong API "
                        "key.")
ASYNCIO_TASKS = Gauge("llmserve_asyncio_tasks", "asyncio tasks alive on the server's event loop "
                      "(calls, streams, engine loops); back to its idle value when idle, else "
                      "something leaks.")


def count_asyncio_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Makes llmserve_asyncio_tasks count `loop`'s tasks, lazily at each scrape."""
    # all_tasks() copies the loop's task set (retrying if it changes meanwhile): safe from the
    # metrics endpoint's thread.
    ASYNCIO_TASKS.set_function(lambda: len(asyncio.all_tasks(loop)))


def record_call(rpc: str, code: str, seconds: float) -> None:
    """Counts a finished call of either frontend (gRPC method name, or http_* route)."""
    REQUESTS.labels(rpc, code).inc()
    REQUEST_DURATION.labels(rpc).observe(seconds)
    if code == "CANCELLED":
        CANCELLATIONS.labels(rpc).inc()
    elif code == "DEADLINE_EXCEEDED":
        DEADLINE_EXPIRIES.labels(rpc).inc()


class MetricsEndpoint:
    def __init__(self, host: str, port: int):
        self._host, self._port = host.strip("[]"), port
        self._server: WSGIServer | None = None
        self.port = 0

    def start(self) -> int:
        self._server, _ = prometheus_client.start_http_server(self._port, addr=self._host)
        self.port = self._server.server_port
        logger.info("metrics on http://%s:%d/metrics", self._host, self.port)
        return self.port

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
