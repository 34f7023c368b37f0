"""Values at and over the input limits, and the small world the bad-input tests run in."""

from __future__ import annotations

import json

MiB = 1 << 20


def nested_text(depth: int) -> str:
    return "[" * depth + "]" * depth


def nested_value(depth: int) -> list:
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


def string_text(n_bytes: int) -> str:
    """JSON text of a string that is exactly ``n_bytes`` long, quotes included."""
    return json.dumps("x" * (n_bytes - 2))


class World:
    """A pending item, a running item (with its token) and a succeeded item."""

    def __init__(self, orch):
        self.pending = orch.submit_task({"p": 1}, queue="q")["id"]
        self.running = orch.submit_task({"r": 1}, queue="q")["id"]
        self.done = orch.submit_task({"d": 1}, queue="q")["id"]
        c = orch.claim_task("w0", item_id=self.done)
        orch.release_task(self.done, c["token"], "succeeded", result="ok")
        c = orch.claim_task("w1", item_id=self.running, ttl=3600)
        self.token = c["token"]
        self.fence = c["fence"]

    def fmt(self, args: list[str]) -> list[str]:
        subs = {"{P}": self.pending, "{R}": self.running, "{S}": self.done, "{T}": self.token,
                "{R}={T}": f"{self.running}={self.token}"}
        return [str(subs[a]) if a in subs else a for a in args]
