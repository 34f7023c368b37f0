"""Races between real OS processes on one file, released at once (tests/helpers/
race_worker.py and agent_racer.py wait for a "go" line on stdin): a queue drained by 20
processes gives each item to exactly one; 100 processes racing for one item give one
winner; 100 calls of one tool key, embedded or through the daemon, give one execution."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import racer_answer, racers, racers_finish, racers_ready, release_barrier, types_of

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


def race(args_for, log_dir: Path, n: int = 100) -> tuple[list[dict], list[dict]]:
    with racers("agent_racer.py", n, args_for, log_dir) as procs:
        release_barrier(procs)
        one_key = [racer_answer(p, i, log_dir) for i, p in enumerate(procs)]
        racers_ready(procs)
        release_barrier(procs)
        ten_keys = [racer_answer(p, i, log_dir) for i, p in enumerate(procs)]
        racers_finish(procs, log_dir)
    return one_key, ten_keys


def check_race(one_key: list[dict], ten_keys: list[dict]) -> tuple[int, dict[str, int]]:
    """Exactly one execution and one created:true per key; returns the ids."""
    errors = [r for r in one_key + ten_keys if "error" in r]
    assert not errors, errors[:3]
    assert len({r["id"] for r in one_key}) == 1
    winners = [r for r in one_key if r["created"]]
    assert len(winners) == 1, winners
    assert winners[0]["claimed"] and winners[0]["has_token"] and winners[0]["status"] == "running"
    for r in one_key:
        if not r["created"]:
            # The winner holds it under a live lease: reported as is, no token.
            assert (r["claimed"], r["has_token"], r["status"]) == (False, False, "running"), r
            assert r["fence"] == winners[0]["fence"]
    one = one_key[0]["id"]

    by_key: dict[str, set[int]] = {}
    created: Counter = Counter()
    for i, r in enumerate(ten_keys):
        key = f"k{i % 10}"
        by_key.setdefault(key, set()).add(r["id"])
        created[key] += r["created"]
        assert r["claimed"] == r["created"] == r["has_token"], r
    assert all(len(ids) == 1 for ids in by_key.values()), by_key
    assert created == Counter({f"k{j}": 1 for j in range(10)})
    ids = {k: next(iter(v)) for k, v in by_key.items()}
    assert len(set(ids.values())) == 10 and one not in ids.values()
    return one, ids


def check_executions(api, goal_id: int, one: int, ids: dict[str, int]) -> None:
    """The file holds exactly these 11 executions, each submitted and claimed once."""
    execs = api.list_tasks(kind="tool_execution", limit=0)
    assert sorted(e["id"] for e in execs) == sorted([one, *ids.values()])
    keys = {e["id"]: e["key"] for e in execs}
    assert keys[one] == "the-one" and all(keys[v] == k for k, v in ids.items())
    for e in execs:
        assert e["parent_id"] == goal_id and e["queue"] == f"goal:{goal_id}"
        assert (e["status"], e["attempts"], e["effect"]) == ("running", 1, "unsafe")
        assert Counter(types_of(api, e["id"])) == Counter({"submitted": 1, "claimed": 1})


def again(api, goal: dict, one: int, ids: dict[str, int]) -> None:
    """The same calls once more: the same ids, created False, nothing run again."""
    for key, want in [("the-one", one), *ids.items()]:
        r = api.execute_tool_idempotent(goal["id"], goal["token"], "search", {"q": key},
                                        key=key)
        assert (r["id"], r["created"], r["claimed"], r["status"]) == \
            (want, False, False, "running"), r
        assert "token" not in r


@pytest.mark.slow
def test_hundred_processes_one_key_through_the_daemon_and_after_a_restart(start_daemon,
                                                                          tmp_path):
    d = start_daemon()
    with d.client() as c:
        s = c.start_session("racing-agent", ttl=600)
        g = c.create_goal(s["id"], s["token"], ttl=600)
    t0 = time.monotonic()
    one_key, ten_keys = race(lambda i: ["daemon", str(d.sock), str(g["id"]), g["token"],
                                        str(i)], tmp_path)
    assert time.monotonic() - t0 < 30
    one, ids = check_race(one_key, ten_keys)
    with d.client() as c:
        check_executions(c, g["id"], one, ids)

    assert d.stop() == 0
    d2 = start_daemon(db=d.db, sock=d.sock)  # the same files
    with d2.client() as c:
        again(c, g, one, ids)
        check_executions(c, g["id"], one, ids)
    assert d2.stop() == 0
    with Orchestrator(d.db) as o:
        report = o.doctor()
        assert report["ok"], report["problems"]


@pytest.mark.slow
def test_hundred_processes_one_key_embedded(db_path, tmp_path):
    with Orchestrator(db_path) as o:
        s = o.start_session("racing-agent", ttl=600)
        g = o.create_goal(s["id"], s["token"], ttl=600)
    t0 = time.monotonic()
    one_key, ten_keys = race(lambda i: ["embedded", str(db_path), str(g["id"]), g["token"],
                                        str(i)], tmp_path)
    assert time.monotonic() - t0 < 30
    one, ids = check_race(one_key, ten_keys)
    with Orchestrator(db_path) as o:  # a fresh process-side handle on the file
        check_executions(o, g["id"], one, ids)
        again(o, g, one, ids)
        check_executions(o, g["id"], one, ids)
        report = o.doctor()
        assert report["ok"], report["problems"]
