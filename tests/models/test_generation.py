"""The converted tiny Llama generates: with transformers, and with the real vLLM engine, the same
tokens greedily, token for token."""

import psutil
import pytest

from llmserve.models.testing import transformers_greedy, vllm_processes

PROMPTS = ("The quick brown fox", "Serving a model means", "Hello world! How are you")
MAX_NEW_TOKENS = 32


@pytest.fixture(scope="module")
def greedy_reference(tiny_model) -> list[tuple[list[int], list[int]]]:
    return transformers_greedy(tiny_model, PROMPTS, MAX_NEW_TOKENS)


def test_transformers_generates_from_the_converted_model(greedy_reference):
    for prompt_ids, continuation in greedy_reference:
        assert prompt_ids[0] == 1  # <s>, added as Llama 2 does
        assert 0 < len(continuation) <= MAX_NEW_TOKENS
        assert all(0 <= token < 400 for token in continuation)


def test_vllm_generates_the_same_tokens_as_transformers(
    tiny_model, greedy_reference, monkeypatch
):
    from vllm import LLM, SamplingParams

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    # Engines of servers that other tests of this session keep running are not this test's.
    others = {process.pid for process in vllm_processes()}
    llm = LLM(model=str(tiny_model), dtype="float32", enforce_eager=True, max_model_len=512)
    try:
        engine_processes = [p for p in vllm_processes() if p.pid not in others]
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
    assert [p for p in vllm_processes() if p.pid not in others] == []
    for output, (prompt_ids, continuation) in zip(outputs, greedy_reference, strict=True):
        assert output.prompt_token_ids == prompt_ids
        assert list(output.outputs[0].token_ids) == continuation
