"""A loopback TCP proxy that can go silent: a client whose machine or network vanished.

`freeze()` stops forwarding in both directions while every socket stays open, as when a peer's
host dies without closing its connections: nothing arrives, nothing is refused.
"""

import contextlib
import socket
import threading

CHUNK = 65536


class FreezableProxy:
    def __init__(self, target_port: int):
        self._target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._forwarding = threading.Event()
        self._forwarding.set()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]

    def __enter__(self) -> "FreezableProxy":
        self._threads[0].start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._closed.set()
        self._forwarding.set()  # lets frozen pumps see `_closed`
        for sock in self._sockets:
            # shutdown() wakes a thread blocked in recv() or accept(); close() alone does not.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(5)

    def freeze(self) -> None:
        self._forwarding.clear()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target_port))
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=self._pump, args=(source, sink), daemon=True)
                self._threads.append(pump)
                pump.start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            self._forwarding.wait()
            if self._closed.is_set():
                return
            try:
                data = source.recv(CHUNK)
                if not data:
                    sink.shutdown(socket.SHUT_WR)
                    return
                # Frozen meanwhile: what was read in flight is dropped, like the network.
                if self._forwarding.is_set():
                    sink.sendall(data)
            except OSError:
                return
