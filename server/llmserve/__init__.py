"""llmserve: a Triton-style gRPC inference server for large language models, fronting vLLM."""

__version__ = "0.1.0"
