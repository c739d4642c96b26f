"""The bundled prompt set: deterministic, plain English, of varied lengths (any tokenizer)."""

import random

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "A language model predicts the next token from the tokens before it.",
    "Serving a model means loading its weights once and answering many requests.",
    "The server streams tokens back to the client as soon as they are generated.",
    "Paged attention keeps the key and value cache in small blocks of memory.",
    "Continuous batching adds new requests to the running batch at every step.",
    "The tokenizer splits text into pieces and maps each piece to an integer.",
    "Greedy decoding always picks the most likely next token.",
    "Kubernetes schedules the inference server on a node with a GPU.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain why the sky is blue to a ten year old child.",
    "List three reasons why unit tests make refactoring safer.",
    "Summarize the plot of a detective novel set in a snowy mountain village.",
    "Translate the following sentence into French: the library opens at nine.",
    "What are the main differences between a process and a thread?",
    "Describe the water cycle in four simple steps.",
    "Give a recipe for a quick vegetable soup with what is left in the fridge.",
    "Compose a haiku about the first morning of spring.",
    "How does a hash table handle two keys that land in the same bucket?",
    "Suggest a name for a small bakery that sells bread and coffee.",
    "Why do cats sleep for so many hours each day?",
    "Outline a plan to learn a new programming language in one month.",
    "The meeting was moved to Thursday afternoon because the room was booked.",
    "Rain fell on the old stone bridge while the river rose slowly below it.",
)


def prompt_set(count: int = 64, seed: int = 0) -> list[str]:
    """`count` prompts of 2 to 6 sentences, the same for a given seed on every machine."""
    rng = random.Random(seed)
    return [" ".join(rng.sample(SENTENCES, rng.randint(2, 6))) for _ in range(count)]


def output_lengths(count: int, length: int, length_range: tuple[int, int] | None = None,
                   seed: int = 0) -> list[int]:
    """Output lengths per request: all `length`, or uniform in `length_range` (seeded)."""
    if length_range is None:
        return [length] * count
    rng = random.Random(seed + 1)
    low, high = length_range
    return [rng.randint(low, high) for _ in range(count)]
