"""``orch doctor``'s lease rules, checked from the event log: each rule broken on a log
written by hand is named (a write outside its lease, a recovery before the lease end,
two live claims, a child outside its parent's claim, an unsafe item run again), a log
that keeps them passes, and on a real file every hole the engine lets through is named."""

from __future__ import annotations

import json

import pytest
from conftest import orch_process
from freezegun import freeze_time

from orchestrator import OrchError, Orchestrator, doctor
from orchestrator.doctor import AFTER_END, NO_OVERLAP, UNDER_PARENT, UNSAFE_NOT_RERUN, WITHIN_LEASE

T0 = 1_900_000_000_000


class Log:
    """An event log as the engine writes it, one event at a time (for lease_problems).

    The engine no longer writes logs that break the rules, so the checks are shown on
    logs written here; each event carries what the engine's would (seq, at, item,
    type, worker, fence, detail).
    """

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.fence: dict[int, int] = {}
        self.worker: dict[int, str] = {}

    def add(self, at: int, item: int, type_: str, detail: dict, fence: int | None = None,
            worker: str | None = None) -> int:
        seq = len(self.events) + 1
        self.events.append({"seq": seq, "at": T0 + at, "item_id": item, "type": type_,
                            "worker_id": worker or self.worker.get(item),
                            "fence": fence or self.fence.get(item),
                            "detail": json.dumps(detail)})
        return seq

    def submit(self, item: int, kind: str = "task", parent: int | None = None,
               effect: str = "idempotent") -> None:
        self.add(0, item, "submitted", {"kind": kind, "parent_id": parent, "effect": effect})

    def claim(self, at: int, item: int, ttl: int = 1000, worker: str = "w") -> int:
        seq = len(self.events) + 1
        self.fence[item], self.worker[item] = seq, worker
        return self.add(at, item, "claimed", {"status": "running",
                                              "lease_expires_at": T0 + at + ttl})

    def heartbeat(self, at: int, item: int, ttl: int = 1000) -> None:
        self.add(at, item, "heartbeat", {"lease_expires_at": T0 + at + ttl})

    def checkpoint(self, at: int, item: int, fence: int | None = None) -> None:
        self.add(at, item, "checkpoint", {"checkpoint_sha256": "0" * 64}, fence)

    def release(self, at: int, item: int) -> None:
        self.add(at, item, "released", {"status": "succeeded", "lease_expires_at": None})

    def expire(self, at: int, item: int, reason: str = "lease_expired",
               status: str = "pending") -> None:
        self.add(at, item, "expired", {"status": status, "reason": reason})

    def take_over(self, at: int, item: int) -> None:
        self.add(at, item, "taken_over", {"by": "w2"})

    def resolve(self, at: int, item: int) -> None:
        self.add(at, item, "resolved", {"status": "pending", "outcome": "retry"})

    def problems(self) -> list[str]:
        return doctor.lease_problems(self.events)


def tree(log: Log, at: int = 0, ttl: int = 1000) -> None:
    """Session 1 with goal 2 and tool execution 3, each claimed by w."""
    log.submit(1, "session")
    log.claim(at, 1, ttl)
    log.submit(2, "goal", 1)
    log.claim(at, 2, ttl)
    log.submit(3, "tool_execution", 2, "unsafe")
    log.claim(at, 3, ttl)


def only(problems: list[str], rule: str, *words: str) -> str:
    assert len(problems) == 1, problems
    assert problems[0].endswith(f"[{rule}]"), problems
    assert all(w in problems[0] for w in words), problems
    return problems[0]


def test_a_write_at_the_lease_end_is_stale():
    log = Log()
    log.submit(1)
    log.claim(0, 1, ttl=1000)
    log.heartbeat(999, 1, ttl=1000)  # just in time: the lease now ends at 1999
    assert log.problems() == []
    log.checkpoint(1999, 1)  # the engine refuses at lease_expires_at <= now
    only(log.problems(), WITHIN_LEASE, "event 4: task 1 checkpoint", "0 ms after")


