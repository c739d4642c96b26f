"""A Meta-format checkpoint, converted by `llmserve convert meta`, served over gRPC: greedy
generation through the server equals transformers' own generate, token for token."""

import pytest

from llmserve.models.testing import tiny_meta_llama, transformers_greedy
from llmserve_client import LlmClient
from tests.e2e.conftest import stopped_cleanly
from tests.support.processes import ServerProcess

pytestmark = pytest.mark.e2e
PROMPTS = ("The quick brown fox", "Serving a model means", "Hello world! How are you")
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def converted_model():
    return tiny_meta_llama()


@pytest.fixture(scope="module")
def converted_server(converted_model, tmp_path_factory):
    server = ServerProcess(converted_model, "--max-model-len", "512",
                           log_path=tmp_path_factory.mktemp("converted") / "server.log")
    server.start()
    yield server
    stopped_cleanly(server)


def test_server_generates_what_transformers_generates(converted_model, converted_server):
    expected = transformers_greedy(converted_model, PROMPTS, MAX_NEW_TOKENS)
    with LlmClient(converted_server.target) as client:
        for prompt, (prompt_ids, continuation) in zip(PROMPTS, expected, strict=True):
            assert list(client.tokenize(prompt).token_ids) == prompt_ids
            # One request at a time, as transformers ran them (batches round differently).
            response = client.generate(prompt, max_tokens=MAX_NEW_TOKENS, temperature=0)
            assert list(response.completions[0].token_ids) == continuation
            assert response.usage.prompt_tokens == len(prompt_ids)
