"""``Client``: the Python API carried over the daemon's Unix socket.

It has the methods of the embedded ``Orchestrator`` (both come from ``Operations``) and
raises the same errors. A request is retried only when it provably never reached the
daemon (no socket, connection refused, a connection found closed before sending); a
connection lost after sending raises ``OutcomeUnknown`` instead, because the daemon
may have committed it.
"""

from __future__ import annotations

import json
import os
import select
import socket
from pathlib import Path
from typing import Any, Self

import tenacity

from . import paths, protocol
from .api import Operations
from .errors import InvalidInput, OutcomeUnknown, Unavailable, from_rpc


class _NotDelivered(Exception):
    pass


class Client(Operations):
    """orch through the daemon: ``Client(socket_path)``, then the usual methods."""

    mode = "daemon"

    def __init__(self, socket_path: str | Path | None = None, *, timeout: float = 60.0,
                 connect_within: float = 2.0):
        self.path = Path(socket_path) if socket_path is not None else paths.default_socket()
        self.timeout = timeout
        self.connect_within = connect_within
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 0

    # -- connection --

    def _open(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            s.close()
            raise _NotDelivered(str(exc)) from exc
        except OSError:
            s.close()
            raise
        return s

    def _connect(self) -> None:
        try:
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(_NotDelivered),
                stop=tenacity.stop_after_delay(self.connect_within),
                wait=tenacity.wait_random_exponential(multiplier=0.02, max=0.5),
                reraise=True,
            ):
                with attempt:
                    self._sock = self._open()
        except (_NotDelivered, OSError) as exc:
            raise Unavailable(f"no orch daemon answers on {self.path} ({exc})") from None
        self._buf.clear()

    def _stale(self) -> bool:
        """Did the daemon close this idle connection (it restarted, say)?"""
        assert self._sock is not None
        readable, _, _ = select.select([self._sock], [], [], 0)
        if not readable:
            return False
        try:
            return self._sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def clone(self) -> Client:
        return Client(self.path, timeout=self.timeout, connect_within=self.connect_within)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # -- calls --

    def _call(self, op: str, params: dict[str, Any]) -> Any:
        self._next_id += 1
        request = {"jsonrpc": "2.0", "id": self._next_id, "method": protocol.OP_METHOD[op],
                   "params": params}
        try:
            line = protocol.encode(request)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"params: not JSON ({exc})", data={"field": "params"}) from None
        reply = self.send_line(line, timeout=self.timeout + float(params.get("wait") or 0))
        if "error" in reply:
            err = reply["error"]
            raise from_rpc(err.get("code", 0), err.get("message", "error"), err.get("data"))
        return reply["result"]

    def send_line(self, line: bytes, *, timeout: float) -> Any:
        """Send one request line and return the parsed reply line."""
        if self._sock is not None and self._stale():
            self.close()
        if self._sock is None:
            self._connect()
        assert self._sock is not None
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(line)
            raw = self._readline()
        except (OSError, _Lost) as exc:
            self.close()
            raise OutcomeUnknown(
                f"the connection to the daemon was lost after the request was sent; it may "
                f"or may not have been carried out ({exc or type(exc).__name__})") from None
        try:
            return json.loads(raw)
        except ValueError:
            self.close()
            raise OutcomeUnknown("the daemon's reply was not JSON") from None

    def _readline(self) -> bytes:
        assert self._sock is not None
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[:nl + 1]
                return line
            chunk = self._sock.recv(1 << 16)
            if not chunk:
                raise _Lost("connection closed")
            self._buf += chunk

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Lost(Exception):
    pass


def connect(db: Path | None, socket_path: Path | None) -> Client | None:
    """The daemon's client if it answers and serves ``db`` (when one was asked for)."""
    path = socket_path or paths.default_socket()
    if not path.exists():
        return None
    client = Client(path, timeout=5.0, connect_within=0)
    try:
        info = client.ping()
    except (Unavailable, OSError):
        client.close()
        return None
    wanted = db or (Path(os.environ["ORCH_DB"]) if os.environ.get("ORCH_DB") else None)
    if wanted is not None and Path(info.get("db", "")) != Path(wanted).expanduser().resolve():
        client.close()  # that daemon serves another file: open ours directly
        return None
    client.timeout = 60.0
    return client
