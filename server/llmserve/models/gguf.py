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
    with atomic_output_dir(output_dir, overwrite=overwrite, inputs=[gguf_file]) as staging:
        logger.info("converting %s to %s", gguf_file, output_dir)
        tokenizer = AutoTokenizer.from_pretrained(
            gguf_file.parent, gguf_file=gguf_file.name, **_special_token_flags(gguf_file)
        )
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


def _special_token_flags(gguf_file: Path) -> dict[str, bool]:
    """llama.cpp's add_bos_token/add_eos_token, which transformers' GGUF tokenizer loader drops.

    Without them a sentencepiece (Llama 2 style) model loses its <s> at the start of every prompt.
    """
    import gguf

    reader = gguf.GGUFReader(gguf_file)
    flags = {}
    for name in ("add_bos_token", "add_eos_token"):
        field = reader.get_field(f"tokenizer.ggml.{name}")
        if field is not None:
            flags[name] = bool(field.contents())
    return flags
