"""One worker of the randomized lease checker (tests/test_lease_checker.py), its own process.

    lease_worker.py DB SOCKET|- NAME SEED UNTIL ACKS

Works against DB embedded, or through the daemon on SOCKET, until the epoch time UNTIL
(seconds), doing random operations seeded by SEED: submits, claims with leases under
1.5 s (some by id, over expired leases), heartbeats, checkpoints, releases with random
outcomes, sessions with goals and tool executions (parents sometimes released before
their children, goals sometimes given a longer lease than their session), and pauses
longer than any lease, after which it writes with the tokens it had as if nothing
happened. The engine must refuse every write whose lease is gone; the test checks the
log afterwards.

Each write the engine acknowledged is appended to ACKS as one JSON line
{"type", "item", "fence", "expires"?} as soon as it returns, so the test can find it
in the log, even when the process is killed right after; each write refused with
LEASE_LOST as {"refused": operation}.
"""

import json
import random
import sys
import time

from orchestrator import Orchestrator
from orchestrator.client import Client
from orchestrator.errors import (
    Conflict,
    InvalidInput,
    LeaseLost,
    NotFound,
    OrchError,
    OutcomeUnknown,
)


class Worker:
    def __init__(self, api, name: str, rng: random.Random, acks) -> None:
        self.api, self.name, self.rng, self.acks = api, name, rng, acks
        self.held: dict[int, dict] = {}  # item -> its claim (id, kind, token, fence, ...)
        self.seen: list[int] = []  # item ids this worker came across
        self.sessions: list[int] = []
        self.using: dict | None = None  # the claim the current step writes with

    def ack(self, type_: str, item: int, fence: int, **extra) -> None:
        self.acks.write(json.dumps({"type": type_, "item": item, "fence": fence, **extra})
                        + "\n")
        self.acks.flush()

    def ttl(self) -> float:
        return self.rng.uniform(0.3, 1.4)

    def took(self, claim: dict | None) -> None:
        if claim is None or "token" not in claim:
            return
        self.ack("claimed", claim["id"], claim["fence"])
        self.held[claim["id"]] = claim
        self.seen.append(claim["id"])
        if claim["kind"] == "session":
            self.sessions.append(claim["id"])

    def pick(self, *kinds: str) -> dict | None:
        choices = [c for c in self.held.values() if c["kind"] in kinds]
        self.using = self.rng.choice(choices) if choices else None
        return self.using

    # -- the operations, one of which runs per step --

    def submit(self) -> None:
        items = [{"payload": {"by": self.name}, "effect": self.rng.choice(
            ["idempotent", "idempotent", "unsafe"]), "max_attempts": 5}
            for _ in range(self.rng.randint(1, 3))]
        for item in self.api.submit_many(items):
            self.seen.append(item["id"])

    def claim(self) -> None:
        self.took(self.api.claim_task(self.name, ttl=self.ttl()))

    def claim_by_id(self) -> None:
        # Often an item whose holder paused or was killed: a takeover of its lease.
        if self.seen:
            try:
                self.took(self.api.claim_task(self.name, ttl=self.ttl(),
                                              item_id=self.rng.choice(self.seen[-50:])))
            except InvalidInput:
                pass  # a goal or tool execution: never handed out by a claim

    def claim_goal(self) -> None:
        # Goals belong to their session's holder; a generic claim must not get one.
        if self.sessions:
            sid = self.rng.choice(self.sessions[-10:])
            try:
                self.took(self.api.claim_task(self.name, [f"session:{sid}"], kinds=["goal"],
                                              ttl=self.ttl()))
            except InvalidInput:
                pass  # refused outright: as it should be

    def start_session(self) -> None:
        key = self.rng.choice([None, "s0", "s1", "s2"])
        self.took(self.api.start_session(self.name, key=key, ttl=self.ttl()))

    def resume_session(self) -> None:
        if self.sessions:
            self.took(self.api.resume_session(self.rng.choice(self.sessions[-10:]), self.name,
                                              ttl=self.ttl()))

    def create_goal(self) -> None:
        if s := self.pick("session"):
            # sometimes longer than the session's own lease: it must not outlive it
            self.took(self.api.create_goal(s["id"], s["token"], key=self.rng.choice(
                ["g0", "g1", "g2"]), ttl=self.rng.uniform(0.3, 2.5)))

    def execute_tool(self) -> None:
        if g := self.pick("goal"):
            out = self.api.execute_tool_idempotent(
                g["id"], g["token"], "probe", {"n": self.rng.randrange(4)},
                effect=self.rng.choice(["idempotent", "unsafe"]), ttl=self.ttl())
            self.took(out)

    def heartbeat(self) -> None:
        if c := self.pick("task", "session", "goal", "tool_execution"):
            r = self.api.heartbeat(c["id"], c["token"], ttl=self.ttl())
            self.ack("heartbeat", c["id"], c["fence"], expires=r["lease_expires_at"])

    def checkpoint(self) -> None:
        if c := self.pick("task", "session", "goal", "tool_execution"):
            self.api.checkpoint(c["id"], c["token"], {"by": self.name, "t": time.time()})
            self.ack("checkpoint", c["id"], c["fence"])

    def release(self) -> None:
        # Parents too, while their children are still held: those stay in self.held and
        # are written to later, as a careless agent would.
        if c := self.pick("task", "session", "goal", "tool_execution"):
            outcome = self.rng.choice(["succeeded", "failed", "requeue", "cancelled"])
            self.api.release_task(c["id"], c["token"], outcome)
            self.ack("released", c["id"], c["fence"])
            del self.held[c["id"]]

    def step(self) -> None:
        ops = [(self.submit, 8), (self.claim, 14), (self.claim_by_id, 5),
               (self.claim_goal, 2), (self.start_session, 5), (self.resume_session, 3),
               (self.create_goal, 8), (self.execute_tool, 8), (self.heartbeat, 20),
               (self.checkpoint, 8), (self.release, 12)]
        op = self.rng.choices([o for o, _ in ops], [w for _, w in ops])[0]
        if len(self.held) > 8 and op in (self.claim, self.claim_by_id, self.start_session):
            op = self.release
        self.using = None
        try:
            op()
        except LeaseLost:
            self.acks.write(json.dumps({"refused": op.__name__}) + "\n")
            self.acks.flush()
            # Kept now and then: later writes with its token must fail as well.
            if self.using is not None and self.rng.random() < 0.7:
                self.held.pop(self.using["id"], None)
        except (Conflict, NotFound, OutcomeUnknown):
            pass
        except OrchError as exc:
            if exc.reason != "unavailable":
                raise


def main() -> None:
    db, sock, name, seed, until, acks = sys.argv[1:7]
    api = Orchestrator(db, busy_budget_s=30) if sock == "-" else Client(sock, timeout=30)
    with open(acks, "a") as out:
        w = Worker(api, name, random.Random(seed), out)
        pause_at = time.time() + w.rng.uniform(0.3, 2.0)
        while time.time() < float(until):
            w.step()
            time.sleep(w.rng.uniform(0, 0.005))  # the work between two calls
            if time.time() >= pause_at:  # stalled longer than its leases (up to 1.4 s)
                time.sleep(w.rng.uniform(1.5, 2.0))
                pause_at = time.time() + w.rng.uniform(0.5, 3.0)
    api.close()


if __name__ == "__main__":
    main()
