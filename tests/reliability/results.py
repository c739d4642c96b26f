"""Where reliability tests record what they measured, for RELIABILITY.md.

Each test writes one JSON file (its name, load, faults, outcome) into `reliability-results/` at
the repository root (or $LLMSERVE_RELIABILITY_RESULTS); `python -m tests.reliability.report`
renders RELIABILITY.md from the files of the last run.
"""

import json
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def results_dir() -> Path:
    return Path(os.environ.get("LLMSERVE_RELIABILITY_RESULTS", ROOT / "reliability-results"))


def record(name: str, *, title: str, load: str, faults: str, outcome: dict,
           slow: bool = False, passed: bool = True) -> Path:
    """Writes one test's measured outcome; returns the file written.

    Tests record once their assertions passed, unless they say otherwise (`passed`).
    """
    directory = results_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({
        "name": name, "title": title, "load": load, "faults": faults, "outcome": outcome,
        "slow": slow, "passed": passed, "finished_at": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                   f"{platform.python_version()}",
    }, indent=2, sort_keys=False) + "\n")
    return path
