"""GGUF → Hugging Face directory (float32 safetensors), with transformers' GGUF loader."""

import logging
from pathlib import Path

from llmserve.models.output import atomic_output_dir

logger = logging.getLogger(__name__)


def convert_gguf(gguf_file: Path, output_dir: Path, overwrite: bool = False) -> Path:
    """Dequantizes `gguf_file` into a float32 Hugging Face model directory at `output_dir`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = gguf_file.resolve()
    if not gguf_file.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_file}")
    with atomic_output_dir(output_dir, overwrite=overwrite) as staging:
        logger.info("converting %s to %s", gguf_file, output_dir)
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
        )
        # The weights are dequantized on load: save them as plain float32, not as a GGUF model.
        model.hf_quantizer = None
        model.config.quantization_config = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    return output_dir
