"""``Client``: the Python API carried over the daemon's Unix socket.

It has the methods of the embedded ``Orchestrator`` (both come from ``Operations``) and
raises the same errors. A request is sent again only when it provably never reached
the daemon: no socket, connection refused, a connection found closed or reset before
the daemon read the whole line, or the daemon's own answer that it turned the request
away unread (it is stopping, or at its connection cap). A connection lost after the
daemon read the request raises ``OutcomeUnknown`` instead, because the daemon may have
committed it.
"""

from __future__ import annotations

import json
import os
import random
import select
import socket
import time
from pathlib import Path
from typing import Any, Self

from . import defaults, paths, protocol
from .errors import InvalidInput, NotDelivered, OutcomeUnknown, Unavailable, from_rpc
from .interface import Operations


class Client(Operations):
    """orch through the daemon: ``Client(socket_path)``, then the usual methods."""

    mode = "daemon"

    def __init__(self, socket_path: str | Path | None = None, *,
                 timeout: float = defaults.CLIENT_TIMEOUT_S,
                 connect_within: float = defaults.CONNECT_WITHIN_S):
        self.path = Path(socket_path) if socket_path is not None else paths.default_socket()
        self.timeout = timeout
        self.connect_within = connect_within
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 0
        self.db: paths.Database | None = None  # the daemon's, once connect() has asked

    # -- connection --

    def _open(self) -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # With a timeout, a full listen queue (a daemon short of descriptors) says so at
        # once (EAGAIN) instead of leaving connect() waiting.
        s.settimeout(self.timeout)
        try:
            s.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError, BlockingIOError) as exc:
            s.close()
            raise NotDelivered(f"no orch daemon answers on {self.path} ({exc})") from None
        except OSError as exc:
            s.close()
            raise Unavailable(f"no orch daemon answers on {self.path} ({exc})") from None
        return s

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
        """Send one request line and return the parsed reply line.

        A request that provably did not reach the daemon is sent again, on a new
        connection, for up to ``connect_within`` seconds; then ``NotDelivered``.
        """
        try:
            return self._send_once(line, timeout)
        except NotDelivered:
            if self.connect_within <= 0:
                raise
        # A few lines instead of tenacity, which would add to every CLI call's start-up.
        deadline = time.monotonic() + self.connect_within
        pause = 0.02
        while True:
            time.sleep(min(random.uniform(0, pause), max(0.0, deadline - time.monotonic())))
            try:
                return self._send_once(line, timeout)
            except NotDelivered:
                if time.monotonic() >= deadline:
                    raise
            pause = min(pause * 2, 0.5)

    def _send_once(self, line: bytes, timeout: float) -> Any:
        if self._sock is not None and self._stale():
            self.close()
        if self._sock is None:
            self._sock = self._open()
            self._buf.clear()
        try:
            self._sock.settimeout(timeout)
            self._sock.sendall(line)
        except OSError as exc:
            # Not all of the line went out, so its newline did not: the daemon cannot
            # have run it.
            self.close()
            raise NotDelivered(f"the daemon on {self.path} took no request ({exc})") from None
        try:
            raw = self._readline()
        except ConnectionResetError:
            # A Unix socket is reset when its peer closes with bytes unread: this client
            # sends nothing after its one line, so the daemon never read all of that line.
            self.close()
            raise NotDelivered(f"the daemon on {self.path} closed the connection before "
                               "reading the request") from None
        except (OSError, _Lost) as exc:
            self.close()
            raise OutcomeUnknown(
                f"the connection to the daemon was lost after the request was sent; it may "
                f"or may not have been carried out ({exc or type(exc).__name__})") from None
        try:
            reply = json.loads(raw)
        except ValueError:
            self.close()
            raise OutcomeUnknown("the daemon's reply was not JSON") from None
        if isinstance(reply, dict) and isinstance(reply.get("error"), dict) \
                and (reply["error"].get("data") or {}).get("delivered") is False:
            self.close()  # turned away unread (stopping, or at its connection cap)
            err = reply["error"]
            raise from_rpc(err.get("code", 0), err.get("message", "error"), err.get("data"))
        return reply

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


#: How long ``connect`` waits for a daemon's ping before opening the file instead.
PROBE_TIMEOUT_S = 5.0


class _Lost(Exception):
    pass


def connect(db: paths.Database | None, socket_path: Path | None) -> Client | None:
    """The daemon's client if it answers and serves ``db`` (when one was asked for).

    The client's ``db`` is the file that daemon serves.
    """
    path = socket_path or paths.default_socket()
    if not path.exists():
        return None
    client = Client(path, timeout=PROBE_TIMEOUT_S, connect_within=0)
    try:
        info = client.ping()
    except (Unavailable, OSError):
        client.close()
        return None
    wanted = db or (paths.db_arg(os.environ["ORCH_DB"]) if os.environ.get("ORCH_DB") else None)
    if wanted is not None and info.get("db", "") != paths.shown(wanted):
        client.close()  # that daemon serves another database: open ours directly
        return None
    client.timeout = defaults.CLIENT_TIMEOUT_S
    # Falling back, the CLI opens what the daemon served: the URL as given (the
    # daemon shows it with its password masked).
    client.db = wanted if wanted is not None else paths.db_arg(info["db"])
    return client
