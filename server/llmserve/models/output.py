"""Writing a model directory all at once: into a temporary sibling, renamed at the end."""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputDirError(ValueError):
    """The output directory cannot be written as asked."""


@contextlib.contextmanager
def atomic_output_dir(output_dir: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yields a temporary directory that becomes `output_dir` only if the block succeeds.

    An existing non-empty `output_dir` is refused unless `overwrite`; on any failure (disk full,
    a converter error, Ctrl-C) nothing is left at `output_dir` or beside it.
    """
    output_dir = output_dir.resolve()
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise OutputDirError(
            f"output directory {output_dir} exists and is not empty (pass --overwrite to replace it)"
        )
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        yield staging
        if output_dir.exists():
            shutil.rmtree(output_dir)
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