def test_a_write_after_the_release_or_under_an_old_fence_is_stale():
    log = Log()
    log.submit(1)
    first = log.claim(0, 1)
    log.release(10, 1)
    log.heartbeat(20, 1)
    only(log.problems(), WITHIN_LEASE, "event 4: task 1 heartbeat", "ended at event 3")
    log = Log()
    log.submit(1)
    first = log.claim(0, 1)
    log.expire(1000, 1)
    log.claim(1100, 1)
    log.checkpoint(1200, 1, fence=first)
    only(log.problems(), WITHIN_LEASE, "event 5", f"under fence {first}", "fence 4")


@pytest.mark.parametrize("end", ["expire", "take_over"])
def test_recovery_or_takeover_before_the_lease_end(end):
    log = Log()
    log.submit(1)
    log.claim(0, 1, ttl=1000)
    getattr(log, end)(999, 1)
    only(log.problems(), AFTER_END, "event 3: task 1", "1 ms before its lease")


def test_two_claims_of_one_live_lease_overlap():
    log = Log()
    log.submit(1)
    log.claim(0, 1, ttl=1000)
    log.claim(500, 1, worker="w2")
    only(log.problems(), NO_OVERLAP, "event 3: task 1 claimed: fence 3 while fence 2")


def test_a_goal_claimed_without_its_sessions_live_claim():
    log = Log()
    log.submit(1, "session")
    log.submit(2, "goal", 1)
    log.claim(0, 2)  # a generic claim while the session is pending
    only(log.problems(), UNDER_PARENT, "goal 2 claimed", "session 1 held no claim")
    log = Log()
    log.submit(1, "session")
    log.claim(0, 1, worker="a")
    log.submit(2, "goal", 1)
    log.claim(0, 2, worker="b")
    only(log.problems(), UNDER_PARENT, "claimed by 'b', not by the holder of session 1")


def test_a_child_write_after_its_parent_was_released_and_resumed():
    log = Log()
    tree(log)
    log.release(100, 1)  # the session is given back while its goal runs
    log.claim(200, 1, worker="b")
    log.heartbeat(300, 2)
    problems = log.problems()
    assert problems[0].startswith("event 7: session 1 released: its claim (fence 2) ended "
                                  "while goal 2 still held a lease"), problems
    assert problems[1].startswith("event 9: goal 2 heartbeat: session 1's claim (fence 2) "
                                  "that goal 2 was claimed under was replaced by fence 8")
    assert len(problems) == 2 and all(p.endswith(f"[{UNDER_PARENT}]") for p in problems)


def test_a_grandchild_write_after_the_session_lease_ended_before_recovery():
    log = Log()
    tree(log, ttl=1000)
    log.heartbeat(500, 2, ttl=5000)  # the goal's lease outlasts its session's
    log.heartbeat(500, 3, ttl=5000)
    assert log.problems() == []
    log.checkpoint(1000, 3)  # the session's lease ended at 1000; no recovery ran yet
    only(log.problems(), UNDER_PARENT, "tool_execution 3 checkpoint",
         "session 1's lease (fence 2) ended", "0 ms before")


def test_a_cascade_while_the_parent_is_live():
    log = Log()
    tree(log)
    log.expire(10, 2, reason="parent_released")
    log.expire(10, 3, reason="parent_released")  # its goal's claim ended: right
    only(log.problems(), AFTER_END, "event 7: goal 2 expired: parent_released while")


def test_an_unsafe_item_taken_over_runs_again():
    log = Log()
    tree(log, ttl=1000)
    log.heartbeat(900, 1, ttl=5000)
    log.heartbeat(900, 2, ttl=5000)
    log.take_over(1500, 3)
    log.claim(1500, 3)
    only(log.problems(), UNSAFE_NOT_RERUN, "event 10: tool_execution 3 claimed")


