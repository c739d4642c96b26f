"""Writing a model directory all at once: into a temporary sibling, renamed at the end."""

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path


class OutputDirError(ValueError):
    """The output directory cannot be written as asked."""


@contextlib.contextmanager
def atomic_output_dir(
    output_dir: Path, overwrite: bool = False, inputs: Iterable[Path] = ()
) -> Iterator[Path]:
    """Yields a temporary directory that becomes `output_dir` only if the block succeeds.

    An existing non-empty `output_dir` is refused unless `overwrite`, and so is one that is or
    holds one of `inputs` (replacing it would delete them). On any failure (disk full, a converter
    error, Ctrl-C) nothing is left beside `output_dir`, and an `output_dir` that was there before
    is untouched.
    """
    output_dir = output_dir.resolve()
    for source in inputs:
        source = source.resolve()
        if source == output_dir or output_dir in source.parents:
            raise OutputDirError(
                f"output directory {output_dir} holds the input {source}: choose another one"
            )
    if output_dir.exists() and not output_dir.is_dir():
        raise OutputDirError(f"output directory {output_dir} exists and is not a directory")
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputDirError(
            f"output directory {output_dir} exists and is not empty "
            "(pass --overwrite to replace it)"
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        # mkdtemp makes it private (0700), and safetensors writes its files 0600: the model
        # gets the usual permissions instead, so a server running as another user (a Kubernetes
        # pod reading a volume) can read it.
        umask = _current_umask()
        staging.chmod(0o777 & ~umask)
        yield staging
        _make_readable(staging, umask)
        if output_dir.exists():
            # Moved aside, not deleted first: the old directory stays whole until the new one is in.
            replaced = staging.with_name(staging.name + ".replaced")
            output_dir.rename(replaced)
            staging.rename(output_dir)
            shutil.rmtree(replaced)
        else:
            staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _make_readable(directory: Path, umask: int) -> None:
    for path in directory.rglob("*"):
        path.chmod(path.stat().st_mode | (0o444 & ~umask))


def _current_umask() -> int:
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


@contextlib.contextmanager
def exclusive_lock(lock_file: Path) -> Iterator[None]:
    """Holds an exclusive lock on `lock_file` (created if needed), across processes."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
