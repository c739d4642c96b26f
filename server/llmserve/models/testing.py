"""Tiny models made on this machine for tests: a Meta Llama checkpoint, its conversion, a GGUF.

Nothing comes from a model hub. The random weights are seeded and everything is cached under
cache_root()/test-models/<TINY_MODEL_VERSION>/, so a test session pays for the converter's
environment and the conversion only once per machine. Bump TINY_MODEL_VERSION when the recipe
changes.

    from llmserve.models.testing import tiny_meta_llama
    model_dir = tiny_meta_llama()  # a converted Hugging Face directory, servable by vLLM
"""

import json
from pathlib import Path

from llmserve.models.default import cache_root
from llmserve.models.meta import convert_meta
from llmserve.models.output import atomic_output_dir, exclusive_lock

TINY_MODEL_VERSION = "tiny-meta-llama-v1"
# Shapes vLLM's CPU attention accepts (head_dim 64); the converter derives the FFN size from dim
# and multiple_of: 256 → 704.
TINY_PARAMS = {
    "dim": 256,
    "n_heads": 4,
    "n_kv_heads": 2,
    "n_layers": 2,
    "multiple_of": 64,
    "norm_eps": 1e-5,
    "vocab_size": -1,
}
TINY_VOCAB_SIZE = 400
TOKENIZER_CORPUS = """\
The quick brown fox jumps over the lazy dog.
A language model predicts the next token from the tokens before it.
Serving a model means loading its weights once and answering many requests.
The server streams tokens back to the client as soon as they are generated.
Paged attention keeps the key and value cache in small blocks of memory.
Continuous batching adds new requests to the running batch at every step.
Llama was released by Meta with weights in consolidated checkpoint files.
The tokenizer splits text into pieces and maps each piece to an integer.
Greedy decoding always picks the most likely next token.
Numbers like 7, 13, 70 and 405 name the sizes of the models in billions.
Hello world! How are you today? I am fine, thank you.
Kubernetes schedules the inference server on a node with a GPU.
"""


def tiny_models_dir() -> Path:
    return cache_root() / "test-models" / TINY_MODEL_VERSION


def tiny_meta_checkpoint() -> Path:
    """A Meta Llama checkpoint (params.json, consolidated.00.pth, tokenizer.model), 7B layout."""
    checkpoint_dir = tiny_models_dir() / "meta"
    with exclusive_lock(tiny_models_dir() / "meta.lock"):
        if not (checkpoint_dir / "consolidated.00.pth").is_file():
            with atomic_output_dir(checkpoint_dir, overwrite=True) as staging:
                write_tiny_meta_checkpoint(staging)
    return checkpoint_dir


def tiny_meta_llama() -> Path:
    """The tiny Meta checkpoint converted by `llmserve convert meta` (the real converter).

    The first call on a machine creates the converter's environment (about 30 s from a local
    wheel cache, a few minutes from PyPI); later ones return the cached directory at once.
    """
    model_dir = tiny_models_dir() / "hf"
    checkpoint_dir = tiny_meta_checkpoint()
    with exclusive_lock(tiny_models_dir() / "hf.lock"):
        if not (model_dir / "config.json").is_file():
            convert_meta(checkpoint_dir, "7B", model_dir, llama_version="2", overwrite=True)
    return model_dir


def tiny_gguf() -> Path:
    """The tiny Meta checkpoint written as a float32 GGUF file, as llama.cpp would write it."""
    gguf_file = tiny_models_dir() / "tiny-llama-f32.gguf"
    checkpoint_dir = tiny_meta_checkpoint()
    with exclusive_lock(tiny_models_dir() / "gguf.lock"):
        if not gguf_file.is_file():
            partial = gguf_file.with_name(f".{gguf_file.name}.partial")
            write_gguf_from_meta(checkpoint_dir, partial)
            partial.rename(gguf_file)
    return gguf_file


def write_tiny_meta_checkpoint(checkpoint_dir: Path, seed: int = 0) -> None:
    """Writes a random tiny Llama with Meta's file layout and key names into `checkpoint_dir`."""
    import torch

    _train_tokenizer(checkpoint_dir / "tokenizer.model")
    params = TINY_PARAMS
    dim, ffn = params["dim"], _ffn_size(params["dim"], params["multiple_of"])
    head_dim = dim // params["n_heads"]
    kv_dim = head_dim * params["n_kv_heads"]
    generator = torch.Generator().manual_seed(seed)

    def random(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=generator) * 0.02).to(torch.bfloat16)

    state_dict = {"tok_embeddings.weight": random(TINY_VOCAB_SIZE, dim)}
    for layer in range(params["n_layers"]):
        prefix = f"layers.{layer}."
        state_dict |= {
            prefix + "attention.wq.weight": random(dim, dim),
            prefix + "attention.wk.weight": random(kv_dim, dim),
            prefix + "attention.wv.weight": random(kv_dim, dim),
            prefix + "attention.wo.weight": random(dim, dim),
            prefix + "feed_forward.w1.weight": random(ffn, dim),
            prefix + "feed_forward.w2.weight": random(dim, ffn),
            prefix + "feed_forward.w3.weight": random(ffn, dim),
            prefix + "attention_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
            prefix + "ffn_norm.weight": torch.ones(dim, dtype=torch.bfloat16),
        }
    state_dict["norm.weight"] = torch.ones(dim, dtype=torch.bfloat16)
    state_dict["output.weight"] = random(TINY_VOCAB_SIZE, dim)
    torch.save(state_dict, checkpoint_dir / "consolidated.00.pth")
    (checkpoint_dir / "params.json").write_text(json.dumps(params, indent=2) + "\n")


