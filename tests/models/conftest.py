"""Fixtures for the model preparation commands: a CLI harness and the tiny Meta Llama."""

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from llmserve.models import commands
from llmserve.models.testing import tiny_meta_checkpoint, tiny_meta_llama


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def llmserve(capfd: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    """Runs `llmserve ARGS...` as the CLI will: a parser with register(), then args.func(args).

    capfd rather than capsys: the converter's output comes from a child process.
    """
    parser = argparse.ArgumentParser(prog="llmserve")
    commands.register(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str | Path) -> Result:
        capfd.readouterr()
        args = parser.parse_args([str(arg) for arg in argv])
        exit_code = args.func(args)
        out, err = capfd.readouterr()
        return Result(exit_code, out, err)

    return run


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points tempfile at an empty folder, so a test can see any temporary files left behind."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Path:
    return tiny_meta_checkpoint()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """The tiny Meta checkpoint converted by the real converter (cached across sessions)."""
    return tiny_meta_llama()


@pytest.fixture
def checkpoint_copy(tiny_checkpoint: Path, tmp_path: Path) -> Callable[..., Path]:
    """Makes tmp_path/input/7B: the tiny checkpoint as symlinks, less the files named."""

    def copy(*leave_out: str) -> Path:
        destination = tmp_path / "input" / "7B"
        destination.mkdir(parents=True)
        for path in tiny_checkpoint.iterdir():
            if path.name not in leave_out:
                (destination / path.name).symlink_to(path)
        return destination

    return copy
