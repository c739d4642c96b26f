"""`llmserve convert meta|gguf` and `llmserve model check|prepare-default`.

register(subparsers) adds them to the llmserve CLI; each sets func(args) -> exit code.
`python -m llmserve.models.commands ...` runs them alone.
"""

import argparse
import json
import sys
from pathlib import Path

from llmserve.models.check import check_model, format_report
from llmserve.models.default import prepare_default_model
from llmserve.models.gguf import convert_gguf
from llmserve.models.meta import (
    LLAMA_VERSIONS,
    SHARDS_BY_MODEL_SIZE,
    ConversionError,
    convert_meta,
)
from llmserve.models.output import OutputDirError

EXIT_OK, EXIT_FAILED = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `convert` and `model` command groups to the llmserve CLI's subparsers."""
    convert = subparsers.add_parser(
        "convert", help="convert a model to a Hugging Face directory the server can load"
    )
    convert_formats = convert.add_subparsers(dest="format", required=True, metavar="FORMAT")

    meta = convert_formats.add_parser(
        "meta",
        help="a Meta Llama checkpoint (consolidated.*.pth, params.json, tokenizer.model)",
        description="Runs transformers' convert_llama_weights_to_hf (4.45.2, in its own cached "
        "environment) and writes safetensors. tokenizer.model may sit in --input-dir or in its "
        "parent, as in Meta's download.",
    )
    meta.add_argument("--input-dir", type=Path, required=True, help="the folder with params.json")
    meta.add_argument(
        "--model-size",
        required=True,
        choices=SHARDS_BY_MODEL_SIZE,
        help="Meta's size name; sets how many consolidated.NN.pth shards are expected",
    )
    meta.add_argument("--llama-version", default="2", choices=LLAMA_VERSIONS)
    _add_output_arguments(meta)
    meta.set_defaults(func=run_convert_meta)

    gguf = convert_formats.add_parser(
        "gguf",
        help="a GGUF file (dequantized to float32)",
        description="Loads a GGUF file with transformers and saves float32 safetensors.",
    )
    gguf.add_argument("--gguf", type=Path, required=True, help="the .gguf file")
    _add_output_arguments(gguf)
    gguf.set_defaults(func=run_convert_gguf)

    model = subparsers.add_parser("model", help="check or prepare model directories")
    model_commands = model.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    check = model_commands.add_parser(
        "check",
        help="say whether a directory is servable, and what is wrong if not",
        description="Checks config, architecture, tokenizer and weights without loading them; "
        "exit code 0 if servable, 1 if not.",
    )
    check.add_argument("model_dir", type=Path, metavar="DIR")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(func=run_model_check)

    prepare = model_commands.add_parser(
        "prepare-default",
        help="print the embedded default model's directory, preparing it on first use",
    )
    prepare.set_defaults(func=run_prepare_default)


def _add_output_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output-dir", type=Path, required=True, help="the new model directory")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace --output-dir if it is not empty"
    )


def run_convert_meta(args: argparse.Namespace) -> int:
    return _report_errors(
        "convert meta",
        lambda: convert_meta(
            args.input_dir,
            args.model_size,
            args.output_dir,
            llama_version=args.llama_version,
            overwrite=args.overwrite,
        ),
    )


def run_convert_gguf(args: argparse.Namespace) -> int:
    return _report_errors(
        "convert gguf", lambda: convert_gguf(args.gguf, args.output_dir, overwrite=args.overwrite)
    )


def _report_errors(command: str, convert) -> int:
    try:
        output_dir = convert()
    except (ConversionError, OutputDirError, OSError) as error:
        for line in str(error).splitlines():
            print(f"llmserve {command}: error: {line}", file=sys.stderr)
        return EXIT_FAILED
    print(f"Check it with: llmserve model check {output_dir}", file=sys.stderr)
    return EXIT_OK


def run_model_check(args: argparse.Namespace) -> int:
    report = check_model(args.model_dir)
    print(json.dumps(report.to_dict(), indent=2) if args.json else format_report(report))
    return EXIT_OK if report.servable else EXIT_FAILED


def run_prepare_default(args: argparse.Namespace) -> int:
    print(prepare_default_model())
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmserve")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
