"""Python client for llmserve: `LlmClient` (sync) and `AsyncLlmClient` (asyncio).

The names are imported on first use, so that importing a submodule (the load generator's
`llmserve_client.bench`) does not import grpc: its settings must be chosen before that.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llmserve.v1 import llmserve_pb2 as pb
    from llmserve_client._common import TlsConfig, build_request, full_text
    from llmserve_client.aio import AsyncLlmClient
    from llmserve_client.client import LlmClient

# Exported name → (module, attribute; None for the module itself).
_EXPORTS = {
    "AsyncLlmClient": ("llmserve_client.aio", "AsyncLlmClient"),
    "LlmClient": ("llmserve_client.client", "LlmClient"),
    "TlsConfig": ("llmserve_client._common", "TlsConfig"),
    "build_request": ("llmserve_client._common", "build_request"),
    "full_text": ("llmserve_client._common", "full_text"),
    "pb": ("llmserve.v1.llmserve_pb2", None),
}

__all__ = ["AsyncLlmClient", "LlmClient", "TlsConfig", "build_request", "full_text", "pb"]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attribute = _EXPORTS[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value
