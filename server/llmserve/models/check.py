"""Is a directory a model the server can serve? Checked from its files, without loading weights.

Weights are read only as far as their safetensors headers (a few KB each), which give the exact
parameter count and dtype and reveal truncated files.
"""

import collections
import importlib.util
import json
import math
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Used only when vLLM is not installed (a machine that prepares models but does not serve them).
KNOWN_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "MixtralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
        "GPT2LMHeadModel",
        "GPTNeoXForCausalLM",
        "FalconForCausalLM",
        "OPTForCausalLM",
    }
)
CONTEXT_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
# Files that hold a vocabulary (tokenizer_config.json alone only configures one).
VOCABULARY_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model")
TOKENIZER_FILES = (
    *VOCABULARY_FILES,
    "tokenizer_config.json",
    "merges.txt",
    "special_tokens_map.json",
)
SAFETENSORS_DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
# On the CPU, float32: bfloat16 gave wrong text and ran 5x slower on AVX2 CPUs (no AVX512-BF16).
CPU_DTYPE = "float32"


@dataclass
class ModelCheck:
    """What `llmserve model check` found; servable when there are no problems."""

    model_dir: str
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    architecture: str | None = None
    supported_by: str | None = None
    context_length: int | None = None
    parameters: int | None = None
    parameters_counted_from: str | None = None
    weights_format: str | None = None
    weights_files: list[str] = field(default_factory=list)
    weights_dtype: str | None = None
    size_on_disk_bytes: int = 0
    tokenizer_files: list[str] = field(default_factory=list)
    chat_template: bool = False
    recommended_dtype: dict[str, str] = field(default_factory=dict)

    @property
    def servable(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"servable": self.servable, **asdict(self)}


def check_model(model_dir: Path) -> ModelCheck:
    model_dir = model_dir.resolve()
    report = ModelCheck(str(model_dir))
    if not model_dir.is_dir():
        report.problems.append(f"{model_dir} is not a directory")
        return report
    report.size_on_disk_bytes = sum(
        path.stat().st_size for path in model_dir.rglob("*") if path.is_file()
    )
    config = _check_config(model_dir, report)
    _check_tokenizer(model_dir, config, report)
    _check_weights(model_dir, config, report)
    _recommend_dtype(config, report)
    return report


def _check_config(model_dir: Path, report: ModelCheck) -> dict:
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        report.problems.append("config.json not found" + _conversion_hint(model_dir))
        return {}
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        report.problems.append(f"config.json is not valid JSON: {error}")
        return {}
    if not isinstance(config, dict):
        report.problems.append("config.json is not a JSON object")
        return {}
    if "model_type" not in config:
        report.problems.append("config.json has no model_type")
    architectures = config.get("architectures") or []
    if not architectures:
        report.problems.append("config.json names no architectures")
    else:
        report.architecture = architectures[0]
        supported, report.supported_by = supported_architectures()
        if not supported.intersection(architectures):
            report.problems.append(
                f"architecture {', '.join(architectures)} is not supported by {report.supported_by}"
            )
    text_config = config.get("text_config", config)
    report.context_length = next(
        (text_config[key] for key in CONTEXT_LENGTH_KEYS if key in text_config), None
    )
    if report.context_length is None:
        report.warnings.append(
            "config.json gives no context length (max_position_embeddings): pass --max-model-len"
        )
    _check_cpu_head_dim(text_config, report)
    return config


def _conversion_hint(model_dir: Path) -> str:
    if (model_dir / "params.json").is_file() and any(model_dir.glob("consolidated.*.pth")):
        return (
            " (this is a Meta checkpoint: convert it with "
            f"`llmserve convert meta --input-dir {model_dir} --model-size SIZE --output-dir OUT`)"
        )
    gguf_files = sorted(model_dir.glob("*.gguf"))
    if gguf_files:
        return (
            " (this holds a GGUF file: convert it with "
            f"`llmserve convert gguf --gguf {gguf_files[0]} --output-dir OUT`)"
        )
    return " (not a Hugging Face model directory?)"


def supported_architectures() -> tuple[frozenset[str], str]:
    """The architectures vLLM can serve, and who says so."""
    if importlib.util.find_spec("vllm") is None:
        return (
            KNOWN_ARCHITECTURES,
            "llmserve's list of common architectures (vLLM is not installed)",
        )
    import vllm
    from vllm import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs()), f"vLLM {vllm.__version__}"


