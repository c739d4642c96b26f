"""The event loop the server runs on: uvloop by default, like vLLM's own servers.

uvloop makes each gRPC message cheaper for the server (measured in BENCHMARKS.md); asyncio's
own loop stays available with `--event-loop asyncio`.
"""

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

EVENT_LOOPS = ("uvloop", "asyncio")


def run(main: Coroutine[Any, Any, T], event_loop: str) -> T:
    """Runs `main` to completion on a new loop of the given kind."""
    if event_loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    if event_loop == "asyncio":
        return asyncio.run(main)
    raise ValueError(f"unknown event loop {event_loop!r}; expected one of {EVENT_LOOPS}")
