"""Meta Llama checkpoint (consolidated.*.pth, params.json, tokenizer.model) → Hugging Face folder.

The conversion itself is transformers' official `convert_llama_weights_to_hf`. transformers 5 (which
vLLM needs) no longer ships it, so it runs in a separate virtual environment with transformers
4.45.2, created once under cache_root() and reused; the server's environment is never touched.
"""

import contextlib
import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from llmserve.models.default import cache_root
from llmserve.models.output import atomic_output_dir, exclusive_lock

logger = logging.getLogger(__name__)

# The converter's environment, pinned. pip resolves their own dependencies (tokenizers 0.20, numpy,
# safetensors ...). torch 2.13.0 is the version the server uses; set PIP_EXTRA_INDEX_URL to
# https://download.pytorch.org/whl/cpu to get its small CPU-only wheel instead of the CUDA one.
CONVERTER_REQUIREMENTS = (
    "transformers==4.45.2",  # the last minor release whose wheel has convert_llama_weights_to_hf
    "torch==2.13.0",
    "sentencepiece==0.2.3",  # reads tokenizer.model
    "protobuf==7.36.2",  # sentencepiece model → fast tokenizer (tokenizer.json)
    "accelerate==1.15.0",  # the converter's low_cpu_mem_usage reload
    "tiktoken==0.14.0",  # Llama 3's tokenizer.model is a tiktoken file
)
CONVERTER_MODULE = "transformers.models.llama.convert_llama_weights_to_hf"

# What the converter accepts as --model_size, with its number of consolidated.NN.pth shards
# (NUM_SHARDS in convert_llama_weights_to_hf 4.45.2).
SHARDS_BY_MODEL_SIZE = {
    "7B": 1,
    "7Bf": 1,
    "8B": 1,
    "8Bf": 1,
    "13B": 2,
    "13Bf": 2,
    "30B": 4,
    "34B": 4,
    "65B": 8,
    "70B": 8,
    "70Bf": 8,
    "405B": 8,
    "405B-MP16": 16,
}
LLAMA_VERSIONS = ("1", "2", "3", "3.1")  # the converter's --llama_version choices

# (dim, n_layers) of Meta's published sizes: a checkpoint that is one of them must be converted with
# its own size. Other shapes (fine-tunes of new shapes, tiny test models) only need the shard count.
META_SHAPES = {
    "7B": (4096, 32),
    "8B": (4096, 32),
    "13B": (5120, 40),
    "30B": (6656, 60),
    "34B": (8192, 48),
    "65B": (8192, 80),
    "70B": (8192, 80),
    "405B": (16384, 126),
}

SHARD_PATTERN = re.compile(r"consolidated\.(\d+)\.pth")


class ConversionError(RuntimeError):
    """The checkpoint cannot be converted as asked; the message says why and what to do."""


@dataclass(frozen=True)
class MetaCheckpoint:
    params_file: Path
    tokenizer_file: Path
    shards: tuple[Path, ...]

    @property
    def size_bytes(self) -> int:
        return sum(shard.stat().st_size for shard in self.shards)


def validate_checkpoint(input_dir: Path, model_size: str) -> MetaCheckpoint:
    """Checks that `input_dir` is a Meta checkpoint of `model_size`; raises ConversionError if not.

    tokenizer.model is looked for in `input_dir`, then in its parent (Meta's download puts it
    beside the llama-2-7b/ folder).
    """
    if not input_dir.is_dir():
        raise ConversionError(f"input directory {input_dir} does not exist")
    problems = []
    params_file = input_dir / "params.json"
    params = {}
    if not params_file.is_file():
        problems.append(
            f"params.json not found in {input_dir} (a Meta checkpoint folder has params.json "
            "and consolidated.NN.pth)"
        )
    else:
        try:
            params = json.loads(params_file.read_text())
            params = params.get("model", params)
            missing = [key for key in ("dim", "n_layers", "n_heads") if key not in params]
            if missing:
                problems.append(f"{params_file} lacks {', '.join(missing)}")
        except (json.JSONDecodeError, AttributeError) as error:
            problems.append(f"{params_file} is not a JSON object: {error}")
    tokenizer_file = next(
        (
            d / "tokenizer.model"
            for d in (input_dir, input_dir.parent)
            if (d / "tokenizer.model").is_file()
        ),
        None,
    )
    if tokenizer_file is None:
        problems.append(
            f"tokenizer.model not found in {input_dir} or its parent {input_dir.parent}"
        )
    shards = sorted(
        (path for path in input_dir.iterdir() if SHARD_PATTERN.fullmatch(path.name)),
        key=lambda path: int(SHARD_PATTERN.fullmatch(path.name)[1]),
    )
    problems += _model_size_problems(input_dir, model_size, shards, params)
    if problems:
        raise ConversionError("\n".join(problems))
    return MetaCheckpoint(params_file, tokenizer_file, tuple(shards))


