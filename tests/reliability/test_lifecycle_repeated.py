"""The lifecycle tests of tests/e2e/test_lifecycle.py, five times each (slow): SIGTERM drain (no
admitted request lost), engine death and SIGKILL of the server (no engine process left)."""

import pytest

from tests.e2e import test_lifecycle as lifecycle
from tests.reliability.results import record

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
REPEATS = 5
SCENARIOS = {
    "sigterm_drain": (lifecycle.test_sigterm_lets_in_flight_streams_finish,
                      "SIGTERM with 16 streams in flight (300 tokens each, 60 s grace): all 16 "
                      "finish with 300 tokens, a late call gets UNAVAILABLE, exit 0, no engine "
                      "process left"),
    "engine_death": (lifecycle.test_engine_death_turns_health_off_fails_requests_and_exits_nonzero,
                     "SIGKILL of the EngineCore process during a stream: the stream gets "
                     "UNAVAILABLE, health SERVING -> NOT_SERVING, the server exits non-zero, no "
                     "engine process left"),
    "sigkill": (lifecycle.test_sigkill_leaves_no_engine_process,
                "SIGKILL of the server: its engine processes are gone within 30 s (reaper)"),
}


@pytest.fixture(scope="module")
def passes():
    counts = {name: 0 for name in SCENARIOS}
    yield counts
    record("lifecycle_repeated", slow=True, passed=all(n == REPEATS for n in counts.values()),
           title="Engine death, SIGTERM drain and SIGKILL, repeated",
           load=f"{REPEATS} fresh `llmserve serve` processes per scenario (tiny random Llama)",
           faults="; ".join(f"{name}: {text}" for name, (_, text) in SCENARIOS.items()),
           outcome={f"{name} runs passed": f"{counts[name]}/{REPEATS}" for name in SCENARIOS})


@pytest.mark.parametrize("attempt", range(1, REPEATS + 1))
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_lifecycle_repeated(scenario, attempt, tiny_llama, tmp_path, passes):
    test, _ = SCENARIOS[scenario]
    test(tiny_llama, tmp_path)
    passes[scenario] += 1
