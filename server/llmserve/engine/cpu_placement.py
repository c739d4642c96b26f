"""On CPU platforms: keep vLLM's engine-core process off the cores left to the frontend.

vLLM's CPU worker binds its OpenMP threads to some cores and leaves the others
(VLLM_CPU_NUM_OF_RESERVED_CPU) to the API server. The engine-core process is not bound, and it
busy-waits (sched_yield) for the worker's results for up to a second after each step: when the
kernel runs that loop on the frontend's core, the frontend and its clients wait behind it. On 2
vCPUs this stalled whole streams for the length of a request, and binding the engine core to the
worker's cores took llmserve from 4,401 to 6,140 tokens/s at C=64 (tiny model, BENCHMARKS.md).
"""

import contextlib
import logging
import os

import psutil

logger = logging.getLogger(__name__)

ENGINE_CORE_TITLE = "VLLM::EngineCore"
WORKER_TITLE = "VLLM::Worker"


def _title(process: psutil.Process) -> str:
    """vLLM sets its processes' titles (argv[0]); /proc's name is cut at 15 characters."""
    try:
        cmdline = process.cmdline()
    except psutil.Error:
        return ""
    return cmdline[0] if cmdline else ""


def bind_engine_core_to_workers(root_pid: int | None = None) -> set[int] | None:
    """Binds every thread of the engine-core processes below `root_pid` (default: this process)
    to the CPUs its workers are bound to.

    Returns those CPUs, or None when there is nothing to bind (no worker or engine core found).
    """
    descendants = psutil.Process(root_pid).children(recursive=True)
    workers = [p for p in descendants if _title(p).startswith(WORKER_TITLE)]
    engine_cores = [p for p in descendants if _title(p).startswith(ENGINE_CORE_TITLE)]
    if not workers or not engine_cores:
        return None
    cpus = set().union(*(worker.cpu_affinity() for worker in workers))
    for engine_core in engine_cores:
        for thread in engine_core.threads():
            with contextlib.suppress(ProcessLookupError):  # a thread that just ended
                os.sched_setaffinity(thread.id, cpus)
        logger.info("bound vLLM's engine core (pid %d) to its workers' CPUs %s",
                    engine_core.pid, sorted(cpus))
    return cpus
