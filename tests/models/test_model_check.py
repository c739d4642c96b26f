"""`llmserve model check`: servable directories pass; each kind of breakage is named."""

import json
import shutil
from pathlib import Path

import pytest

# The tiny model's exact size: embeddings and lm_head (400 x 256 each), 2 layers of attention
# (q, o 256x256; k, v 128x256), MLP (3 x 704x256) and 2 norms, plus the final norm.
TINY_PARAMETERS = (
    2 * 400 * 256 + 2 * (2 * 256 * 256 + 2 * 128 * 256 + 3 * 704 * 256 + 2 * 256) + 256
)


@pytest.fixture
def model_copy(tiny_model: Path, tmp_path: Path) -> Path:
    """A writable copy of the converted tiny model, to break in one way or another."""
    return Path(shutil.copytree(tiny_model, tmp_path / "model"))


def test_a_converted_model_is_servable(llmserve, tiny_model):
    result = llmserve("model", "check", tiny_model)

    assert result.exit_code == 0
    assert result.stdout.splitlines()[0] == f"{tiny_model}: servable"
    assert "LlamaForCausalLM (supported by: vLLM " in result.stdout
    assert "context length: 4,096 tokens" in result.stdout
    assert "--dtype float32 on CPU, --dtype bfloat16 on GPU" in result.stdout
    assert "problem" not in result.stdout


def test_json_report_describes_the_model(llmserve, tiny_model):
    result = llmserve("model", "check", "--json", tiny_model)

    report = json.loads(result.stdout)
    assert result.exit_code == 0
    assert report["servable"] is True
    assert report["problems"] == []
    assert report["warnings"] == []
    assert report["architecture"] == "LlamaForCausalLM"
    assert report["context_length"] == 4096
    assert report["parameters"] == TINY_PARAMETERS
    assert report["parameters_counted_from"] == "safetensors headers"
    assert (report["weights_format"], report["weights_dtype"]) == ("safetensors", "bfloat16")
    assert report["weights_files"] == ["model.safetensors"]
    assert report["size_on_disk_bytes"] == sum(path.stat().st_size for path in tiny_model.iterdir())
    assert "tokenizer.json" in report["tokenizer_files"]
    assert report["chat_template"] is False
    assert report["recommended_dtype"] == {"cpu": "float32", "gpu": "bfloat16"}


def break_config(model: Path, **changes) -> None:
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps(config | changes))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("breakage", "problem"),
    [
        (lambda m: (m / "config.json").unlink(),
         "config.json not found (not a Hugging Face model directory?)"),
        (lambda m: (m / "config.json").write_text("{not json"), "config.json is not valid JSON"),
        (lambda m: break_config(m, architectures=["TotallyNewForCausalLM"]),
         "architecture TotallyNewForCausalLM is not supported by vLLM "),
        (lambda m: break_config(m, architectures=[]), "config.json names no architectures"),
        (lambda m: break_config(m, vocab_size=300),
         "tokenizer.json has token id 399 but the model's vocab_size is 300"),
        (lambda m: [(m / name).unlink() for name in ("tokenizer.json", "tokenizer.model")],
         "no tokenizer: none of tokenizer.json, tokenizer.model, vocab.json"),
        (lambda m: (m / "model.safetensors").unlink(),
         "no weights: no *.safetensors or pytorch_model*.bin files"),
        (lambda m: truncate(m / "model.safetensors"),
         "model.safetensors is truncated or corrupt: its header describes"),
        (lambda m: (m / "model.safetensors.index.json").write_text(json.dumps(
            {"weight_map": {"lm_head.weight": "model-00002-of-00002.safetensors"}})),
         "model.safetensors.index.json names missing files: model-00002-of-00002.safetensors"),
    ],
    ids=[
        "no-config", "bad-json", "unsupported-architecture", "no-architecture",
        "tokenizer-beyond-vocab", "no-tokenizer", "no-weights", "truncated-weights",
        "index-names-missing-shard",
    ],
)  # fmt: skip
def test_names_what_makes_a_directory_unservable(llmserve, model_copy, breakage, problem):
    breakage(model_copy)

    result = llmserve("model", "check", model_copy)

    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == f"{model_copy}: NOT servable"
    assert f"  problem: {problem}" in result.stdout


def test_points_a_meta_checkpoint_to_convert_meta(llmserve, tiny_checkpoint):
    result = llmserve("model", "check", "--json", tiny_checkpoint)

    report = json.loads(result.stdout)
    assert result.exit_code == 1
    assert report["servable"] is False
    assert report["problems"] == [
        "config.json not found (this is a Meta checkpoint: convert it with `llmserve convert "
        f"meta --input-dir {tiny_checkpoint} --model-size SIZE --output-dir OUT`)",
        "no weights: no *.safetensors or pytorch_model*.bin files",
    ]


def test_warns_about_head_sizes_the_cpu_cannot_serve(llmserve, model_copy):
    break_config(model_copy, head_dim=16)

    result = llmserve("model", "check", model_copy)

    assert result.exit_code == 0
    assert "warning: head_dim 16 is not supported by vLLM's CPU attention" in result.stdout


def test_a_missing_directory_is_not_servable(llmserve, tmp_path):
    result = llmserve("model", "check", tmp_path / "nowhere")

    assert result.exit_code == 1
    assert f"problem: {tmp_path / 'nowhere'} is not a directory" in result.stdout
