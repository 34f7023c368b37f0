"""Races between real OS processes on one database file (SPEC sections 4 and 5).

Each racer is a separate ``python`` process (tests/helpers/race_worker.py) that opens
the file, says "ready" and blocks on stdin; the test then writes "go" to every one of
them, so they all hit the file at the same moment.
"""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import racer_answer, racers, racers_finish, racers_ready, release_barrier

from orchestrator import Orchestrator

pytestmark = pytest.mark.slow


def test_twenty_processes_drain_a_queue_each_item_claimed_exactly_once(db_path, tmp_path):
    n_items, n_procs = 400, 20
    with Orchestrator(db_path) as o:
        submitted = o.submit_many([{"payload": {"n": i}} for i in range(n_items)])
    ids = {s["id"] for s in submitted}
    assert len(ids) == n_items

    with racers("race_worker.py", n_procs, lambda i: [str(db_path), f"w{i}", "drain"], tmp_path) as procs:
        release_barrier(procs)
        per_worker = {f"w{i}": racer_answer(p, i, tmp_path) for i, p in enumerate(procs)}
        racers_finish(procs, tmp_path)

    claims = [(item, fence, attempt, w) for w, cs in per_worker.items()
              for item, fence, attempt in cs]
    claimed_ids = [c[0] for c in claims]
    # Every item was claimed, and exactly once in total: no item went to two processes.
    assert Counter(claimed_ids).most_common(1)[0][1] == 1
    assert set(claimed_ids) == ids
    assert len(claims) == n_items
    assert all(attempt == 1 for _, _, attempt, _ in claims)
    # Fences: one per claim, never handed out twice, increasing within each process.
    fences = [c[1] for c in claims]
    assert len(set(fences)) == n_items
    assert all(isinstance(f, int) and f > 0 for f in fences)
    for w, cs in per_worker.items():
        own = [fence for _, fence, _ in cs]
        assert own == sorted(own) and len(set(own)) == len(own), w
    # The work really was shared out between concurrent processes.
    assert sum(1 for cs in per_worker.values() if cs) >= 2

    with Orchestrator(db_path) as o:
        items = o.list_tasks(limit=0)
        assert len(items) == n_items
        by_id = {i["id"]: i for i in items}
        for item, fence, _, w in claims:
            row = by_id[item]
            assert row["status"] == "succeeded", row
            assert row["worker_id"] == w and row["fence"] == fence
            assert row["result"] == {"by": w}
            assert row["attempts"] == 1
        events = o.list_events(limit=0)
        types = Counter(e["type"] for e in events)
        assert types["claimed"] == n_items and types["released"] == n_items
        assert sorted(e["fence"] for e in events if e["type"] == "claimed") == sorted(fences)
        assert o.status()["fence"] >= max(fences)
        assert o.claim_task("late", ttl=5) is None
        report = o.doctor()
        assert report["ok"], report["problems"]
        assert report["items"] == n_items


def test_hundred_processes_race_for_one_item_one_winner(db_path, tmp_path):
    n = 100
    with Orchestrator(db_path) as o:
        first = o.submit_task({"the": "one"})["id"]          # default queue
        second = o.submit_task({"the": "other"}, queue="elsewhere")["id"]

    with racers("race_worker.py", n, lambda i: [str(db_path), f"r{i}", "one", str(second)], tmp_path) as procs:
        # Race 1: claim_task on the default queue, which holds exactly one item.
        release_barrier(procs)
        phase1 = [racer_answer(p, i, tmp_path) for i, p in enumerate(procs)]
        # Race 2: every process claims the other item by id.
        racers_ready(procs)
        release_barrier(procs)
        phase2 = [racer_answer(p, i, tmp_path) for i, p in enumerate(procs)]
        racers_finish(procs, tmp_path)

    winners1 = [(i, r["claim"]) for i, r in enumerate(phase1) if r["claim"] is not None]
    assert len(winners1) == 1, winners1
    assert sum(1 for r in phase1 if r["claim"] is None) == n - 1
    w1, (item1, fence1) = winners1[0]
    assert item1 == first

    winners2 = [(i, r["claim"]) for i, r in enumerate(phase2) if "claim" in r]
    assert len(winners2) == 1, winners2
    errors = Counter(r.get("error") for r in phase2 if "error" in r)
    assert errors == {"Conflict": n - 1}, errors
    w2, (item2, fence2) = winners2[0]
    assert item2 == second
    assert fence2 != fence1

    with Orchestrator(db_path) as o:
        row1, row2 = o.get_task(first), o.get_task(second)
        assert (row1["status"], row1["worker_id"], row1["fence"], row1["attempts"]) == \
            ("running", f"r{w1}", fence1, 1)
        assert (row2["status"], row2["worker_id"], row2["fence"], row2["attempts"]) == \
            ("running", f"r{w2}", fence2, 1)
        claimed = [e for e in o.list_events(limit=0) if e["type"] == "claimed"]
        assert sorted((e["item_id"], e["worker_id"]) for e in claimed) == \
            sorted([(first, f"r{w1}"), (second, f"r{w2}")])
        assert not [e for e in o.list_events(limit=0) if e["type"] == "taken_over"]
        report = o.doctor()
        assert report["ok"], report["problems"]