def _ffn_size(dim: int, multiple_of: int) -> int:
    """Meta's FeedForward hidden size (the converter's compute_intermediate_size)."""
    return multiple_of * ((int(8 * dim / 3) + multiple_of - 1) // multiple_of)


def _train_tokenizer(model_file: Path) -> None:
    """A Llama-style sentencepiece model: BPE, byte fallback, <unk>=0, <s>=1, </s>=2."""
    import sentencepiece

    with model_file.open("wb") as model_writer:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(TOKENIZER_CORPUS.splitlines()),
            model_writer=model_writer,
            model_type="bpe",
            vocab_size=TINY_VOCAB_SIZE,
            byte_fallback=True,
            character_coverage=1.0,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            split_digits=True,
            num_threads=1,
            minloglevel=2,
        )


def write_gguf_from_meta(checkpoint_dir: Path, gguf_file: Path) -> None:
    """Writes a Meta checkpoint as a float32 GGUF file (llama architecture, sentencepiece vocab).

    GGUF keeps Meta's interleaved rotary layout for q/k, so the weights go in unchanged under
    llama.cpp's tensor names.
    """
    import gguf
    import sentencepiece
    import torch

    params = json.loads((checkpoint_dir / "params.json").read_text())
    weights = torch.load(checkpoint_dir / "consolidated.00.pth", map_location="cpu")
    tokenizer = sentencepiece.SentencePieceProcessor(
        model_file=str(checkpoint_dir / "tokenizer.model")
    )
    dim, n_heads = params["dim"], params["n_heads"]

    writer = gguf.GGUFWriter(gguf_file, "llama")
    writer.add_name("tiny-llama")
    writer.add_context_length(4096)
    writer.add_embedding_length(dim)
    writer.add_block_count(params["n_layers"])
    writer.add_feed_forward_length(_ffn_size(dim, params["multiple_of"]))
    writer.add_head_count(n_heads)
    writer.add_head_count_kv(params["n_kv_heads"])
    writer.add_rope_dimension_count(dim // n_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(params["norm_eps"])
    writer.add_vocab_size(tokenizer.vocab_size())
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)

    token_ids = range(tokenizer.vocab_size())
    writer.add_tokenizer_model("llama")
    writer.add_token_list([tokenizer.id_to_piece(i).encode() for i in token_ids])
    writer.add_token_scores([tokenizer.get_score(i) for i in token_ids])
    writer.add_token_types([_token_type(tokenizer, i) for i in token_ids])
    writer.add_bos_token_id(tokenizer.bos_id())
    writer.add_eos_token_id(tokenizer.eos_id())
    writer.add_unk_token_id(tokenizer.unk_id())
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)

    names = {
        "tok_embeddings": "token_embd",
        "norm": "output_norm",
        "output": "output",
        "attention.wq": "attn_q",
        "attention.wk": "attn_k",
        "attention.wv": "attn_v",
        "attention.wo": "attn_output",
        "feed_forward.w1": "ffn_gate",
        "feed_forward.w2": "ffn_down",
        "feed_forward.w3": "ffn_up",
        "attention_norm": "attn_norm",
        "ffn_norm": "ffn_norm",
    }
    for meta_name, tensor in weights.items():
        stem = meta_name.removesuffix(".weight")
        if stem.startswith("layers."):
            _, layer, module = stem.split(".", 2)
            gguf_name = f"blk.{layer}.{names[module]}.weight"
        else:
            gguf_name = f"{names[stem]}.weight"
        writer.add_tensor(gguf_name, tensor.float().numpy())

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _token_type(tokenizer, token_id: int) -> int:
    import gguf

    if tokenizer.is_unknown(token_id):
        return gguf.TokenType.UNKNOWN
    if tokenizer.is_control(token_id):
        return gguf.TokenType.CONTROL
    if tokenizer.is_byte(token_id):
        return gguf.TokenType.BYTE
    if tokenizer.is_unused(token_id):
        return gguf.TokenType.UNUSED
    return gguf.TokenType.NORMAL


def vllm_processes() -> list:
    """This process's descendants that vLLM started (VLLM::EngineCore, VLLM::Worker ...).

    Only descendants: other test sessions on the machine may run engines of their own.
    """
    import psutil

    def started_by_vllm(process: psutil.Process) -> bool:
        try:
            cmdline = process.cmdline()
            name = process.name()
        except psutil.Error:
            return False
        return name.startswith("VLLM::") or (bool(cmdline) and cmdline[0].startswith("VLLM::"))

    return [child for child in psutil.Process().children(recursive=True) if started_by_vllm(child)]


def transformers_greedy(model_dir: Path, prompts, max_new_tokens: int) -> list[
        tuple[list[int], list[int]]]:
    """(prompt token ids, greedy continuation) per prompt, from transformers' own generate."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    results = []
    for prompt in prompts:
        prompt_ids = tokenizer(prompt, return_tensors="pt").input_ids
        output = model.generate(prompt_ids, max_new_tokens=max_new_tokens, do_sample=False)
        results.append((prompt_ids[0].tolist(), output[0, prompt_ids.shape[1]:].tolist()))
    return results
