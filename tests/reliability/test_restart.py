"""Client resilience: the server restarts while clients run, in-process with the fake engine.

Hand-over restarts (the old server drains while a new one takes over its port): unary calls
ride them out with the client's retry policy, streams cut by the drain end with UNAVAILABLE and
a clear message. An outage longer than the retry policy covers: calls fail fast with
UNAVAILABLE, and clients recover once the server is back. No call waits for its deadline.
"""

import asyncio
import collections
import socket
import threading
import time
from dataclasses import dataclass

import grpc

from llmserve.engine.fake import FakeEngine
from llmserve_client import LlmClient
from tests.integration.conftest import ThreadedServer
from tests.reliability.results import record
from tests.support.processes import free_port

HAND_OVERS = 3
RUN_SECONDS = 1.0  # between restarts
OUTAGE_SECONDS = 3.0  # longer than the default policy's retries can wait (at most 1.4 s)
RECOVERY_SECONDS = 4.0
GRACE_SECONDS = 0.5
UNARY_WORKERS = 4
STREAM_WORKERS = 2
UNARY_TIMEOUT = 10.0
STREAM_TIMEOUT = 60.0
MAX_CALLS_PER_WORKER = 10_000
CUT_OFF_MESSAGE = "the server is shutting down: the request did not finish within the drain period"
# Streams are not retried (they may have produced output): one started while no server listens
# ends at once with gRPC's own message.
CONNECT_FAILURE = "failed to connect to all addresses"


@dataclass
class Outcome:
    phase: str  # when the call ended
    code: str
    details: str
    messages: int
    seconds: float


class Clients:
    """Threads calling the server until stopped; every call's outcome tagged with the phase."""

    def __init__(self, target: str):
        self.target = target
        self.phase = "hand-overs"
        self.stop = threading.Event()
        self.with_retries: list[Outcome] = []
        self.without_retries: list[Outcome] = []
        self.streams: list[Outcome] = []
        self.threads = [threading.Thread(target=self._unary, args=(3, self.with_retries))
                        for _ in range(UNARY_WORKERS)]
        self.threads.append(threading.Thread(target=self._unary, args=(0, self.without_retries)))
        self.threads += [threading.Thread(target=self._streams) for _ in range(STREAM_WORKERS)]

    def _call(self, out: list, function) -> Outcome:
        # Tagged with the phase the call ended in: a call started just before the outage that
        # retried into it belongs to the outage.
        start = time.monotonic()
        try:
            outcome = Outcome("", "OK", "", function(), time.monotonic() - start)
        except grpc.RpcError as exc:
            outcome = Outcome("", exc.code().name, exc.details() or "", 0,
                              time.monotonic() - start)
            time.sleep(0.01)  # failures without retries come back at once
        outcome.phase = self.phase
        out.append(outcome)
        return outcome

    def _unary(self, retries: int, out: list) -> None:
        with LlmClient(self.target, retries=retries, timeout=UNARY_TIMEOUT) as client:
            for _ in range(MAX_CALLS_PER_WORKER):
                if self.stop.is_set():
                    return
                self._call(out, lambda: client.generate(
                    "Hi", max_tokens=8).usage.completion_tokens)

    def _streams(self) -> None:
        with LlmClient(self.target, timeout=STREAM_TIMEOUT) as client:
            for _ in range(MAX_CALLS_PER_WORKER):
                if self.stop.is_set():
                    return
                received = []

                def read(received=received) -> int:
                    for message in client.stream_generate("Hi", max_tokens=3000,
                                                          ignore_eos=True):
                        received.append(message)
                    return len(received)

                outcome = self._call(self.streams, read)
                outcome.messages = len(received)

    def __enter__(self) -> "Clients":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=STREAM_TIMEOUT + 10)


def start_server(port: int) -> ThreadedServer:
    # 3000 tokens at 2 ms each outlast the time between restarts: every drain cuts streams.
    return ThreadedServer(FakeEngine(max_model_len=4096, token_delay=0.002), port=port,
                          shutdown_grace_seconds=GRACE_SECONDS).start()


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def hand_over(old: ThreadedServer, port: int) -> ThreadedServer:
    """Stops `old` (drain, then cut-off) while a new server takes its port once it is free."""
    stopping = asyncio.run_coroutine_threadsafe(old.server.stop(), old.loop)
    for _ in range(1000):  # the listener closes as the drain begins
        if refuses_connections(port):
            break
        time.sleep(0.001)
    new = start_server(port)
    stopping.result(timeout=30)
    old.loop.call_soon_threadsafe(old.loop.stop)
    old._thread.join(10)
    old.loop.close()
    return new


