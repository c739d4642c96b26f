"""The converted tiny Llama generates: with transformers, and with the real vLLM engine, the same
tokens greedily, token for token."""

import psutil
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from llmserve.models.testing import vllm_processes

PROMPTS = ("The quick brown fox", "Serving a model means", "Hello world! How are you")
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def transformers_greedy(tiny_model) -> list[tuple[list[int], list[int]]]:
    """(prompt token ids, greedy continuation) for each prompt, from transformers' generate."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    results = []
    for prompt in PROMPTS:
        prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
        output = model.generate(prompt_ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        results.append((prompt_ids[0].tolist(), output[0, prompt_ids.shape[1] :].tolist()))
    return results


def test_transformers_generates_from_the_converted_model(transformers_greedy):
    for prompt_ids, continuation in transformers_greedy:
        assert prompt_ids[0] == 1  # <s>, added as Llama 2 does
        assert 0 < len(continuation) <= MAX_NEW_TOKENS
        assert all(0 <= token < 400 for token in continuation)


def test_vllm_generates_the_same_tokens_as_transformers(
    tiny_model, transformers_greedy, monkeypatch
):
    from vllm import LLM, SamplingParams

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    llm = LLM(model=str(tiny_model), dtype="float32", enforce_eager=True, max_model_len=512)
    try:
        engine_processes = vllm_processes()
        engine_names = {process.name() for process in engine_processes}
        greedy = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
        # One prompt at a time, as transformers ran them: a batch's make-up depends on when the
        # engine core sees each request, and batched kernels round differently.
        outputs = [llm.generate([prompt], greedy)[0] for prompt in PROMPTS]
    finally:
        llm.llm_engine.engine_core.shutdown()

    assert "VLLM::EngineCore" in engine_names
    _, still_running = psutil.wait_procs(engine_processes, timeout=60)
    assert still_running == []
    assert vllm_processes() == []
    for output, (prompt_ids, continuation) in zip(outputs, transformers_greedy, strict=True):
        assert output.prompt_token_ids == prompt_ids
        assert list(output.outputs[0].token_ids) == continuation
