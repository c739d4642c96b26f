"""What the deploy tests share: paths, the release they render, and views of a render."""

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "llmserve"
RELEASE = "demo"
NAMESPACE = "ai"
FULLNAME = f"{RELEASE}-llmserve"


class Rendered:
    """The manifests of one render, looked up the way tests talk about them."""

    def __init__(self, templates: dict[str, str]) -> None:
        self.notes = next(
            (text for path, text in templates.items() if path.endswith("NOTES.txt")), ""
        )
        self.manifests: list[dict[str, Any]] = [
            doc
            for path, text in sorted(templates.items())
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        matches = [m for m in self.all(kind) if name is None or m["metadata"]["name"] == name]
        assert len(matches) == 1, f"expected one {kind} {name or ''}, got {len(matches)}"
        return matches[0]

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}

    def server_pod(self) -> dict[str, Any]:
        return self.one("Deployment")["spec"]["template"]["spec"]

    def server_container(self) -> dict[str, Any]:
        return self.server_pod()["containers"][0]


def args_map(args: list[str]) -> dict[str, str]:
    """Flags of a server command line (after `serve`) with their values ("" for switches)."""
    assert args[0] == "serve"
    flags: dict[str, str] = {}
    for token, following in zip(args[1:], [*args[2:], ""], strict=True):
        if token.startswith("--"):
            flags[token] = "" if following.startswith("--") else following
    return flags
