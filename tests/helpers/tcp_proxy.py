"""A TCP proxy the test controls, to put a network partition between a daemon and the
PostgreSQL server (tests/test_pg_machines.py).

    with TcpProxy(("127.0.0.1", 5432)) as proxy:   # proxy.port: point the URL at it
        proxy.stall()    # the partition: nothing passes either way, nothing is closed
        proxy.heal()     # what was held goes through, in order

A stall holds bytes, not connections: every socket stays open (no reset, no FIN), as a
partition looks to both ends, and new connections are left in the listen queue. What
the proxy cannot do is make the kernel stop acknowledging: the bytes it holds were
received, so TCP-level timeouts on either end (keepalives, tcp_user_timeout) do not
fire through it. What an end notices is only that no answer comes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Self


class TcpProxy:
    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.connections = 0  # accepted so far (a reconnection shows as one more)
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def stall(self) -> None:
        self.flowing.clear()

    def heal(self) -> None:
        self.flowing.set()

    def _accept(self) -> None:
        while True:
            self.flowing.wait()
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.flowing.wait()  # accepted just as the link stalled: hold it too
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self.closed:
                    client.close()
                    upstream.close()
                    return
                self.connections += 1
                self._socks += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True,
                                 name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(1 << 16):
                self.flowing.wait()  # stalled: hold what was read until the link heals
                dst.sendall(data)
            self.flowing.wait()  # an end's close is held too
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            # One end is gone for good (or the proxy closed): so is the other.
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            self.closed = True
            socks = list(self._socks)
        self.flowing.set()
        # shutdown first: a pump blocked in recv() on a socket another thread closes
        # would otherwise not wake
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
