"""A tiny random Llama (hidden 256, 4 heads, 2 layers, byte-level BPE vocab ~512) for fast tests.

Made with transformers alone in a few seconds and cached on disk; its text is gibberish, so tests
assert on structure, counts and determinism.
"""

from pathlib import Path

from llmserve.models.default import cache_root, is_prepared
from llmserve.models.output import atomic_output_dir

VERSION = "v1"
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "My name is Llama and I generate text one token at a time.",
    "gRPC streams tokens from the server to the client as they are produced.",
    "Continuous batching lets many requests share one forward pass.",
    "The capital of France is Paris. The capital of Italy is Rome.",
    "0123456789 !?.,;:'\"()[]{}<>+-*/=_#@$%^&|~`",
]
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_llama_dir() -> Path:
    return cache_root() / "test-models" / f"tiny-llama-{VERSION}"


def make_tiny_llama() -> Path:
    """Returns the tiny model's directory, creating it on first use."""
    model_dir = tiny_llama_dir()
    if is_prepared(model_dir):
        return model_dir
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<unk>", "<s>", "</s>"]
    tokenizer.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(
        vocab_size=512, special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   bos_token="<s>", eos_token="</s>")
    fast.chat_template = CHAT_TEMPLATE

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=256, intermediate_size=704, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config).to(torch.float32)
    with atomic_output_dir(model_dir, overwrite=True) as staging:
        model.save_pretrained(staging, safe_serialization=True)
        fast.save_pretrained(staging)
    return model_dir


if __name__ == "__main__":
    print(make_tiny_llama())
