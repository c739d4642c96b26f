"""Binding vLLM's engine core to its workers' CPUs, on stand-in processes titled like vLLM's."""

import os
import shlex
import subprocess
import sys
import time

import psutil
import pytest

from llmserve.engine.cpu_placement import bind_engine_core_to_workers

ALL_CPUS = sorted(os.sched_getaffinity(0))
pytestmark = pytest.mark.skipif(len(ALL_CPUS) < 2, reason="needs two CPUs to tell them apart")

SLEEPER = "import time; time.sleep(60)"
# Several threads, so that binding all of them (not just the main one) is checked.
THREADED = ("import threading, time\n"
            "for _ in range(3): threading.Thread(target=time.sleep, args=(60,), daemon=True)"
            ".start()\n"
            "time.sleep(60)")


def wait_until(condition) -> None:
    deadline = time.monotonic() + 10
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)


@pytest.fixture
def family():
    """Starts a parent process whose children are Python processes titled (argv[0], what vLLM's
    setproctitle changes) as given, with the given code; returns {title: child}."""
    parents: list[subprocess.Popen] = []

    def start(children: dict[str, tuple[str, int]]) -> tuple[int, dict[str, psutil.Process]]:
        script = "".join(f"(exec -a {shlex.quote(title)} {shlex.quote(sys.executable)} -c "
                         f"{shlex.quote(code)}) & " for title, (code, _) in children.items())
        parent = subprocess.Popen(["bash", "-c", script + "wait"])
        parents.append(parent)

        def running() -> dict[str, psutil.Process]:
            found = {p.cmdline()[0]: p for p in psutil.Process(parent.pid).children()
                     if p.cmdline()}
            ready = all(title in found and found[title].num_threads() >= threads
                        for title, (_, threads) in children.items())
            return found if ready else {}

        wait_until(running)
        return parent.pid, running()

    yield start
    for parent in parents:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.wait(10)


def test_every_engine_core_thread_is_bound_to_the_workers_cpus(family):
    root, children = family({"VLLM::Worker_TP0": (SLEEPER, 1),
                             "VLLM::EngineCore": (THREADED, 4),
                             "some other child": (SLEEPER, 1)})
    os.sched_setaffinity(children["VLLM::Worker_TP0"].pid, {ALL_CPUS[0]})

    assert bind_engine_core_to_workers(root) == {ALL_CPUS[0]}

    threads = children["VLLM::EngineCore"].threads()
    assert len(threads) == 4
    assert all(os.sched_getaffinity(t.id) == {ALL_CPUS[0]} for t in threads)
    assert sorted(os.sched_getaffinity(children["some other child"].pid)) == ALL_CPUS


def test_nothing_is_bound_without_a_worker(family):
    root, children = family({"VLLM::EngineCore": (SLEEPER, 1)})

    assert bind_engine_core_to_workers(root) is None
    assert sorted(os.sched_getaffinity(children["VLLM::EngineCore"].pid)) == ALL_CPUS