def test_the_rules_hold_for_a_log_that_keeps_them():
    log = Log()
    tree(log, ttl=1000)
    log.heartbeat(900, 1, ttl=1000)
    log.heartbeat(900, 2, ttl=1000)
    log.checkpoint(999, 3)
    log.release(999, 3)
    log.release(1800, 2)
    # a release fences out the running children in its transaction, after the release
    log.submit(4, "goal", 1)
    log.claim(1800, 4)
    log.release(1850, 1)
    log.expire(1850, 4, reason="parent_released")
    log.claim(1900, 1, worker="b")  # resumed by b
    # recovery after the end: the session first, then what it covered
    log.submit(5, "goal", 1)
    log.claim(1900, 5, worker="b")
    log.expire(2900, 1, "lease_expired")
    log.expire(2900, 5, "parent_lease_lost")
    # takeover of an expired idempotent lease; an unsafe one resolved, then run again
    log.submit(6)
    log.claim(3000, 6)
    log.take_over(4000, 6)
    log.claim(4000, 6, worker="w2")
    log.submit(7, effect="unsafe")
    log.claim(3000, 7)
    log.expire(4000, 7, status="unknown")
    log.resolve(4100, 7)
    log.claim(4200, 7)
    # a task may name a parent; the cascade rules are for goals and tool executions
    log.submit(8, "task", 1)
    log.claim(5000, 8)
    log.heartbeat(5500, 8)
    assert log.problems() == []


def test_doctor_catches_each_agent_tree_hole_the_engine_lets_through(db_path):
    """For each hole of the agent tree: the engine refuses the write, or doctor names
    the rule it broke; doctor is clean when the engine refused them all."""
    expect: dict[str, int] = {}  # rule -> the item whose write the engine accepted
    with freeze_time("2030-01-01") as clock, Orchestrator(db_path) as o:
        def attempt(rule: str, item: int, call) -> None:
            try:
                if call() not in (None, []):
                    expect[rule + f" {item}"] = item
            except OrchError:
                pass

        # A session released while its goal runs; the goal writes on.
        s = o.start_session("a", ttl=10)
        g = o.create_goal(s["id"], s["token"], key="g", ttl=10)
        o.release_task(s["id"], s["token"], "requeue")
        o.resume_session(s["id"], "b", ttl=10)
        attempt(UNDER_PARENT, g["id"], lambda: o.heartbeat(g["id"], g["token"]))
        # A goal claimed by a generic worker while its session is pending.
        s2 = o.start_session("c", ttl=10)
        g2 = o.create_goal(s2["id"], s2["token"], key="g", ttl=10)
        o.release_task(g2["id"], g2["token"], "requeue")
        o.release_task(s2["id"], s2["token"], "requeue")
        attempt(UNDER_PARENT, g2["id"], lambda: o.claim_task(
            "generic", [f"session:{s2['id']}"], kinds=["goal"], ttl=10))
        # A goal with a longer lease than its session's, writing after the session's end.
        s3 = o.start_session("d", ttl=1)
        g3 = o.create_goal(s3["id"], s3["token"], ttl=30)
        clock.tick(2)
        attempt(UNDER_PARENT, g3["id"], lambda: o.checkpoint(g3["id"], g3["token"], 1))
        # An expired unsafe tool execution claimed again by id.
        s4 = o.start_session("e", ttl=60)
        g4 = o.create_goal(s4["id"], s4["token"], ttl=60)
        t4 = o.execute_tool_idempotent(g4["id"], g4["token"], "t", 1, ttl=1)
        clock.tick(2)
        attempt(UNSAFE_NOT_RERUN, t4["id"], lambda: o.claim_task("e", item_id=t4["id"],
                                                                 ttl=10))
        problems = o.doctor()["problems"]
    for rule_item, item in expect.items():
        rule = rule_item.rsplit(" ", 1)[0]
        assert any(f" {item} " in p and p.endswith(f"[{rule}]") for p in problems), \
            (rule_item, problems)
    assert bool(problems) == bool(expect), (expect, problems)
    p = orch_process("doctor", db=db_path)
    assert p.returncode == (1 if expect else 0), p.stdout + p.stderr
