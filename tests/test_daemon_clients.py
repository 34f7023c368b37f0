"""Clients that misbehave do not hurt the daemon or anyone else: a client stalled
mid-line is dropped, clients that vanish mid-call or mid-wait cost nothing (not even an
item), hundreds of idle connections do not slow a worker, a client that never reads its
answers is not buffered for, blank lines sent ahead do not wedge a connection."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import db_rows, doctor_ok
from helpers.daemon_wire import Raw, serves

from orchestrator import protocol


def test_client_stalled_mid_line_is_dropped_others_served(start_daemon):
    d = start_daemon("--line-timeout", "0.5")
    stalled = Raw(d.sock)
    stalled.send(b'{"jsonrpc": "2.0", "id": 1, "method": "submitTask", "params": {"qu')
    t0 = time.monotonic()
    with Raw(d.sock) as other:
        assert other.result("ping")["pong"] is True
        assert time.monotonic() - t0 < 0.4  # served while the other stalls
        for i in range(5):
            assert other.result("submitTask", {"queue": "ok", "key": f"o{i}"})["created"]
        assert stalled.closed_by_peer(5)
        waited = time.monotonic() - t0
        assert 0.45 <= waited < 3, waited
        assert other.result("ping")["pong"] is True
    stalled.close()
    # an idle connection (nothing half-sent) is not dropped
    with Raw(d.sock) as idle:
        assert not idle.closed_by_peer(1.5)
        assert idle.result("ping")["pong"] is True
    assert db_rows(d.db, "SELECT count(*) FROM items WHERE queue != 'ok'") == [(0,)]


def test_clients_vanishing_mid_call_do_not_hurt(start_daemon):
    d = start_daemon()
    for i in range(30):
        with Raw(d.sock) as r:
            r.send_json({"jsonrpc": "2.0", "id": i, "method": "submitTask",
                         "params": {"queue": "gone", "key": f"g{i}"}})
            if i % 3 == 0:  # a batch, and a parked claim, abandoned too
                r.send_json([{"jsonrpc": "2.0", "id": n, "method": "listTasks",
                              "params": {"limit": 0}} for n in range(20)])
                r.send_json({"jsonrpc": "2.0", "id": "p", "method": "claimTask",
                             "params": {"worker_id": "ghost", "queues": ["nothing"],
                                        "wait": 1}})
        # closed at once, without reading anything
    with Raw(d.sock) as r:
        assert r.result("ping")["pong"] is True
        assert r.result("submitTask", {"queue": "live"})["created"]
    keys = [k for (k,) in db_rows(d.db, "SELECT key FROM items WHERE queue='gone'")]
    assert len(keys) == len(set(keys)) <= 30  # carried out or not, never twice
    assert serves(d.sock)
    doctor_ok(d.db)


def test_vanished_long_poller_does_not_swallow_an_item(start_daemon):
    """A parked claim whose client has gone must not take the next item: nobody would
    ever hold it, and it would sit running until its lease ran out, an attempt burnt."""
    d = start_daemon()
    with Raw(d.sock) as ghost:
        ghost.send_json({"jsonrpc": "2.0", "id": 1, "method": "claimTask",
                         "params": {"worker_id": "ghost", "queues": ["gq"], "wait": 20,
                                    "ttl": 60}})
        time.sleep(0.2)  # parked
    time.sleep(0.2)  # and gone
    with Raw(d.sock) as live, Raw(d.sock) as feeder:
        live.send_json({"jsonrpc": "2.0", "id": 2, "method": "claimTask",
                        "params": {"worker_id": "live", "queues": ["gq"], "wait": 2,
                                   "ttl": 60}})
        time.sleep(0.2)
        item = feeder.result("submitTask", {"queue": "gq"})
        got = live.reply(timeout=10)["result"]
    assert got is not None, "the vanished client's parked claim took the item"
    assert got["id"] == item["id"] and got["attempt"] == 1


def test_300_idle_connections_while_another_client_works(start_daemon):
    d = start_daemon()
    idle = []
    try:
        for _ in range(300):
            idle.append(Raw(d.sock, timeout=5))
        with Raw(d.sock) as w:
            for i in range(20):
                t = time.monotonic()
                w.result("submitTask", {"queue": "busy", "key": f"b{i}"})
                c = w.result("claimTask", {"worker_id": "busy", "queues": ["busy"]})
                w.result("releaseTask", {"item_id": c["id"], "token": c["token"],
                                         "outcome": "succeeded"})
                assert time.monotonic() - t < 1.0
        for r in idle[::50]:  # the idle ones are still served
            assert r.result("ping")["pong"] is True
    finally:
        for r in idle:
            r.close()
    assert db_rows(d.db, "SELECT status, count(*) FROM items GROUP BY status") == \
        [("succeeded", 20)]
    assert serves(d.sock)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_a_client_that_never_reads_its_answers_is_not_buffered_for(start_daemon):
    d = start_daemon()
    with Raw(d.sock) as w:
        w.result("submitMany", {"items": [{"payload": "x" * 200_000} for _ in range(20)]})
    before = _rss_mb(d.proc.pid)
    with Raw(d.sock) as greedy:
        request = protocol.encode({"jsonrpc": "2.0", "id": 1, "method": "listTasks"})
        greedy.sock.setblocking(False)
        sent, data, t = 0, request * 400, time.monotonic()  # 400 answers of 4 MB each
        while sent < len(data) and time.monotonic() - t < 10:
            try:
                sent += greedy.sock.send(data[sent:])
            except BlockingIOError:
                time.sleep(0.01)
        time.sleep(2)
        assert _rss_mb(d.proc.pid) - before < 150  # not 400 x 4 MB of answers held
        assert serves(d.sock)  # and everyone else is served meanwhile


def test_blank_lines_sent_ahead_do_not_wedge_a_connection(start_daemon):
    d = start_daemon()
    with Raw(d.sock, timeout=30) as r:
        r.send_json({"jsonrpc": "2.0", "id": 1, "method": "claimTask",
                     "params": {"worker_id": "w", "queues": ["none"], "wait": 1}})
        r.sock.setblocking(False)
        blank, sent, t = b"\n" * (9 << 20), 0, time.monotonic()  # past the read pause
        while sent < len(blank) and time.monotonic() - t < 10:
            try:
                sent += r.sock.send(blank[sent:sent + (1 << 20)])
            except BlockingIOError:
                time.sleep(0.01)
        r.sock.setblocking(True)
        assert r.reply(timeout=10) == {"jsonrpc": "2.0", "id": 1, "result": None}
        assert r.result("ping", timeout=10)["pong"] is True