def _check_cpu_head_dim(text_config: dict, report: ModelCheck) -> None:
    heads = text_config.get("num_attention_heads")
    head_dim = text_config.get("head_dim") or (
        text_config["hidden_size"] // heads if heads and "hidden_size" in text_config else None
    )
    supported = cpu_attention_head_sizes()
    if head_dim and supported and head_dim not in supported:
        report.warnings.append(
            f"head_dim {head_dim} is not supported by vLLM's CPU attention (it supports "
            f"{', '.join(map(str, supported))}): this model can be served on a GPU only"
        )


def cpu_attention_head_sizes() -> list[int]:
    """Head sizes vLLM's CPU attention kernels accept; empty if this vLLM has no CPU backend."""
    if importlib.util.find_spec("vllm") is None:
        return []
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend
    except ImportError:
        return []
    return CPUAttentionBackend.get_supported_head_sizes()


def _check_tokenizer(model_dir: Path, config: dict, report: ModelCheck) -> None:
    report.tokenizer_files = [name for name in TOKENIZER_FILES if (model_dir / name).is_file()]
    if not any(name in report.tokenizer_files for name in VOCABULARY_FILES):
        report.problems.append(f"no tokenizer: none of {', '.join(VOCABULARY_FILES)} is present")
    tokenizer_config = _read_json(model_dir / "tokenizer_config.json")
    report.chat_template = (
        "chat_template" in tokenizer_config
        or (model_dir / "chat_template.jinja").is_file()
        or (model_dir / "chat_template.json").is_file()
    )
    vocab_size = config.get("text_config", config).get("vocab_size")
    largest_id = _largest_token_id(model_dir / "tokenizer.json")
    if vocab_size and largest_id is not None and largest_id >= vocab_size:
        report.problems.append(
            f"tokenizer.json has token id {largest_id} but the model's vocab_size is {vocab_size}"
        )


def _largest_token_id(tokenizer_file: Path) -> int | None:
    tokenizer = _read_json(tokenizer_file)
    vocab = tokenizer.get("model", {}).get("vocab") or {}
    # Unigram vocabularies are [piece, score] lists, BPE and WordPiece ones {piece: id} maps.
    ids = list(vocab.values()) if isinstance(vocab, dict) else [len(vocab) - 1]
    ids += [token["id"] for token in tokenizer.get("added_tokens", [])]
    return max(ids, default=None)


def _check_weights(model_dir: Path, config: dict, report: ModelCheck) -> None:
    safetensors_files = sorted(model_dir.glob("*.safetensors"))
    bin_files = sorted(model_dir.glob("pytorch_model*.bin"))
    if safetensors_files:
        report.weights_format = "safetensors"
        report.weights_files = [path.name for path in safetensors_files]
        _check_safetensors(model_dir, safetensors_files, report)
    elif bin_files:
        report.weights_format = "pytorch"
        report.weights_files = [path.name for path in bin_files]
        _check_index(model_dir / "pytorch_model.bin.index.json", report)
        report.weights_dtype = config.get("torch_dtype") or config.get("dtype")
        element_size = {"float32": 4, "float16": 2, "bfloat16": 2}.get(report.weights_dtype)
        if element_size:
            report.parameters = sum(path.stat().st_size for path in bin_files) // element_size
            report.parameters_counted_from = "file sizes (estimate)"
    else:
        report.problems.append("no weights: no *.safetensors or pytorch_model*.bin files")


def _check_safetensors(model_dir: Path, files: list[Path], report: ModelCheck) -> None:
    elements_by_dtype: collections.Counter[str] = collections.Counter()
    tensors_by_file = {}
    for path in files:
        try:
            tensors = read_safetensors_header(path)
        except ValueError as error:
            report.problems.append(str(error))
            continue
        tensors_by_file[path.name] = tensors
        for tensor in tensors.values():
            elements_by_dtype[tensor["dtype"]] += math.prod(tensor["shape"])
    if elements_by_dtype:
        report.parameters = sum(elements_by_dtype.values())
        report.parameters_counted_from = "safetensors headers"
        dtype = elements_by_dtype.most_common(1)[0][0]
        report.weights_dtype = SAFETENSORS_DTYPE_NAMES.get(dtype, dtype)
    weight_map = _check_index(model_dir / "model.safetensors.index.json", report)
    for tensor_name, file_name in weight_map.items():
        if file_name in tensors_by_file and tensor_name not in tensors_by_file[file_name]:
            report.problems.append(
                f"model.safetensors.index.json puts {tensor_name} in {file_name}, which lacks it"
            )


