"""Fixtures shared by all test levels."""

import pytest

from tests.support.tiny_llama import make_tiny_llama


@pytest.fixture(scope="session")
def tiny_llama():
    """A tiny random Llama directory, made once and cached on disk."""
    return make_tiny_llama()
