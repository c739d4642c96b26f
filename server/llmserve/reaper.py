"""A watchdog that makes sure no engine process outlives the server, even after SIGKILL.

vLLM runs its engine core (and workers) in child processes that keep running when their parent
is killed outright. `llmserve serve` starts this small process first (`python -m
llmserve.reaper SERVER_PID`): it polls the server, remembers the server's descendants, and once
the server is gone, however it ended, terminates those still running (SIGTERM, then SIGKILL).
"""

import logging
import os
import signal
import subprocess
import sys
import time

import psutil

logger = logging.getLogger("llmserve.reaper")

POLL_SECONDS = 0.5
TERMINATE_GRACE_SECONDS = 5.0


def start_reaper() -> subprocess.Popen:
    """Starts the watchdog for the current process."""
    return subprocess.Popen([sys.executable, "-m", "llmserve.reaper", str(os.getpid())],
                            stdin=subprocess.DEVNULL)


def _gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def watch(server_pid: int) -> int:
    """Returns how many leftover processes had to be stopped."""
    try:
        server = psutil.Process(server_pid)
    except psutil.NoSuchProcess:
        return 0
    known: dict[int, psutil.Process] = {}
    while not _gone(server):
        try:
            for child in server.children(recursive=True):
                if child.pid != os.getpid():
                    known.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_SECONDS)

    leftovers = [p for p in known.values() if p.is_running() and not _gone(p)]
    for process in leftovers:
        logger.warning("server %d is gone; stopping its leftover process %d (%s)",
                       server_pid, process.pid, process.name())
        process.terminate()
    _, still_alive = psutil.wait_procs(leftovers, timeout=TERMINATE_GRACE_SECONDS)
    for process in still_alive:
        process.kill()
    return len(leftovers)


def main() -> None:
    # Signals meant for the server's process group (Ctrl-C, a group SIGTERM) must not stop the
    # watchdog before it has done its job.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    watch(int(sys.argv[1]))


if __name__ == "__main__":
    main()
