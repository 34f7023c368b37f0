"""Races between real processes on one PostgreSQL database, released at once: some
embedded (a connection each), some through daemons, so that transactions from
separate connections meet on one row or one key: 100 processes racing for one item
give one winner; one tool key gives one execution; one submit key gives one item.

The server's connection limit (100 by default, shared with whatever else runs) is why
not every racer has a connection of its own: a daemon serves many through a few.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from collections import Counter

import psycopg
import pytest
from conftest import racer_answer, racers, racers_finish, racers_ready, release_barrier
from test_races import again, check_executions, check_race, race

from orchestrator import Orchestrator, validate
from orchestrator.operations import OPERATIONS

pytestmark = pytest.mark.slow


def test_hundred_processes_embedded_and_through_two_daemons_race_for_one_item(
        pg_schemas, start_daemon, short_tmp, tmp_path):
    url = pg_schemas.url()
    with Orchestrator(url) as o:
        first = o.submit_task({"the": "one"})["id"]
        second = o.submit_task({"the": "other"}, queue="elsewhere")["id"]
    a = start_daemon(db=url, sock=short_tmp / "a.sock")
    b = start_daemon(db=url, sock=short_tmp / "b.sock")
    routes = [url] * 40 + [f"daemon:{a.sock}"] * 30 + [f"daemon:{b.sock}"] * 30
    n = len(routes)

    with racers("race_worker.py", n, lambda i: [routes[i], f"r{i}", "one", str(second)],
                tmp_path) as procs:
        release_barrier(procs)  # race 1: claim from the default queue, which holds one item
        phase1 = [racer_answer(p, i, tmp_path) for i, p in enumerate(procs)]
        racers_ready(procs)
        release_barrier(procs)  # race 2: every process claims the other item by id
        phase2 = [racer_answer(p, i, tmp_path) for i, p in enumerate(procs)]
        racers_finish(procs, tmp_path)

    winners1 = [(i, r["claim"]) for i, r in enumerate(phase1) if r["claim"] is not None]
    assert len(winners1) == 1, winners1
    w1, (item1, fence1) = winners1[0]
    assert item1 == first
    winners2 = [(i, r["claim"]) for i, r in enumerate(phase2) if "claim" in r]
    assert len(winners2) == 1, winners2
    assert Counter(r.get("error") for r in phase2 if "error" in r) == {"Conflict": n - 1}
    w2, (item2, fence2) = winners2[0]
    assert item2 == second and fence2 != fence1

    with Orchestrator(url) as o:
        row1, row2 = o.get_task(first), o.get_task(second)
        assert (row1["status"], row1["worker_id"], row1["fence"], row1["attempts"]) == \
            ("running", f"r{w1}", fence1, 1)
        assert (row2["status"], row2["worker_id"], row2["fence"], row2["attempts"]) == \
            ("running", f"r{w2}", fence2, 1)
        claimed = [e for e in o.list_events(limit=0) if e["type"] == "claimed"]
        assert sorted((e["item_id"], e["worker_id"]) for e in claimed) == \
            sorted([(first, f"r{w1}"), (second, f"r{w2}")])
        report = o.doctor()
        assert report["ok"], report["problems"]


def test_thirty_processes_one_tool_key_embedded_and_through_a_daemon(pg_schemas, start_daemon,
                                                                    tmp_path):
    url = pg_schemas.url()
    with Orchestrator(url) as o:
        s = o.start_session("racing-agent", ttl=600)
        g = o.create_goal(s["id"], s["token"], ttl=600)
    d = start_daemon(db=url)
    one_key, ten_keys = race(
        lambda i: ["embedded", url, str(g["id"]), g["token"], str(i)] if i % 2 else
        ["daemon", str(d.sock), str(g["id"]), g["token"], str(i)], tmp_path, n=30)
    one, ids = check_race(one_key, ten_keys)
    with Orchestrator(url) as o:
        check_executions(o, g["id"], one, ids)
        again(o, g, one, ids)
    with d.client() as c:
        again(c, g, one, ids)
        check_executions(c, g["id"], one, ids)
    with Orchestrator(url) as o:
        report = o.doctor()
        assert report["ok"], report["problems"]


def test_twelve_submits_of_one_key_make_one_item(pg_schemas, start_daemon):
    url = pg_schemas.url()
    d = start_daemon(db=url)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--db", url,
         *(["--socket", str(d.sock)] if i % 2 else []),  # without: no daemon, embedded
         "submit", "--json", "--key", "K", "--payload", json.dumps({"by": i})],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(12)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 12, [err for _, err in outs]
    items = [json.loads(out) for out, _ in outs]
    assert len({i["id"] for i in items}) == 1
    assert sum(i["created"] for i in items) == 1
    with Orchestrator(url) as o:
        assert [i["id"] for i in o.list_tasks(limit=0)] == [items[0]["id"]]
        assert [e["type"] for e in o.list_events(limit=0)] == ["submitted"]


def test_a_key_inserted_by_two_transactions_at_once_is_retried_into_one_item(pg_schemas):
    """The second INSERT of a key waits for the first transaction, which commits: the
    server fails it as a duplicate key, and the store runs the submit again, which finds
    the item."""
    url = pg_schemas.url()
    app = f"orch_t_{secrets.token_hex(4)}"
    fn, _ = OPERATIONS["submit_task"]
    kwargs = validate.check("submit_task", {"payload": {"by": "first"}, "key": "K"})
    inserted, commit, first = threading.Event(), threading.Event(), []

    def hold(tx):
        out = fn(tx, tx.now(), **kwargs)
        inserted.set()
        deadline = time.monotonic() + 60  # a hang guard (processes start slowly)
        while not commit.is_set() and time.monotonic() < deadline:
            # Busy, not idle: the server ends a transaction left idle for a few seconds.
            tx.conn.execute("SELECT pg_sleep(0.05)")
        return out

    with Orchestrator(url) as o:
        holder = threading.Thread(target=lambda: first.append(o.store.write(hold)))
        holder.start()
        assert inserted.wait(30)
        second = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "--db", f"{url}&application_name={app}",
             "submit", "--json", "--key", "K", "--payload", '{"by": "second"}'],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with psycopg.connect(url, autocommit=True) as conn:  # a fresh look at each query
            deadline = time.monotonic() + 60  # a hang guard (processes start slowly)
            while not conn.execute("SELECT 1 FROM pg_stat_activity WHERE application_name = %s "
                                   "AND wait_event_type = 'Lock'", (app,)).fetchone():
                assert time.monotonic() < deadline, "the second submit never waited"
                time.sleep(0.02)
        commit.set()
        holder.join(30)
        out, err = second.communicate(timeout=30)
        assert second.returncode == 0, err
        got = json.loads(out)
        assert first[0]["created"] and (got["id"], got["created"]) == (first[0]["id"], False)
        assert got["payload"] == {"by": "first"}
        assert [e["type"] for e in o.list_events(limit=0)] == ["submitted"]
