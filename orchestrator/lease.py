"""``Lease``: hold a claim from an agent's code, with heartbeats in the background.

    with orch.hold(orch.claim_task("w1")) as lease:
        for step in work:
            lease.check()          # raises LeaseLost once the lease is gone
            do(step)
            lease.checkpoint({"step": step})

On a normal exit the item is released ``succeeded`` (with ``lease.result``); on an
exception it is released ``failed`` with the error, and the exception goes on. When a
heartbeat is rejected the holder fences itself: heartbeats stop, ``lost`` is set, and
the next ``check()`` (or checkpoint, or the release at exit) raises ``LeaseLost``.

A rejected heartbeat is not the only sign: a process that was stopped (SIGSTOP, a
swapped-out VM, a long GC pause) may run again after its lease ended, before any
heartbeat could fail. So the holder also keeps a deadline on the monotonic clock: the
moment the last successful heartbeat (or the claim) was sent, plus the lease's ttl,
minus a margin (``margin_s``: a tenth of the ttl, at least 50 ms) for the step that
follows a passing ``check()`` and for the rates of the clocks. Past it, ``check()``
fences the holder as a rejected heartbeat would. Checkpoints and the release are
judged by the engine, which checks the lease itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Self

from loguru import logger

from .clock import now_ms
from .errors import LeaseLost, OrchError
from .model import Claim, Outcome


def margin_s(ttl_s: float) -> float:
    """How long before the lease's computed end the holder stops trusting it."""
    return max(0.1 * ttl_s, 0.05)


class Lease:
    def __init__(self, api, claim: Claim, *, heartbeat_every: float | None = None):
        self.api = api
        self.claim = claim
        fence, ttl_ms, expires = claim["fence"], claim["lease_ttl_ms"], claim["lease_expires_at"]
        assert fence is not None and ttl_ms is not None and expires is not None, "a claim"
        self.item_id: int = claim["id"]
        self.token: str = claim["token"]
        self.fence: int = fence
        self.ttl_s = ttl_ms / 1000
        self.every = heartbeat_every or self.ttl_s / 3
        self.expires_at_ms: int = expires
        # The claim was sent before now, at a moment not known here: count from what
        # is left of its lease by the wall clock the engine stamped it with.
        left_s = min((self.expires_at_ms - now_ms()) / 1000, self.ttl_s)
        self.deadline = time.monotonic() + left_s - margin_s(self.ttl_s)
        self.lost = threading.Event()
        self.cancel_requested = bool(claim.get("cancel_requested"))
        self.result: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = None

    # -- the holder's side --

    def check(self) -> None:
        """Raise LeaseLost if the lease is gone, or may be; call it before each step."""
        if not self.lost.is_set() and time.monotonic() >= self.deadline:
            self.lost.set()  # for good: a step begun now may run outside the lease
            logger.bind(item=self.item_id, fence=self.fence).warning(
                "no heartbeat confirmed the lease in time: the holder fences itself")
        self._fenced()

    def _fenced(self) -> None:
        # Before orch's own writes only the flag counts: the engine checks the token
        # and the lease itself, so a late but valid write is not thrown away.
        if self.lost.is_set():
            raise LeaseLost(f"item {self.item_id}: the lease (fence {self.fence}) was lost")

    def heartbeat(self) -> dict:
        self._fenced()
        return self._beat(self.api)

    def checkpoint(self, data: Any) -> dict:
        self._fenced()
        try:
            return self.api.checkpoint(self.item_id, self.token, data)
        except LeaseLost:
            self.lost.set()
            raise

    def release(self, outcome: str, **kw: Any) -> dict:
        self._stop_beating()
        self._fenced()
        try:
            return self.api.release_task(self.item_id, self.token, outcome, **kw)
        except LeaseLost:
            self.lost.set()
            raise

    # -- the background heartbeat --

    def _beat(self, api) -> dict:
        sent = time.monotonic()  # before sending: the lease is extended from later on
        try:
            r = api.heartbeat(self.item_id, self.token)
        except LeaseLost:
            self.lost.set()
            raise
        # Without a ttl a heartbeat extends by the claim's ttl; max(): a late answer
        # to an earlier heartbeat must not move the deadline back.
        self.deadline = max(self.deadline, sent + self.ttl_s - margin_s(self.ttl_s))
        self.expires_at_ms = r["lease_expires_at"]
        self.cancel_requested = self.cancel_requested or r["cancel_requested"]
        return r

    def _run(self) -> None:
        api = self._beats
        while not self._stop.wait(self.every) and not self.lost.is_set():
            try:
                self._beat(api)
            except LeaseLost:
                logger.bind(item=self.item_id, fence=self.fence).warning(
                    "heartbeat rejected: lease lost, the holder is fenced out")
                return
            except OrchError as exc:  # the daemon restarting, the file busy: try again
                logger.bind(item=self.item_id).warning("heartbeat failed: {}", exc)
                if time.monotonic() >= self.deadline:
                    self.lost.set()
                    return

    def _stop_beating(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        if self._beats is not None:
            self._beats.close()
            self._beats = None

    def __enter__(self) -> Self:
        # The heartbeat thread gets its own connection: one connection per thread.
        self._beats = self.api.clone()
        self._thread = threading.Thread(target=self._run, name=f"orch-lease-{self.item_id}",
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, _tb) -> None:
        self._stop_beating()
        if exc_type is not None and issubclass(exc_type, LeaseLost):
            return  # fenced out: there is nothing left to release
        if exc is None:
            self.release(Outcome.SUCCEEDED, result=self.result)
        elif not self.lost.is_set():
            try:
                self.release(Outcome.FAILED, error=f"{exc_type.__name__}: {exc}"[:4096])
            except OrchError as release_error:
                logger.bind(item=self.item_id).warning("release after error failed: {}",
                                                       release_error)