def read_safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors a safetensors file describes ({name: {dtype, shape, data_offsets}}).

    Raises ValueError when the header is unreadable or the file is shorter or longer than the
    header says (an interrupted copy or conversion).
    """
    file_size = path.stat().st_size
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ValueError(f"{path.name} is not a safetensors file ({file_size} bytes)")
        (header_size,) = struct.unpack("<Q", prefix)
        if header_size > file_size - 8:
            raise ValueError(f"{path.name} is truncated or not a safetensors file")
        try:
            header = json.loads(handle.read(header_size))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path.name} has an unreadable header: {error}") from error
    header.pop("__metadata__", None)
    data_size = max((tensor["data_offsets"][1] for tensor in header.values()), default=0)
    if 8 + header_size + data_size != file_size:
        raise ValueError(
            f"{path.name} is truncated or corrupt: its header describes "
            f"{8 + header_size + data_size} bytes, the file has {file_size}"
        )
    return header


def _check_index(index_file: Path, report: ModelCheck) -> dict[str, str]:
    """Checks that every file a sharded checkpoint's index names exists; returns its weight_map."""
    if not index_file.is_file():
        return {}
    weight_map = _read_json(index_file).get("weight_map")
    if not isinstance(weight_map, dict):
        report.problems.append(f"{index_file.name} has no weight_map")
        return {}
    missing = sorted(
        {name for name in weight_map.values() if not (index_file.parent / name).is_file()}
    )
    if missing:
        report.problems.append(f"{index_file.name} names missing files: {', '.join(missing)}")
    return weight_map


def _recommend_dtype(config: dict, report: ModelCheck) -> None:
    if not config:
        return
    configured = config.get("torch_dtype") or config.get("dtype")
    report.recommended_dtype = {
        "cpu": CPU_DTYPE,
        "gpu": configured if configured in ("float16", "bfloat16") else "bfloat16",
    }


def _read_json(path: Path) -> dict:
    """A JSON object from `path`, or {} when it is missing or not one (reported elsewhere)."""
    try:
        loaded = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return loaded if isinstance(loaded, dict) else {}


def format_report(report: ModelCheck) -> str:
    """The human-readable report of `llmserve model check`."""
    verdict = "servable" if report.servable else "NOT servable"
    lines = [f"{report.model_dir}: {verdict}"]
    facts = {
        "architecture": report.architecture
        and f"{report.architecture} (supported by: {report.supported_by})",
        "context length": report.context_length and f"{report.context_length:,} tokens",
        "parameters": report.parameters
        and f"{_human_count(report.parameters)} (from {report.parameters_counted_from})",
        "weights": report.weights_format
        and f"{len(report.weights_files)} {report.weights_format} file(s), {report.weights_dtype}",
        "size on disk": _human_bytes(report.size_on_disk_bytes),
        "tokenizer": ", ".join(report.tokenizer_files) or "none",
        "chat template": "yes" if report.chat_template else "no (plain text prompts only)",
    }
    if report.recommended_dtype:
        cpu, gpu = report.recommended_dtype["cpu"], report.recommended_dtype["gpu"]
        memory = ""
        if report.parameters:
            memory = (
                f"; weights need about {_human_bytes(report.parameters * 4)} on CPU, "
                f"{_human_bytes(report.parameters * 2)} on GPU"
            )
        facts["dtype"] = f"--dtype {cpu} on CPU, --dtype {gpu} on GPU{memory}"
    lines += [f"  {name + ':':<15} {value}" for name, value in facts.items() if value]
    lines += [f"  warning: {warning}" for warning in report.warnings]
    lines += [f"  problem: {problem}" for problem in report.problems]
    return "\n".join(lines)


def _human_count(count: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def _human_bytes(size: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
