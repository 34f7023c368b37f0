"""Raw JSON lines over the daemon's Unix socket, for the daemon protocol and fault tests.

No orch code is used here on purpose: the tests speak the wire format themselves.
"""

from __future__ import annotations

import itertools
import json
import socket
import time
from pathlib import Path
from typing import Any, Self

_ids = itertools.count(1)


class Closed(Exception):
    """The daemon closed the connection (EOF or reset) before a full line arrived."""


class Raw:
    """One connection to the daemon: send bytes or JSON, read reply lines."""

    def __init__(self, path: str | Path, timeout: float = 10.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    self.sock.connect(str(path))
                    break
                except BlockingIOError:
                    # the listen backlog is full for a moment (a burst of connections);
                    # with a timeout set, an AF_UNIX connect says so instead of waiting
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.005)
        except BaseException:
            self.sock.close()
            raise
        self.buf = bytearray()
        self.timeout = timeout

    # -- sending --

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_json(self, message: Any) -> None:
        self.send(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    # -- reading --

    def readline(self, timeout: float | None = None) -> bytes:
        """The next full line (without the newline); Closed on EOF or reset,
        TimeoutError when nothing complete arrives in time."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            nl = self.buf.find(b"\n")
            if nl >= 0:
                line = bytes(self.buf[:nl])
                del self.buf[:nl + 1]
                return line
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no reply line in time")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed(str(exc)) from None
            except TimeoutError:
                raise TimeoutError("no reply line in time") from None
            if not chunk:
                raise Closed("EOF")
            self.buf += chunk

    def reply(self, timeout: float | None = None) -> Any:
        return json.loads(self.readline(timeout))

    def closed_by_peer(self, timeout: float) -> bool:
        """True when the daemon closes this connection within ``timeout`` seconds
        (anything it sends before closing is read and dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 16)
            except (ConnectionResetError, BrokenPipeError):
                return True
            except TimeoutError:
                return False
            if not chunk:
                return True

    # -- calls --

    def call(self, method: str, params: Any = None, *, id_: Any = None,
             timeout: float | None = None, **extra: Any) -> dict:
        """Send one request and return its reply (the whole reply object)."""
        msg: dict[str, Any] = {"jsonrpc": "2.0", "id": next(_ids) if id_ is None else id_,
                               "method": method}
        if params is not None:
            msg["params"] = params
        msg.update(extra)
        self.send_json(msg)
        return self.reply(timeout)

    def result(self, method: str, params: Any = None, **kw: Any) -> Any:
        r = self.call(method, params, **kw)
        assert "error" not in r, r
        return r["result"]

    def error(self, method: str, params: Any = None, **kw: Any) -> dict:
        r = self.call(method, params, **kw)
        assert "error" in r and "result" not in r, r
        return r["error"]

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_until(pred, timeout: float, every: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return bool(pred())
