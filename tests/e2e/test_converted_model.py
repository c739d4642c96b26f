"""A Meta-format checkpoint, converted by `llmserve convert meta`, served over gRPC: greedy
generation through the server equals transformers' own generate, token for token."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.models.testing import tiny_meta_llama
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


def transformers_greedy(model_dir) -> list[tuple[list[int], list[int]]]:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results = []
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
        output = model.generate(prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        results.append((prompt_ids[0].tolist(), output[0, prompt_ids.shape[1]:].tolist()))
    return results


def test_server_generates_what_transformers_generates(converted_model, converted_server):
    expected = transformers_greedy(converted_model)
    with LlmClient(converted_server.target) as client:
        for prompt, (prompt_ids, continuation) in zip(PROMPTS, expected, strict=True):
            assert list(client.tokenize(prompt).token_ids) == prompt_ids
            # One request at a time, as transformers ran them (batches round differently).
            response = client.generate(prompt, max_tokens=MAX_NEW_TOKENS, temperature=0)
            assert list(response.completions[0].token_ids) == continuation
            assert response.usage.prompt_tokens == len(prompt_ids)
