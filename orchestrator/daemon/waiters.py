"""Claims parked until an item they could take appears, and the writes that wake them."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from .. import clock

# Operations after which an item may have become claimable, and those whose ``wait``
# makes them park: both from each operation's record.


@dataclass(eq=False)
class _Waiter:
    kinds: frozenset[str]
    queues: frozenset[str]
    woken: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                  .create_future())


class Waiters:
    """Claims parked until an item they could take appears."""

    def __init__(self) -> None:
        self.parked: list[_Waiter] = []

    def add(self, kinds: list[str], queues: list[str]) -> _Waiter:
        w = _Waiter(frozenset(kinds), frozenset(queues))
        self.parked.append(w)
        return w

    def remove(self, w: _Waiter) -> None:
        try:
            self.parked.remove(w)
        except ValueError:
            pass

    def wake(self, kind: str, queue: str, n: int = 1) -> None:
        """Wake up to ``n`` waiters (oldest first) that could take a (kind, queue) item."""
        for w in list(self.parked):
            if n <= 0:
                break
            if kind in w.kinds and queue in w.queues:
                self.parked.remove(w)
                if not w.woken.done():
                    w.woken.set_result(True)
                n -= 1

    def any_for(self, kind: str, queue: str) -> bool:
        return any(kind in w.kinds and queue in w.queues for w in self.parked)

    def pass_on(self, w: _Waiter) -> None:
        """A woken claim whose client has gone hands its wake-up to another."""
        for kind in w.kinds:
            for name in w.queues:
                self.wake(kind, name)

    def wake_all(self) -> None:
        for w in self.parked:
            if not w.woken.done():
                w.woken.set_result(True)
        self.parked.clear()

    def feed(self, op: str, value: Any) -> None:
        """Wake the claims parked for the items that the write ``op`` (one of FEEDS),
        which returned ``value``, made claimable."""
        now = clock.now_ms()
        items = (value if op == "submit_many" else value["recovered"]
                 if op == "stale_recovery" else [value["released"]]
                 if op == "release_and_claim" else [value])
        for item in items:
            if item.get("status") != "pending":
                continue
            if item["run_after"] <= now:
                self.wake(item["kind"], item["queue"])
            elif self.any_for(item["kind"], item["queue"]):
                # Claims parked before this delayed item existed: wake one when it is due.
                # (A claim parking later finds it through its own next-due timer.)
                asyncio.get_running_loop().call_later(
                    (item["run_after"] - now) / 1000, self.wake, item["kind"], item["queue"])
