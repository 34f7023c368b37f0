"""kill -9: a holder that dies loses its lease and is fenced out for good; the file
survives writers killed mid-burst; a daemon killed under load keeps every submit it
acknowledged, and its clients learn that an unanswered call's outcome is unknown."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import apsw
import pytest
from conftest import HELPERS, db_rows, doctor_ok, kill9, orch_process, reap, spawn
from helpers.daemon_wire import serves, wait_until

from orchestrator import LeaseLost, Orchestrator
from orchestrator.clock import now_ms
from orchestrator.errors import OutcomeUnknown


def integrity(db: Path) -> list:
    conn = apsw.Connection(str(db))
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


@pytest.fixture
def dead_holder(db_path, tmp_path):
    """An idempotent and an unsafe item claimed (ttl 1 s) by a process that was SIGKILLed;
    returns (safe_id, unsafe_id, {item_id: claim}) once both leases have expired."""
    with Orchestrator(db_path) as o:
        safe = o.submit_task({"job": "safe"})["id"]
        unsafe = o.submit_task({"job": "unsafe"}, effect="unsafe")["id"]
    p = spawn("crash_holder.py", str(db_path), "1", str(safe), str(unsafe),
              log=tmp_path / "holder.err")
    try:
        line = p.stdout.readline()
        assert line, (tmp_path / "holder.err").read_text()
        claims = {c["id"]: c for c in json.loads(line)}
    finally:
        kill9(p)
    assert set(claims) == {safe, unsafe}
    for c in claims.values():
        assert c["worker_id"] == "doomed" and c["token"] and c["fence"] > 0
        assert c["lease_expires_at"] <= now_ms() + 1100  # a 1 s lease
    # Wait until both leases are over.
    end = max(c["lease_expires_at"] for c in claims.values())
    time.sleep(max(0, end - now_ms()) / 1000 + 0.1)
    assert now_ms() > end
    return safe, unsafe, claims


@pytest.mark.slow
def test_killed_holder_is_recovered_and_fenced_out(db_path, dead_holder):
    safe, unsafe, claims = dead_holder
    old_fences = {i: c["fence"] for i, c in claims.items()}
    with Orchestrator(db_path) as o:
        # Expired but not yet recovered: still "running", yet the token is dead already
        # and an expired lease cannot be revived by a heartbeat.
        for item_id, c in claims.items():
            assert o.get_task(item_id)["status"] == "running"
            assert o.verify(item_id, c["token"])["valid"] is False
            with pytest.raises(LeaseLost):
                o.heartbeat(item_id, c["token"], ttl=60)
        assert {x["id"] for x in o.status()["expired_leases"]} == {safe, unsafe}
        assert all(o.get_task(i)["lease_expires_at"] == c["lease_expires_at"]
                   for i, c in claims.items())

        # Recovery: idempotent -> pending, unsafe -> unknown.
        r = o.stale_recovery()
        got = {x["id"]: x for x in r["recovered"]}
        assert set(got) == {safe, unsafe} and r["count"] == 2
        assert got[safe]["status"] == "pending" and got[unsafe]["status"] == "unknown"
        assert got[safe]["worker_id"] == "doomed" and got[safe]["fence"] == old_fences[safe]
        assert o.get_task(safe)["status"] == "pending"
        assert o.get_task(unsafe)["status"] == "unknown"
        expired = [e for e in o.list_events(limit=0) if e["type"] == "expired"]
        assert sorted(e["item_id"] for e in expired) == sorted([safe, unsafe])

        # Running it again does nothing.
        n_events = len(o.list_events(limit=0))
        r2 = o.stale_recovery()
        assert r2["count"] == 0 and r2["recovered"] == []
        assert len(o.list_events(limit=0)) == n_events

        # The dead holder's token is rejected everywhere and changes nothing.
        before = {i: o.get_task(i) for i in claims}
        for item_id, c in claims.items():
            tok = c["token"]
            with pytest.raises(LeaseLost):
                o.heartbeat(item_id, tok)
            with pytest.raises(LeaseLost):
                o.release_task(item_id, tok, "succeeded", result={"late": True})
            with pytest.raises(LeaseLost):
                o.checkpoint(item_id, tok, {"late": True})
            v = o.verify(item_id, tok)
            assert v["valid"] is False and v["status"] == before[item_id]["status"]
        assert {i: o.get_task(i) for i in claims} == before
        assert len(o.list_events(limit=0)) == n_events

    # ... and through the CLI, in another process: exit 4.
    for item_id, c in claims.items():
        tok = c["token"]
        for args in (["heartbeat", str(item_id), "--token", tok],
                     ["release", str(item_id), "--token", tok, "--outcome", "succeeded"],
                     ["checkpoint", str(item_id), "--token", tok, "--data", "{}"],
                     ["verify", str(item_id), "--token", tok]):
            p = orch_process(*args, db=db_path)
            assert p.returncode == 4, (args, p.returncode, p.stdout, p.stderr)
            if args[0] != "verify":
                assert p.stderr.startswith("orch: error: ") and \
                    len(p.stderr.strip().splitlines()) == 1, p.stderr

    with Orchestrator(db_path) as o:
        assert {i: o.get_task(i) for i in claims} == before
        assert len(o.list_events(limit=0)) == n_events
        # A new holder gets a strictly larger fence, and the last checkpoint.
        c2 = o.claim_task("phoenix", ttl=30, item_id=safe)
        assert c2["fence"] > max(old_fences.values())
        assert c2["attempt"] == 2
        assert c2["checkpoint"] == {"step": 3, "item": safe}
        assert o.verify(safe, c2["token"])["valid"] is True
        with pytest.raises(LeaseLost):  # the old token stays dead under the new claim
            o.heartbeat(safe, claims[safe]["token"])
        # The unsafe item is never handed out again by a plain claim.
        assert o.claim_task("phoenix", ttl=30) is None
        assert o.get_task(unsafe)["status"] == "unknown"
        o.release_task(safe, c2["token"], "succeeded")
        fence_after = c2["fence"]
        new_item = o.submit_task({"after": "reopen"})["id"]
        report = o.doctor()
        assert report["ok"], report["problems"]

    # Closed and reopened, by a new Orchestrator and by a new process: fences go on up.
    with Orchestrator(db_path) as o:
        o.resolve_task(unsafe, "retry")
        c3 = o.claim_task("reopened", ttl=30, item_id=unsafe)
        assert c3["fence"] > fence_after
        o.release_task(unsafe, c3["token"], "succeeded")
    p = orch_process("claim", "--worker", "other-process", "--ttl", "30", db=db_path)
    assert p.returncode == 0, p.stderr
    c4 = json.loads(p.stdout)
    assert c4["id"] == new_item and c4["fence"] > c3["fence"]
    with Orchestrator(db_path) as o:
        report = o.doctor()
        assert report["ok"], report["problems"]


@pytest.mark.slow
def test_killed_holder_is_taken_over_before_recovery(db_path, dead_holder):
    safe, _unsafe, claims = dead_holder
    old = claims[safe]
    with Orchestrator(db_path) as o:
        c = o.claim_task("successor", ttl=30, item_id=safe)
        assert c["fence"] > max(x["fence"] for x in claims.values())
        assert c["worker_id"] == "successor" and c["checkpoint"] == {"step": 3, "item": safe}
        with pytest.raises(LeaseLost):
            o.release_task(safe, old["token"], "succeeded")
        assert o.verify(safe, old["token"])["valid"] is False
        assert o.verify(safe, c["token"])["valid"] is True
        taken = [e for e in o.list_events(item_id=safe) if e["type"] == "taken_over"]
        assert len(taken) == 1
        # Recovery later leaves the new holder alone.
        r = o.stale_recovery()
        assert safe not in {x["id"] for x in r["recovered"]}
        assert o.get_task(safe)["worker_id"] == "successor"
        o.release_task(safe, c["token"], "succeeded")
        report = o.doctor()
        assert report["ok"], report["problems"]


@pytest.mark.slow
def test_kill_minus_nine_mid_burst_leaves_a_sound_file(db_path, tmp_path):
    with Orchestrator(db_path) as o:
        o.submit_task({"seed": True})
    rng = random.Random(os.getpid())
    survived_at_least = 0
    max_fence_seen = 0
    for round_ in range(4):
        writers = [spawn("burst_writer.py", str(db_path), f"burst{round_}x{k}",
                         log=tmp_path / f"burst-{round_}-{k}.err") for k in range(2)]
        counts = [0, 0]
        try:
            # Let them get going, then kill each at an arbitrary point of its loop.
            for k, w in enumerate(writers):
                for _ in range(30 + rng.randrange(40)):
                    line = w.stdout.readline()
                    assert line, (tmp_path / f"burst-{round_}-{k}.err").read_text()
                    counts[k] = int(line)
            time.sleep(rng.random() * 0.2)
        finally:
            for w in writers:
                kill9(w)
        survived_at_least += sum(counts)

        # The file opens (recovering the WAL), and is sound.
        assert integrity(db_path) == [("ok",)]
        with Orchestrator(db_path) as o:
            report = o.doctor()
            assert report["ok"], report["problems"]
            # Every release a writer reported as done is still there.
            assert o.status()["counts"]["succeeded"] >= survived_at_least
            fence = o.status()["fence"]
            assert fence > max_fence_seen
            max_fence_seen = fence

    # After the crashes, claims still get fresh, larger fences.
    with Orchestrator(db_path) as o:
        items = o.list_tasks(limit=0)
        assert max(i["fence"] or 0 for i in items) <= max_fence_seen
        c = o.claim_task("after-crash", ttl=30)
        assert c is not None and c["fence"] > max_fence_seen
    assert integrity(db_path) == [("ok",)]
    p = orch_process("doctor", db=db_path)
    assert p.returncode == 0, p.stdout + p.stderr


def test_kill_9_under_load_keeps_every_acknowledged_submit(start_daemon, short_tmp):
    d = start_daemon()
    outs = [short_tmp / f"load{i}.txt" for i in range(4)]
    procs = [subprocess.Popen([sys.executable, str(HELPERS / "daemon_load_client.py"),
                               str(d.sock), f"c{i}", str(out)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for i, out in enumerate(outs)]
    try:
        def acked(out: Path) -> int:
            return out.read_text().count("ack ") if out.exists() else 0
        assert wait_until(lambda: all(acked(o) >= 30 for o in outs), 30)
        d.kill()
        for p in procs:
            _, err = p.communicate(timeout=30)
            assert p.returncode == 0, err
    finally:
        for p in procs:
            reap(p)
    assert d.sock.exists()  # left behind by the dead daemon
    acks: dict[str, int] = {}
    fences: list[int] = []
    unknown: set[str] = set()
    for out in outs:
        for line in out.read_text().splitlines():
            word, *rest = line.split()
            if word == "ack":
                acks[rest[0]] = int(rest[1])
            elif word == "fence":
                fences.append(int(rest[0]))
            else:
                unknown.add(rest[0])
    assert len(acks) >= 120 and fences
    assert len(fences) == len(set(fences))  # no fence handed out twice

    d2 = start_daemon(db=d.db, sock=d.sock)  # the stale socket is no obstacle
    keys = Counter(k for (k,) in db_rows(d.db, "SELECT key FROM items WHERE queue='load'"))
    by_key = dict(db_rows(d.db, "SELECT key, id FROM items WHERE queue='load'"))
    for key, item_id in acks.items():
        assert keys[key] == 1, key
        assert by_key[key] == item_id
    assert set(keys) <= set(acks) | unknown  # nothing appeared that nobody asked for
    doctor_ok(d.db)
    max_fence_in_file = db_rows(d.db, "SELECT max(fence) FROM items")[0][0]
    with d2.client() as c:
        c.submit_task({"after": "restart"}, queue="after")
        claim = c.claim_task("after", ["after"])
    assert claim["fence"] > max(fences) and claim["fence"] > max_fence_in_file
    assert serves(d2.sock)


def test_daemon_killed_mid_call(start_daemon):
    """The client cannot know whether a call whose connection died ran: OutcomeUnknown,
    and exit 7 from the CLI (daemon gone mid-call)."""
    d = start_daemon()
    seen: list[BaseException] = []

    def parked():
        with d.client(timeout=5) as c:
            try:
                c.claim_task("w", ["void"], wait=20)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                seen.append(exc)

    t = threading.Thread(target=parked)
    t.start()
    cli = subprocess.Popen([sys.executable, "-m", "orchestrator", "--socket", str(d.sock),
                            "--db", str(d.db), "claim", "--worker", "cli", "--queue", "void",
                            "--wait", "20"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    time.sleep(1.0)  # both parked in the daemon
    d.kill()
    t.join(10)
    out, err = cli.communicate(timeout=15)
    assert seen and isinstance(seen[0], OutcomeUnknown), seen
    assert cli.returncode == 7, (out, err)
    assert err.startswith("orch: error:")