def test_clients_ride_out_server_restarts():
    port = free_port()
    server = start_server(port)
    try:
        with Clients(f"127.0.0.1:{port}") as clients:
            for _ in range(HAND_OVERS):
                time.sleep(RUN_SECONDS)
                server = hand_over(server, port)
            time.sleep(RUN_SECONDS)
            clients.phase = "outage"
            server.stop()
            time.sleep(OUTAGE_SECONDS)
            server = start_server(port)
            clients.phase = "recovery"
            time.sleep(RECOVERY_SECONDS)
    finally:
        server.stop()
    assert not any(thread.is_alive() for thread in clients.threads), "a client call hung"

    def codes(outcomes: list[Outcome], phase: str) -> collections.Counter:
        return collections.Counter(o.code for o in outcomes if o.phase == phase)

    unary = clients.with_retries
    # Through the hand-overs, unary calls with the default retry policy all succeeded.
    assert codes(unary, "hand-overs")["OK"] > 0
    assert set(codes(unary, "hand-overs")) == {"OK"}
    # During the outage they failed fast with UNAVAILABLE (or succeeded on a retry).
    assert codes(unary, "outage")["UNAVAILABLE"] > 0
    assert set(codes(unary, "outage")) <= {"OK", "UNAVAILABLE"}
    assert set(codes(unary, "recovery")) <= {"OK", "UNAVAILABLE"}
    # Every client is back: its last call succeeded.
    assert unary[-1].code == "OK"
    assert all(o.details.startswith(CONNECT_FAILURE) for o in unary if o.code != "OK")
    # Streams cut by a drain say so; streams started during the outage were refused at once.
    cut = [o for o in clients.streams if o.code != "OK" and o.messages]
    refused = [o for o in clients.streams if o.code != "OK" and not o.messages]
    assert len(cut) >= (HAND_OVERS + 1) * STREAM_WORKERS
    assert {(o.code, o.details) for o in cut} == {("UNAVAILABLE", CUT_OFF_MESSAGE)}
    assert all(o.code == "UNAVAILABLE" and o.details.startswith(CONNECT_FAILURE)
               for o in refused)
    assert clients.streams[-1].code == "OK" or clients.streams[-1].messages
    # Nothing waited for its deadline.
    everything = unary + clients.without_retries + clients.streams
    assert [o for o in everything if o.code == "DEADLINE_EXCEEDED"] == []
    record("client_restart", title="Client resilience: server restarted mid-run",
           load=f"{UNARY_WORKERS} threads of unary Generate with the client's default retry "
                "policy (3 retries), 1 thread without retries, "
                f"{STREAM_WORKERS} threads of 3000-token streams; in-process server, fake "
                "engine",
           faults=f"{HAND_OVERS} hand-over restarts {RUN_SECONDS:.0f} s apart (the old server "
                  f"drains with {GRACE_SECONDS} s grace while a new one takes its port), then "
                  f"a full stop with {OUTAGE_SECONDS:.0f} s of outage and a restart",
           outcome={
               "unary calls with retries, through the hand-overs": dict(codes(
                   unary, "hand-overs")),
               "unary calls with retries, during the outage": dict(codes(unary, "outage")),
               "unary calls with retries, after the restart": dict(codes(unary, "recovery")),
               "unary calls without retries, by phase": {
                   phase: dict(codes(clients.without_retries, phase))
                   for phase in ("hand-overs", "outage", "recovery")},
               "streams completed": sum(1 for o in clients.streams if o.code == "OK"),
               "streams cut mid-way: UNAVAILABLE with the drain message": len(cut),
               "streams refused before any output: UNAVAILABLE": len(refused),
               "longest failed unary call with retries (s)": round(max(
                   (o.seconds for o in unary if o.code != "OK"), default=0), 2),
               "DEADLINE_EXCEEDED (a call that hung)": 0,
           })
