"""`llmserve convert gguf` on a GGUF file written here from the tiny Meta checkpoint."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from llmserve.models.testing import tiny_gguf


@pytest.fixture(scope="session")
def tiny_gguf_file() -> Path:
    return tiny_gguf()


def test_gguf_converts_to_the_same_model_as_the_meta_converter(
    llmserve, tiny_gguf_file, tiny_model, tmp_path
):
    output_dir = tmp_path / "from-gguf"

    result = llmserve("convert", "gguf", "--gguf", tiny_gguf_file, "--output-dir", output_dir)

    assert result.exit_code == 0, result.stderr
    from_gguf = load_file(output_dir / "model.safetensors")
    from_meta = load_file(tiny_model / "model.safetensors")
    assert sorted(from_gguf) == sorted(from_meta)
    for name, tensor in from_meta.items():
        assert from_gguf[name].dtype == torch.float32
        assert torch.equal(from_gguf[name], tensor.float()), name
    gguf_tokenizer = AutoTokenizer.from_pretrained(output_dir)
    meta_tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for text in ("Hello world! How are you?", "Numbers like 405 and 7", "  spaces\nand ÿ 你好"):
        assert gguf_tokenizer(text).input_ids == meta_tokenizer(text).input_ids
    assert gguf_tokenizer("Hello").input_ids[0] == meta_tokenizer.bos_token_id
    assert llmserve("model", "check", output_dir).exit_code == 0


def test_a_missing_gguf_file_writes_nothing(llmserve, tmp_path):
    result = llmserve(
        "convert", "gguf", "--gguf", tmp_path / "absent.gguf", "--output-dir", tmp_path / "out"
    )

    assert result.exit_code == 1
    assert f"llmserve convert gguf: error: GGUF file not found: {tmp_path / 'absent.gguf'}" in (
        result.stderr
    )
    assert list(tmp_path.iterdir()) == []


def test_a_non_empty_output_dir_is_refused_without_overwrite(llmserve, tiny_gguf_file, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("keep me")

    result = llmserve("convert", "gguf", "--gguf", tiny_gguf_file, "--output-dir", tmp_path / "out")

    assert result.exit_code == 1
    assert "exists and is not empty (pass --overwrite to replace it)" in result.stderr
    assert [path.name for path in (tmp_path / "out").iterdir()] == ["precious.txt"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]
