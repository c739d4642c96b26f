"""Python client for llmserve: `LlmClient` (sync) and `AsyncLlmClient` (asyncio)."""

from llmserve.v1 import llmserve_pb2 as pb
from llmserve_client._common import TlsConfig, build_request, full_text
from llmserve_client.aio import AsyncLlmClient
from llmserve_client.client import LlmClient

__all__ = ["AsyncLlmClient", "LlmClient", "TlsConfig", "build_request", "full_text", "pb"]
