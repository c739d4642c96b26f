"""The metrics endpoint ("metrics sidecar"): Prometheus text format on its own HTTP port.

It serves prometheus-client's default registry, where vLLM's AsyncLLM records its own `vllm:*`
series (running/waiting requests, KV-cache usage, TTFT, inter-token latency, tokens, ...).
"""

import logging
from wsgiref.simple_server import WSGIServer

import prometheus_client

logger = logging.getLogger(__name__)


class MetricsEndpoint:
    def __init__(self, host: str, port: int):
        self._host, self._port = host, port
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
