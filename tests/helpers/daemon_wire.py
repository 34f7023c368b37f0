"""Raw JSON lines over the daemon's Unix socket: the one raw client of the tests.

No orch code is used here on purpose: the tests speak the wire format themselves, and
the error codes below are the documented ones, written out independently of the code.
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Self

PARSE, INVALID_REQUEST, NO_METHOD, INVALID_PARAMS = -32700, -32600, -32601, -32602
LEASE_LOST, NOT_FOUND, CONFLICT, LIMIT, UNAVAILABLE = 1001, 1002, 1003, 1004, 1005

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
        reply = self.reply(timeout)
        # an error about a request the daemon could not read may carry a null id
        echoed = (msg["id"], None) if "error" in reply else (msg["id"],)
        assert reply["jsonrpc"] == "2.0" and reply["id"] in echoed, (msg, reply)
        return reply

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


def claimed(raw: Raw, queue: str, ttl: float = 30, **kw) -> dict:
    """An item submitted to ``queue`` and claimed by worker "w-QUEUE"; the claim."""
    raw.result("submitTask", {"queue": queue, "payload": {"q": queue}, **kw})
    c = raw.result("claimTask", {"worker_id": "w-" + queue, "queues": [queue], "ttl": ttl})
    assert c is not None and c["queue"] == queue
    return c


def assert_error(err: dict, code: int, reason: str | None = None) -> None:
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"]
    if reason is not None:
        assert err["data"]["reason"] == reason, err


def serves(sock: str | Path, timeout: float = 5.0) -> bool:
    """A fresh connection gets a ping answered, and a write-path request too."""
    with Raw(sock, timeout=timeout) as r:
        if r.result("ping")["pong"] is not True:
            return False
        # goes through the group commit, and writes nothing (dry run)
        return r.result("staleRecovery", {"dry_run": True})["dry_run"] is True


def served(sock: str | Path, timeout: float = 5.0) -> Raw:
    """A connection the daemon has taken and answered once."""
    r = Raw(sock, timeout=timeout)
    try:
        assert r.result("ping")["pong"] is True
    except BaseException:
        r.close()
        raise
    return r


def claim_in_thread(sock: str | Path, params: dict, results: list) -> threading.Thread:
    """A claimTask on a connection of its own, in a thread: appends (when it returned,
    how long it took, the reply) to ``results``."""
    def run():
        with Raw(sock, timeout=60) as r:
            t = time.monotonic()
            reply = r.call("claimTask", params)
            results.append((time.monotonic(), time.monotonic() - t, reply))
    th = threading.Thread(target=run)
    th.start()
    return th


def stale_socket(path: str | Path) -> None:
    """A socket file nobody listens on, as a killed daemon leaves it."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
