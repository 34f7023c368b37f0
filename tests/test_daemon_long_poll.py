"""Long-poll claims (``wait``): a parked claim returns as soon as an item is claimable
(submitted, due after a delay, recovered, or written by another process straight into
the file), only one of several parked workers gets it, and the others return empty when
their own wait ends; release_and_claim parks only its claim."""

from __future__ import annotations

import threading
import time

from conftest import db_rows
from helpers.daemon_wire import Raw, claim_in_thread

from orchestrator import Orchestrator


def test_parked_claim_returns_promptly_on_submit(start_daemon):
    d = start_daemon()
    got: list = []
    th = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["lp"], "wait": 10}, got)
    time.sleep(0.4)
    assert not got  # parked, not answered
    with Raw(d.sock) as r:
        submitted_at = time.monotonic()
        item = r.result("submitTask", {"queue": "lp"})
    th.join(5)
    assert got, "the parked claim did not return"
    returned_at, took, reply = got[0]
    assert reply["result"]["id"] == item["id"]
    assert returned_at - submitted_at < 3 and took < 3.5


def test_release_and_claim_parks_only_its_claim(start_daemon):
    d = start_daemon()
    with Raw(d.sock) as r:
        r.result("submitTask", {"queue": "rp"})
        c = r.result("claimTask", {"worker_id": "w", "queues": ["rp"]})
    got: list = []

    def run():
        with Raw(d.sock, timeout=60) as r:
            got.append(r.call("releaseAndClaim", {"item_id": c["id"], "token": c["token"],
                                                  "outcome": "succeeded", "wait": 10}))
    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.4)
    assert not got  # parked
    assert db_rows(d.db, "SELECT status FROM items WHERE id = ?", (c["id"],)) == [("succeeded",)]
    with Raw(d.sock) as r:
        item = r.result("submitTask", {"queue": "rp"})
    th.join(5)
    assert got and got[0]["result"]["next"]["id"] == item["id"]
    assert got[0]["result"]["released"]["id"] == c["id"]


def test_five_parked_workers_one_item(start_daemon):
    d = start_daemon()
    got: list = []
    threads = [claim_in_thread(d.sock, {"worker_id": f"w{i}", "queues": ["five"],
                                        "wait": 1.5}, got) for i in range(5)]
    time.sleep(0.3)
    with Raw(d.sock) as r:
        item = r.result("submitTask", {"queue": "five"})
    for th in threads:
        th.join(10)
    assert len(got) == 5
    winners = [reply["result"] for _, _, reply in got if reply["result"] is not None]
    assert len(winners) == 1 and winners[0]["id"] == item["id"]
    losers = [took for _, took, reply in got if reply["result"] is None]
    assert len(losers) == 4
    assert all(1.3 <= took < 4 for took in losers), losers  # when their own wait ended
    assert db_rows(d.db, "SELECT attempts FROM items") == [(1,)]


def test_delayed_item_wakes_a_parked_claim_when_due(start_daemon):
    d = start_daemon()
    got: list = []
    th = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["later"], "wait": 4}, got)
    time.sleep(0.3)
    with Raw(d.sock) as r:
        submitted_at = time.monotonic()
        item = r.result("submitTask", {"queue": "later", "delay": 1})
    th.join(10)
    returned_at, _, reply = got[0]
    assert reply["result"]["id"] == item["id"]
    assert 0.9 <= returned_at - submitted_at < 2.5, returned_at - submitted_at
    # and the other way round: the delayed item exists first, then the claim parks
    with Raw(d.sock) as r:
        r.result("submitTask", {"queue": "later2", "delay": 1})
        t = time.monotonic()
        c = r.result("claimTask", {"worker_id": "w", "queues": ["later2"], "wait": 8})
        assert c is not None and 0.85 <= time.monotonic() - t < 2.5


def test_parked_claim_wakes_on_recovery_and_on_embedded_writes(start_daemon):
    d = start_daemon()
    with Raw(d.sock) as r:
        r.result("submitTask", {"queue": "rq"})
        dead = r.result("claimTask", {"worker_id": "dies", "queues": ["rq"], "ttl": 0.2})
    got: list = []
    th = claim_in_thread(d.sock, {"worker_id": "heir", "queues": ["rq"], "wait": 8}, got)
    th.join(10)
    _, took, reply = got[0]
    assert reply["result"]["id"] == dead["id"] and reply["result"]["attempt"] == 2
    assert took < 4, took  # lease 0.2 s, a recovery pass, backoff <= 1 s
    # a submit by another process, straight into the file (embedded mode)
    got.clear()
    th = claim_in_thread(d.sock, {"worker_id": "w", "queues": ["emb"], "wait": 8}, got)
    time.sleep(0.3)
    with Orchestrator(d.db) as o:
        submitted_at = time.monotonic()
        item = o.submit_task({"from": "embedded"}, queue="emb")
    th.join(10)
    returned_at, _, reply = got[0]
    assert reply["result"]["id"] == item["id"]
    assert returned_at - submitted_at < 3
