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
"""

from __future__ import annotations

import threading
from typing import Any, Self

from loguru import logger

from .errors import LeaseLost, OrchError


class Lease:
    def __init__(self, api, claim: dict, *, heartbeat_every: float | None = None):
        self.api = api
        self.claim = claim
        self.item_id: int = claim["id"]
        self.token: str = claim["token"]
        self.fence: int = claim["fence"]
        self.ttl_s = claim["lease_ttl_ms"] / 1000
        self.every = heartbeat_every or self.ttl_s / 3
        self.expires_at_ms: int = claim["lease_expires_at"]
        self.lost = threading.Event()
        self.cancel_requested = bool(claim.get("cancel_requested"))
        self.result: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._beats = None

    # -- the holder's side --

    def check(self) -> None:
        """Raise LeaseLost if the lease is gone; call it between steps."""
        if self.lost.is_set():
            raise LeaseLost(f"item {self.item_id}: the lease (fence {self.fence}) was lost")

    def heartbeat(self) -> dict:
        self.check()
        return self._beat(self.api)

    def checkpoint(self, data: Any) -> dict:
        self.check()
        try:
            return self.api.checkpoint(self.item_id, self.token, data)
        except LeaseLost:
            self.lost.set()
            raise

    def release(self, outcome: str, **kw: Any) -> dict:
        self._stop_beating()
        self.check()
        try:
            return self.api.release_task(self.item_id, self.token, outcome, **kw)
        except LeaseLost:
            self.lost.set()
            raise

    # -- the background heartbeat --

    def _beat(self, api) -> dict:
        try:
            r = api.heartbeat(self.item_id, self.token)
        except LeaseLost:
            self.lost.set()
            raise
        self.expires_at_ms = r["lease_expires_at"]
        self.cancel_requested = self.cancel_requested or r["cancel_requested"]
        return r

    def _run(self) -> None:
        from .clock import now_ms

        api = self._beats
        while not self._stop.wait(self.every):
            try:
                self._beat(api)
            except LeaseLost:
                logger.bind(item=self.item_id, fence=self.fence).warning(
                    "heartbeat rejected: lease lost, the holder is fenced out")
                return
            except OrchError as exc:  # the daemon restarting, the file busy: try again
                logger.bind(item=self.item_id).warning("heartbeat failed: {}", exc)
                if now_ms() >= self.expires_at_ms:
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

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop_beating()
        if exc_type is not None and issubclass(exc_type, LeaseLost):
            return  # fenced out: there is nothing left to release
        if exc is None:
            self.release("succeeded", result=self.result)
        elif not self.lost.is_set():
            try:
                self.release("failed", error=f"{exc_type.__name__}: {exc}"[:4096])
            except OrchError as release_error:
                logger.bind(item=self.item_id).warning("release after error failed: {}",
                                                       release_error)
