"""`llmserve convert meta`: the real converter on a tiny checkpoint, and every refusal."""

import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from llmserve.models import meta


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("umask_022")
def test_converts_a_meta_checkpoint_into_a_hugging_face_directory(
    llmserve, checkpoint_copy, tmp_path, private_tmp
):
    input_dir = checkpoint_copy()
    output_dir = tmp_path / "llama-hf"
    output_dir.mkdir()
    (output_dir / "stale.txt").write_text("from an earlier run")

    result = llmserve(
        "convert", "meta", "--input-dir", input_dir, "--model-size", "7B",
        "--output-dir", output_dir, "--overwrite",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert f"Converted to {output_dir}" in result.stderr
    assert sorted(path.name for path in output_dir.iterdir()) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    config = json.loads((output_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["hidden_size"], config["intermediate_size"]) == (256, 704)
    assert (config["num_key_value_heads"], config["max_position_embeddings"]) == (2, 4096)
    weights = load_file(output_dir / "model.safetensors")
    assert weights["model.layers.0.self_attn.k_proj.weight"].shape == (128, 256)
    # Readable by a server running as another user (safetensors alone writes 0600).
    assert stat.S_IMODE(output_dir.stat().st_mode) == 0o755
    assert {stat.S_IMODE(path.stat().st_mode) for path in output_dir.iterdir()} == {0o644}
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input", "llama-hf", "system-tmp"]
    assert list(private_tmp.iterdir()) == []


def test_finds_tokenizer_model_in_the_parent_folder_as_meta_ships_it(
    llmserve, checkpoint_copy, tiny_checkpoint, tmp_path
):
    input_dir = checkpoint_copy("tokenizer.model")
    (input_dir.parent / "tokenizer.model").symlink_to(tiny_checkpoint / "tokenizer.model")

    result = llmserve(
        "convert", "meta", "--input-dir", input_dir, "--model-size", "7B",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip

    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "out" / "tokenizer.json").is_file()


@pytest.fixture
def failing_converter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A converter that writes part of a model, then dies as on a full disk."""
    script = tmp_path / "converter_that_fills_the_disk.py"
    script.write_text(
        "import argparse, errno, os, sys\n"
        "parser = argparse.ArgumentParser()\n"
        "parser.add_argument('--output_dir')\n"
        "args, _ = parser.parse_known_args()\n"
        "open(os.path.join(args.output_dir, 'config.json'), 'w').write('{}')\n"
        "with open(os.path.join(args.output_dir, 'model.safetensors'), 'wb') as f:\n"
        "    f.write(b'half a model')\n"
        "raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
    )
    monkeypatch.setattr(meta, "converter_command", lambda: [sys.executable, str(script)])


@pytest.mark.parametrize(
    ("leave_out", "model_size", "message"),
    [
        ("params.json", "7B", "params.json not found in"),
        ("tokenizer.model", "7B", "tokenizer.model not found in"),
        ("consolidated.00.pth", "7B", "no consolidated.NN.pth weights in"),
        ("", "13B", "--model-size 13B means 2 shard(s) (consolidated.00.pth to "
         "consolidated.01.pth) but"),
        ("", "70B", "--model-size 70B means 8 shard(s) (consolidated.00.pth to "
         "consolidated.07.pth) but"),
    ],
)  # fmt: skip
def test_refuses_a_bad_checkpoint_and_writes_nothing(
    llmserve, checkpoint_copy, tmp_path, private_tmp, leave_out, model_size, message
):
    input_dir = checkpoint_copy(leave_out)
    output_dir = tmp_path / "out"

    result = llmserve(
        "convert", "meta", "--input-dir", input_dir, "--model-size", model_size,
        "--output-dir", output_dir,
    )  # fmt: skip

    assert result.exit_code == 1
    assert f"llmserve convert meta: error: {message}" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input", "system-tmp"]
    assert list(private_tmp.iterdir()) == []


def test_a_wrong_size_names_the_sizes_that_fit(llmserve, checkpoint_copy, tmp_path):
    result = llmserve(
        "convert", "meta", "--input-dir", checkpoint_copy(), "--model-size", "13B",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip

    assert result.stderr.rstrip().endswith("has 1; sizes with 1 shard(s): 7B, 7Bf, 8B, 8Bf")


def test_refuses_a_size_that_contradicts_params_json(llmserve, checkpoint_copy, tmp_path):
    input_dir = checkpoint_copy("params.json")
    (input_dir / "params.json").write_text(json.dumps({"dim": 5120, "n_layers": 40, "n_heads": 40}))

    result = llmserve(
        "convert", "meta", "--input-dir", input_dir, "--model-size", "7B",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip

    assert result.exit_code == 1
    assert "params.json (dim 5120, 40 layers) is Meta's 13B, not --model-size 7B" in result.stderr
    assert not (tmp_path / "out").exists()


def test_refuses_a_non_empty_output_dir_without_overwrite(llmserve, checkpoint_copy, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "precious.txt").write_text("keep me")

    result = llmserve(
        "convert", "meta", "--input-dir", checkpoint_copy(), "--model-size", "7B",
        "--output-dir", output_dir,
    )  # fmt: skip

    assert result.exit_code == 1
    assert f"output directory {output_dir} exists and is not empty" in result.stderr
    assert "pass --overwrite to replace it" in result.stderr
    assert [path.name for path in output_dir.iterdir()] == ["precious.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["input", "out"]


def test_refuses_to_overwrite_its_own_input(llmserve, checkpoint_copy):
    input_dir = checkpoint_copy()
    before = sorted(path.name for path in input_dir.iterdir())

    result = llmserve(
        "convert", "meta", "--input-dir", input_dir, "--model-size", "7B",
        "--output-dir", input_dir.parent, "--overwrite",
    )  # fmt: skip

    assert result.exit_code == 1
    assert f"output directory {input_dir.parent} holds the input" in result.stderr
    assert sorted(path.name for path in input_dir.iterdir()) == before


@pytest.mark.usefixtures("failing_converter")
def test_a_converter_failure_leaves_nothing_behind(
    llmserve, checkpoint_copy, tmp_path, private_tmp
):
    output_dir = tmp_path / "out"

    result = llmserve(
        "convert", "meta", "--input-dir", checkpoint_copy(), "--model-size", "7B",
        "--output-dir", output_dir,
    )  # fmt: skip

    assert result.exit_code == 1
    assert "No space left on device" in result.stderr  # the converter's own error, shown
    assert (
        f"the converter failed (exit code 1, its output is above); nothing was written to "
        f"{output_dir}" in result.stderr
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "converter_that_fills_the_disk.py", "input", "system-tmp"
    ]  # fmt: skip
    assert list(private_tmp.iterdir()) == []


@pytest.mark.usefixtures("failing_converter")
def test_a_converter_failure_keeps_the_directory_it_would_have_replaced(
    llmserve, checkpoint_copy, tmp_path
):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "config.json").write_text('{"the": "previous model"}')

    result = llmserve(
        "convert", "meta", "--input-dir", checkpoint_copy(), "--model-size", "7B",
        "--output-dir", output_dir, "--overwrite",
    )  # fmt: skip

    assert result.exit_code == 1
    assert [path.name for path in output_dir.iterdir()] == ["config.json"]
    assert json.loads((output_dir / "config.json").read_text()) == {"the": "previous model"}


def test_refuses_when_the_disk_cannot_hold_the_conversion(
    llmserve, checkpoint_copy, tmp_path, monkeypatch
):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1_000_000))

    result = llmserve(
        "convert", "meta", "--input-dir", checkpoint_copy(), "--model-size", "7B",
        "--output-dir", tmp_path / "out",
    )  # fmt: skip

    assert result.exit_code == 1
    assert "not enough free space for" in result.stderr
    assert "(twice the checkpoint), 0.0 GiB free" in result.stderr
    assert not (tmp_path / "out").exists()
