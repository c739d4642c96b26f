"""vLLM's AsyncLLM driven in this process with no network: the limit any frontend is measured by.

Same engine settings as the servers (servers.engine_args and ENGINE_ENV), same prompts, same
output lengths; the engine core runs in its own child process as it does behind a server.
"""

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from llmserve.engine.cpu_placement import bind_engine_core_to_workers
from llmserve_client.bench.loadgen import REQUEST_TIMEOUT_SECONDS, LoadSpec, Reply, run_levels
from llmserve_client.bench.servers import ENGINE_ENV
from llmserve_client.bench.servers import engine_args as server_engine_args

logger = logging.getLogger(__name__)


class AsyncLLMTarget:
    streaming = True

    def __init__(self, llm):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        self.name = "in-process AsyncLLM"
        self._llm = llm
        self._params = SamplingParams
        self._delta = RequestOutputKind.DELTA
        self._ids = itertools.count()

    async def request(self, prompt: str, output_len: int) -> Reply:
        params = self._params(max_tokens=output_len, min_tokens=output_len, ignore_eos=True,
                              temperature=0.0, output_kind=self._delta)
        times: list[float] = []
        tokens = 0
        async with asyncio.timeout(REQUEST_TIMEOUT_SECONDS):
            async for output in self._llm.generate(prompt, params, f"bench-{next(self._ids)}"):
                times.append(time.perf_counter())
                tokens += len(output.outputs[0].token_ids)
        return Reply(tokens, times)

    async def close(self) -> None:
        pass


def engine_args(model: Path, stream_interval: int):
    """The servers' engine settings (`servers.engine_args`), parsed by vLLM's own parser."""
    import argparse

    from vllm.engine.arg_utils import AsyncEngineArgs

    parser = AsyncEngineArgs.add_cli_args(argparse.ArgumentParser())
    return AsyncEngineArgs.from_cli_args(parser.parse_args(
        ["--model", str(model), *server_engine_args(stream_interval)]))


async def run_inprocess(model: Path, specs: Sequence[LoadSpec], warmup: int,
                        progress: bool, stream_interval: int = 1) -> list[dict]:
    """Starts an AsyncLLM on `model`, runs the load levels against it, shuts it down."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.engine.async_llm import AsyncLLM

    for name, value in ENGINE_ENV.items():
        os.environ.setdefault(name, value)
    llm = AsyncLLM.from_engine_args(engine_args(model, stream_interval),
                                    usage_context=UsageContext.OPENAI_API_SERVER)
    bind_engine_core_to_workers()  # as `llmserve serve` does
    try:
        return await run_levels(AsyncLLMTarget(llm), specs, warmup=warmup, progress=progress)
    finally:
        llm.shutdown()
