"""Submitting: an idempotency key names one item per (kind, queue) forever, and a bulk
submit is one transaction whose answers and events are exactly those of single submits."""

from __future__ import annotations

import pytest
from conftest import T0_MS, n_events

from orchestrator import NotFound


def test_idempotency_key(api, clock):
    first = api.submit_task({"v": 1}, key="job-1", queue="q")
    assert first["created"] is True
    n = n_events(api)
    again = api.submit_task({"v": 2}, key="job-1", queue="q", priority=9)
    assert again["created"] is False
    assert again["id"] == first["id"]
    assert again["payload"] == {"v": 1} and again["priority"] == 0
    assert n_events(api) == n
    assert len(api.list_tasks(limit=0)) == 1
    # another queue or kind is another key space
    other_q = api.submit_task({"v": 3}, key="job-1", queue="q2")
    other_k = api.submit_task({"v": 4}, key="job-1", queue="q", kind="session")
    assert other_q["created"] and other_k["created"]
    assert len({first["id"], other_q["id"], other_k["id"]}) == 3
    # unique forever: also once the item is finished
    claim = api.claim_task("w1", ["q"])
    api.release_task(claim["id"], claim["token"], "succeeded")
    late = api.submit_task({"v": 5}, key="job-1", queue="q")
    assert late["created"] is False and late["id"] == first["id"]
    assert late["status"] == "succeeded"


def test_submit_many(api, clock, store):
    got = api.submit_many([
        {"payload": {"n": 1}, "queue": "q", "priority": 2},
        {"payload": {"n": 2}, "key": "k"},
        {"payload": {"n": 3}, "key": "k"},
        {"delay": 5},
    ])
    assert [g["created"] for g in got] == [True, True, False, True]
    assert got[1]["id"] == got[2]["id"]
    assert got[0]["queue"] == "q" and got[0]["priority"] == 2 and got[0]["payload"] == {"n": 1}
    assert got[2]["payload"] == {"n": 2}
    assert got[3]["payload"] is None and got[3]["run_after"] == T0_MS + 5000
    assert len(api.list_tasks(limit=0)) == 3
    # one transaction: a bad item makes nothing at all
    before = store.snapshot()
    with pytest.raises(NotFound):
        api.submit_many([{"payload": "fine"}, {"payload": "orphan", "parent_id": 9999}])
    assert store.snapshot() == before
    assert api.doctor()["ok"]


def test_submit_many_answers_and_events_equal_one_by_one_submits(store, clock):
    """The bulk path formats its events and answers itself: they must be exactly what
    submit_task makes, for every queue character, kind, effect and number."""
    items = [{"payload": {"n": i, "s": "é\"\\"}, "queue": q, "priority": p,
              "max_attempts": m, "delay": d, "effect": e, "kind": k}
             for i, (q, p, m, d, e, k) in enumerate([
                 ("a.b_c:d-9", -(2**63), 0, 0, "unsafe", "task"),
                 ("Q", 2**63 - 1, None, 1.5, None, "session"),
                 ("x" * 128, 0, 1_000_000, 0, "idempotent", "task")])]
    with store.open("bulk") as bulk, store.open("one") as one:
        many = bulk.submit_many(items)
        singles = [one.submit_task(**it) for it in items]
        assert many == singles
        assert bulk.list_events(limit=0) == one.list_events(limit=0)  # details, hashes
        assert bulk.doctor()["ok"]
