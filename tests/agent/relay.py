"""A TCP relay in front of the test origin: counts connections, can slow one down.

The origin records HTTP requests but not the TCP connections they came on; the
relay sees those (keep-alive reuse, how many ran at once) and can throttle the
Nth connection to play a slow CDN edge. Real sockets, real bytes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

BLOCK = 64 * 1024


class Relay:
    """Listens on 127.0.0.1:<port> and forwards every connection to ``target_port``."""

    def __init__(self, target_port: int, *, slow_connection: int | None = None,
                 slow_rate: float = 0.0) -> None:
        self.target_port = target_port
        self.slow_connection = slow_connection  # 1-based accept order
        self.slow_rate = slow_rate
        self.lock = threading.Lock()
        self.accepted = 0
        self.active = 0
        self.max_active = 0
        self.sent: dict[int, int] = {}  # connection number -> bytes relayed to the client
        self.accepted_at: list[float] = []  # time.monotonic() of each accept
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.closing = False
        self.thread = threading.Thread(target=self._accept, daemon=True, name="relay")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Relay:
        self.thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.closing = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.accepted += 1
                self.accepted_at.append(time.monotonic())
                number = self.accepted
                self.active += 1
                self.max_active = max(self.max_active, self.active)
                self.sent[number] = 0
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            rate = self.slow_rate if number == self.slow_connection else None
            threading.Thread(target=self._pipe, args=(client, upstream, None, None),
                             daemon=True).start()
            threading.Thread(target=self._serve, args=(upstream, client, rate, number),
                             daemon=True).start()

    def _serve(self, src: socket.socket, dst: socket.socket, rate: float | None,
               number: int) -> None:
        self._pipe(src, dst, rate, number)
        with self.lock:
            self.active -= 1

    def _pipe(self, src: socket.socket, dst: socket.socket, rate: float | None,
              number: int | None) -> None:
        try:
            while True:
                block = src.recv(BLOCK if rate is None else max(1024, int(rate / 50)))
                if not block:
                    break
                dst.sendall(block)
                if number is not None:
                    with self.lock:
                        self.sent[number] += len(block)
                if rate:
                    time.sleep(len(block) / rate)
        except OSError:
            pass
        finally:
            # Either side hanging up ends both directions, like a real proxy.
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
