"""`llmserve-client`: generate, tokenize and inspect a server from the shell."""

import argparse
import os
import sys
from pathlib import Path

import grpc
from google.protobuf import json_format

from llmserve_client._common import DEFAULT_TARGET, TlsConfig
from llmserve_client.client import LlmClient


def _json(message) -> str:
    # Field names as in the proto (and grpcurl's output).
    return json_format.MessageToJson(message, indent=None, preserving_proto_field_name=True)


def _print_json(message) -> None:
    print(_json(message), flush=True)


def _sampling(args: argparse.Namespace) -> dict:
    params = {
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
        "top_k": args.top_k, "seed": args.seed, "n": args.n,
    }
    params = {k: v for k, v in params.items() if v is not None}
    if args.stop:
        params["stop"] = args.stop
    return params


def generate(client: LlmClient, args: argparse.Namespace) -> int:
    prompt = {"messages": [{"role": "user", "content": args.prompt}]} if args.chat else {
        "text": args.prompt}
    if not args.stream:
        response = client.generate(**prompt, **_sampling(args))
        if args.json:
            _print_json(response)
        else:
            for completion in response.completions:
                print(completion.text, flush=True)
        return 0
    for message in client.stream_generate(**prompt, **_sampling(args)):
        if args.json:
            _print_json(message)
            continue
        for completion in message.completions:
            if completion.index == 0:
                sys.stdout.write(completion.text)
                sys.stdout.flush()
        if message.finished:
            print()
            if args.verbose:
                print(_json(message.usage), _json(message.timings), file=sys.stderr)
    return 0


def tokenize(client: LlmClient, args: argparse.Namespace) -> int:
    response = client.tokenize(args.text, return_tokens=True)
    if args.json:
        _print_json(response)
    else:
        print(" ".join(map(str, response.token_ids)))
    return 0


def detokenize(client: LlmClient, args: argparse.Namespace) -> int:
    print(client.detokenize(args.token_ids))
    return 0


def metadata(client: LlmClient, args: argparse.Namespace) -> int:
    _print_json(client.server_metadata())
    _print_json(client.model_metadata())
    return 0


def ready(client: LlmClient, args: argparse.Namespace) -> int:
    is_ready = client.server_ready()
    print("ready" if is_ready else "not ready")
    return 0 if is_ready else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmserve-client",
                                     description="Call an llmserve server over gRPC.")
    parser.add_argument("--target", default=os.environ.get("LLMSERVE_TARGET", DEFAULT_TARGET),
                        help="host:port of the gRPC server (default $LLMSERVE_TARGET or "
                             "%(default)s).")
    parser.add_argument("--timeout", type=float, default=120.0, help="Deadline in seconds.")
    parser.add_argument("--api-key", default=os.environ.get("LLMSERVE_API_KEY"),
                        help="Bearer token (default $LLMSERVE_API_KEY).")
    parser.add_argument("--tls", action="store_true", help="Connect with TLS.")
    parser.add_argument("--tls-ca", type=Path, help="CA certificate to trust (implies --tls).")
    parser.add_argument("--tls-cert", type=Path, help="Client certificate for mutual TLS.")
    parser.add_argument("--tls-key", type=Path, help="Client key for mutual TLS.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="Generate text from a prompt.")
    gen.add_argument("prompt")
    gen.add_argument("--stream", action="store_true", help="Print tokens as they arrive.")
    gen.add_argument("--chat", action="store_true",
                     help="Send the prompt as a user message through the chat template.")
    gen.add_argument("--max-tokens", type=int)
    gen.add_argument("--temperature", type=float)
    gen.add_argument("--top-p", type=float)
    gen.add_argument("--top-k", type=int)
    gen.add_argument("--seed", type=int)
    gen.add_argument("-n", type=int, help="Number of completions.")
    gen.add_argument("--stop", action="append", help="Stop string (repeatable).")
    gen.add_argument("--json", action="store_true", help="Print whole responses as JSON.")
    gen.add_argument("-v", "--verbose", action="store_true",
                     help="With --stream, print usage and timings to stderr at the end.")
    gen.set_defaults(func=generate)

    tok = commands.add_parser("tokenize", help="Show the token ids of a text.")
    tok.add_argument("text")
    tok.add_argument("--json", action="store_true", help="Print the whole response as JSON.")
    tok.set_defaults(func=tokenize)
    detok = commands.add_parser("detokenize", help="Show the text of token ids.")
    detok.add_argument("token_ids", nargs="+", type=int)
    detok.set_defaults(func=detokenize)
    commands.add_parser("metadata", help="Show server and model metadata.").set_defaults(
        func=metadata)
    commands.add_parser("ready", help="Exit 0 when the server is ready.").set_defaults(
        func=ready)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    tls = None
    if args.tls or args.tls_ca or args.tls_cert:
        tls = TlsConfig(root_certificates=args.tls_ca, client_certificate=args.tls_cert,
                        client_key=args.tls_key)
    try:
        with LlmClient(args.target, timeout=args.timeout, tls=tls, api_key=args.api_key) as client:
            sys.exit(args.func(client, args))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