def _model_size_problems(
    input_dir: Path, model_size: str, shards: list[Path], params: dict
) -> list[str]:
    if not shards:
        return [f"no consolidated.NN.pth weights in {input_dir}"]
    expected = SHARDS_BY_MODEL_SIZE[model_size]
    if len(shards) != expected:
        fitting = [size for size, count in SHARDS_BY_MODEL_SIZE.items() if count == len(shards)]
        return [
            f"--model-size {model_size} means {expected} shard(s) (consolidated.00.pth to "
            f"consolidated.{expected - 1:02d}.pth) but {input_dir} has {len(shards)}; "
            f"sizes with {len(shards)} shard(s): {', '.join(fitting) or 'none'}"
        ]
    names = [path.name for path in shards]
    if names != [f"consolidated.{i:02d}.pth" for i in range(expected)]:
        return [f"shards in {input_dir} are not numbered 00 to {expected - 1:02d}: {names}"]
    if "dim" not in params or "n_layers" not in params:
        return []
    shape = (params["dim"], params["n_layers"])
    declared = META_SHAPES.get(model_size.removesuffix("f"))
    matching = [size for size, meta_shape in META_SHAPES.items() if meta_shape == shape]
    if matching and declared != shape:
        return [
            f"params.json (dim {shape[0]}, {shape[1]} layers) is Meta's "
            f"{' or '.join(matching)}, not --model-size {model_size}"
        ]
    return []


def convert_meta(
    input_dir: Path,
    model_size: str,
    output_dir: Path,
    llama_version: str = "2",
    overwrite: bool = False,
) -> Path:
    """Converts a Meta checkpoint into a Hugging Face directory (safetensors) at `output_dir`."""
    input_dir = input_dir.resolve()
    output_dir = output_dir.resolve()
    checkpoint = validate_checkpoint(input_dir, model_size)
    _check_free_space(output_dir, checkpoint)
    inputs = (input_dir, checkpoint.tokenizer_file)
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=inputs) as staging:
        converter = converter_command()
        with _converter_input_dir(checkpoint) as converter_input:
            command = [
                *converter,
                "--input_dir", str(converter_input),
                "--model_size", model_size,
                "--output_dir", str(staging),
                "--llama_version", llama_version,
            ]  # fmt: skip
            logger.info("running %s", " ".join(command))
            print(
                f"Converting {input_dir} ({model_size}, Llama {llama_version})...", file=sys.stderr
            )
            result = subprocess.run(command, check=False)
        if result.returncode != 0:
            raise ConversionError(
                f"the converter failed (exit code {result.returncode}, its output is above); "
                f"nothing was written to {output_dir}"
            )
        if not (staging / "config.json").is_file() or not any(staging.glob("*.safetensors")):
            raise ConversionError(
                "the converter wrote no config.json and safetensors; "
                f"nothing was written to {output_dir}"
            )
    print(f"Converted to {output_dir}", file=sys.stderr)
    return output_dir


def _check_free_space(output_dir: Path, checkpoint: MetaCheckpoint) -> None:
    # The converter writes the weights twice (a temporary copy, then the safetensors files).
    needed = 2 * checkpoint.size_bytes
    existing_parent = next(
        parent for parent in (output_dir, *output_dir.parents) if parent.exists()
    )
    free = shutil.disk_usage(existing_parent).free
    if free < needed:
        raise ConversionError(
            f"not enough free space for {output_dir}: the conversion needs about "
            f"{needed / 2**30:.1f} GiB (twice the checkpoint), {free / 2**30:.1f} GiB free"
        )


@contextlib.contextmanager
def _converter_input_dir(checkpoint: MetaCheckpoint) -> Iterator[Path]:
    """The converter wants params.json, the shards and tokenizer.model in one folder: links them."""
    with tempfile.TemporaryDirectory(prefix="llmserve-meta-input-") as tmp:
        for source in (checkpoint.params_file, checkpoint.tokenizer_file, *checkpoint.shards):
            (Path(tmp) / source.name).symlink_to(source)
        yield Path(tmp)


def converter_command() -> list[str]:
    """The command that runs convert_llama_weights_to_hf, creating its environment if needed."""
    return [str(converter_python()), "-m", CONVERTER_MODULE]


def converter_env_dir() -> Path:
    """The converter's venv, named after what is installed in it."""
    key = "\n".join((*CONVERTER_REQUIREMENTS, f"python{sys.version_info[0]}.{sys.version_info[1]}"))
    return cache_root() / f"converter-venv-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def converter_python() -> Path:
    """The converter environment's python, creating the environment on first use."""
    env_dir = converter_env_dir()
    python = env_dir / "bin" / "python"
    ready_marker = env_dir / "requirements.txt"
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(env_dir.with_name(env_dir.name + ".lock")):
        if ready_marker.is_file():
            return python
        shutil.rmtree(env_dir, ignore_errors=True)
        print(
            f"Creating the converter environment in {env_dir} (once, a few minutes): "
            f"{' '.join(CONVERTER_REQUIREMENTS)}",
            file=sys.stderr,
            flush=True,
        )
        try:
            subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--disable-pip-version-check",
                 *CONVERTER_REQUIREMENTS],
                check=True,
            )  # fmt: skip
        except (subprocess.CalledProcessError, OSError) as error:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise ConversionError(f"could not create the converter environment: {error}") from error
        ready_marker.write_text("\n".join(CONVERTER_REQUIREMENTS) + "\n")
    return python
