"""The embedded default model (SmolLM2-135M-Instruct) answers a factual question correctly."""

import pytest

from llmserve_client import LlmClient, full_text
from tests.e2e.conftest import stopped_cleanly
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def default_server(tmp_path_factory):
    # No --model: the server prepares and serves the embedded default.
    server = ServerProcess(None, log_path=tmp_path_factory.mktemp("smollm2") / "server.log")
    server.start()
    yield server
    stopped_cleanly(server)


def test_capital_of_france_is_paris(default_server):
    with LlmClient(default_server.target) as client:
        response = client.generate(
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=32)
        metadata = client.model_metadata()
    assert "Paris" in full_text(response)
    assert metadata.name == "SmolLM2-135M-Instruct"
    assert metadata.has_chat_template
