"""Inference engines behind the `Engine` protocol: vLLM in production, a fake one in tests."""
