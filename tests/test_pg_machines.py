"""Two machines on one PostgreSQL database, simulated: two ``orch daemon`` processes, each
with its own OPENCLAW_HOME and socket, on one URL (a schema of the test server's own),
and the agents, claimers and followers around them as real processes.

A machine that dies hands its session to the other; a machine cut off from the server
loses its leases to the other and comes back fenced out; claimers on both race for the
same items; followers miss no event while several processes write; a claim parked on
one machine wakes when the other submits; a client whose clock is off can neither
steal a live lease nor keep a dead one. Every lease is judged by the server's clock:
the waits here sleep until the server's clock has passed a lease's end.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

import psycopg
import pytest
from conftest import (
    doctor_ok,
    kill9,
    orch_process,
    racer_answer,
    racers,
    racers_finish,
    reap,
    release_barrier,
    spawn,
)
from freezegun import freeze_time
from helpers.tcp_proxy import TcpProxy

from orchestrator import Conflict, LeaseLost, Orchestrator
from orchestrator.client import Client
from orchestrator.clock import now_ms

pytestmark = pytest.mark.slow


class Machine:
    """One simulated machine: a home of its own, its daemon on ``db`` and its socket.

    ``orch(...)`` runs the CLI as a process of this machine, through its daemon only:
    it is given no --db, so with its daemon gone it would open an empty SQLite file in
    this machine's home and fail there, never reach the shared database another way.
    """

    def __init__(self, name: str, db: str, root: Path, start_daemon):
        self.name, self.db = name, db
        self.home = root / name / "home"
        self.sock = root / name / "orch.sock"
        self.daemon = start_daemon(db=db, sock=self.sock,
                                   wrap=("env", f"OPENCLAW_HOME={self.home}"))
        self.env = {"OPENCLAW_HOME": str(self.home), "ORCH_SOCKET": str(self.sock)}

    def orch(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return orch_process(*args, env=self.env, timeout=timeout)

    def start(self, *args: str) -> subprocess.Popen:
        """``orch ARGS`` left running (text pipes for stdout and stderr)."""
        return subprocess.Popen([sys.executable, "-m", "orchestrator", *args],
                                env={**os.environ, **self.env}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def client(self) -> Client:
        return Client(self.sock, timeout=60, connect_within=2)


@pytest.fixture
def url(pg_schemas) -> str:
    return pg_schemas.url()


@pytest.fixture
def machine(pg_schemas, start_daemon, short_tmp):
    """machine(name, db) -> a Machine whose daemon runs until the test ends (the schemas
    are dropped after the daemons stop)."""
    return lambda name, db: Machine(name, db, short_tmp, start_daemon)


def server_now_ms(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint").fetchone()
    assert row is not None
    return int(row[0])


def sleep_past_on_server(url: str, ms: int) -> None:
    """Sleep until epoch milliseconds ``ms`` have passed by the server's clock."""
    deadline = time.monotonic() + 60
    while server_now_ms(url) <= ms:
        assert time.monotonic() < deadline, "the server's clock did not move"
        time.sleep(0.05)


def through(url: str, port: int, **params: object) -> str:
    """``url`` reaching the server through 127.0.0.1:``port``, with ``params`` added."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}"
    query = "&".join(q for q in (parts.query, urlencode(params)) if q)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def rows(url: str) -> dict:
    """Every row of the shared tables: equal before and after, nothing was written."""
    with psycopg.connect(url) as conn:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("items", "workers", "event_log")}


def log_of(url: str) -> list[dict]:
    with Orchestrator(url) as o:
        return o.list_events(limit=0)


def ran(p: subprocess.CompletedProcess, code: int = 0) -> subprocess.CompletedProcess:
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    return p


# --- a machine dies: its session goes on on the other -----------------------------------


def test_a_session_held_through_a_machine_that_dies_is_resumed_through_the_other(
        url, machine, tmp_path):
    a, b = machine("a", url), machine("b", url)
    agent = spawn("machine_agent.py", str(a.sock), "2", "nightly", log=tmp_path / "agent.err")
    line = agent.stdout.readline()
    if not line:
        reap(agent)
        pytest.fail((tmp_path / "agent.err").read_text())
    old = json.loads(line)
    s, g = old["session"], old["goal"]
    sid, gid = s["id"], g["id"]
    # Machine A goes down with its agent, mid-heartbeat: no goodbye from either.
    assert a.daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    kill9(agent)

    held = json.loads(ran(b.orch("show", str(sid), "--json")).stdout)
    resume = ("session", "resume", str(sid), "--worker", "agent-b", "--ttl", "60", "--json")
    r = b.orch(*resume)
    if held["status"] == "running":  # else recovered already: a slow machine
        assert held["worker_id"] == "agent-a"
        if r.returncode != 0:
            # The dead holder's lease is live by the server's clock: B may not take it.
            assert r.returncode == 6 and "agent-a" in r.stderr, r
            sleep_past_on_server(url, held["lease_expires_at"])
            r = b.orch(*resume)
        # Taken at or after the old lease's end by the server's clock.
        assert json.loads(ran(r).stdout)["lease_expires_at"] - 60_000 >= \
            held["lease_expires_at"]
    new = json.loads(ran(r).stdout)
    assert (new["id"], new["worker_id"]) == (sid, "agent-b")
    assert new["checkpoint"] == {"step": 2}  # the last one A's agent stored
    assert new["fence"] > max(s["fence"], g["fence"])

    # The old holder's later writes are refused, through B and embedded, and change
    # nothing.
    before = rows(url)
    for c in (s, g):
        i, t = str(c["id"]), c["token"]
        for args in (["heartbeat", i, "--token", t],
                     ["checkpoint", i, "--token", t, "--data", '{"stale": true}'],
                     ["release", i, "--token", t, "--outcome", "succeeded"],
                     ["verify", i, "--token", t]):
            p = ran(b.orch(*args), 4)
            if args[0] != "verify":
                assert p.stderr.startswith("orch: error: "), p
    ran(b.orch("goal", "add", "--session", str(sid), "--token", s["token"], "--key", "g2"), 4)
    with Orchestrator(url) as o:
        for c in (s, g):
            with pytest.raises(LeaseLost):
                o.heartbeat(c["id"], c["token"], ttl=60)
            with pytest.raises(LeaseLost):
                o.checkpoint(c["id"], c["token"], {"stale": True})
            with pytest.raises(LeaseLost):
                o.release_task(c["id"], c["token"], "succeeded")
    assert rows(url) == before

    # The new holder goes on through B: its goal back, the work finished.
    with b.client() as api:
        api.checkpoint(sid, new["token"], {"step": 3})
        g2 = api.create_goal(sid, new["token"], key="g1")
        assert (g2["id"], g2["worker_id"], g2["claimed"]) == (gid, "agent-b", True)
        assert g2["fence"] > new["fence"]
        api.release_task(gid, g2["token"], "succeeded")
        assert api.release_task(sid, new["token"], "succeeded")["status"] == "succeeded"

    events = json.loads(ran(b.orch("events", "--json")).stdout)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs))
    claims = [e for e in events if e["type"] == "claimed"]
    # Fences strictly increasing across both machines, each claim's above the last.
    fences = [e["fence"] for e in claims]
    assert fences == sorted(set(fences)), claims
    assert [(e["item_id"], e["worker_id"]) for e in claims] == [
        (sid, "agent-a"), (gid, "agent-a"), (sid, "agent-b"), (gid, "agent-b")]
    assert fences == [s["fence"], g["fence"], new["fence"], g2["fence"]]
    doctor_ok(url)


# --- a partition: B is cut off, A takes over, B comes back fenced out -------------------


def end_sessions(url: str, application_name: str) -> int:
    """The server ends every session of ``application_name``; how many it ended."""
    with psycopg.connect(url, autocommit=True) as conn:
        return len(conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE application_name = %s", (application_name,)).fetchall())


def waiting_for_a_lock(url: str, application_name: str) -> bool:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                           "AND wait_event_type = 'Lock'", (application_name,)).fetchone()
    return bool(row and row[0])


def test_a_partitioned_machine_loses_its_leases_and_comes_back_fenced_out(
        url, machine, tmp_path):
    server = urlsplit(url)
    with TcpProxy((server.hostname or "127.0.0.1", server.port or 5432)) as proxy:
        a = machine("a", url)
        b_name = f"orch-b-{secrets.token_hex(4)}"
        # Short libpq timeouts, as a user may set them: they bound new connections
        # during the stall (connect_timeout); keepalives and tcp_user_timeout cannot
        # fire through the proxy, whose kernel acknowledges what it holds.
        b = machine("b", through(url, proxy.port, application_name=b_name,
                                 connect_timeout=3, tcp_user_timeout=3000,
                                 keepalives_idle=1, keepalives_interval=1,
                                 keepalives_count=2))
        with a.client() as api_a:
            ids = [x["id"] for x in api_a.submit_many([{"payload": {"n": i}} for i in range(2)])]
        # B's agents claim the items, store progress and heartbeat (a short lease
        # now), through B.
        held = {}
        with b.client() as api_b:
            for n, item in enumerate(ids):
                held[item] = api_b.claim_task(f"b-agent-{n}", item_id=item, ttl=60)
                api_b.checkpoint(item, held[item]["token"], {"by": f"b-agent-{n}"})
            for item, c in held.items():
                c.update(api_b.heartbeat(item, c["token"], ttl=1.5))
        connections = proxy.connections

        first, second = ids
        # One request is on the wire when the link stalls: its transaction waits on
        # the server for a row lock the test holds.
        with psycopg.connect(url) as blocker:
            blocker.execute("SELECT 1 FROM items WHERE id = %s FOR UPDATE", (first,))
            on_the_wire = b.start("heartbeat", str(first), "--token", held[first]["token"])
            deadline = time.monotonic() + 30
            while not waiting_for_a_lock(url, b_name):
                assert on_the_wire.poll() is None, on_the_wire.communicate()
                assert time.monotonic() < deadline, "B's heartbeat never reached the server"
                time.sleep(0.02)
            proxy.stall()
            # Another is sent through B while its link is down.
            queued = b.start("release", str(second), "--token", held[second]["token"],
                             "--outcome", "succeeded")
            # In a long partition the server ends B's sessions (its idle-in-transaction
            # timeout and keepalives would); here it does so at once. What it sends B
            # waits in the proxy with everything else.
            assert end_sessions(url, b_name) >= 1
        # A takes both items over once B's leases are over by the server's clock.
        sleep_past_on_server(url, max(c["lease_expires_at"] for c in held.values()))
        with a.client() as api_a:
            taken = {item: api_a.claim_task("a-agent", item_id=item, ttl=60) for item in ids}
        for item, c in taken.items():
            assert c["worker_id"] == "a-agent" and c["fence"] > held[item]["fence"]
            assert c["checkpoint"] == {"by": held[item]["worker_id"]}  # B's progress kept
        # B's daemon still answers while it waits for the server.
        with Client(b.sock, timeout=10, connect_within=0) as c:
            assert c.ping()["pong"] is True

        proxy.heal()
        # The request on the wire failed with its connection, as unavailable: never
        # tried again behind the caller's back.
        _, err = on_the_wire.communicate(timeout=60)
        assert on_the_wire.returncode == 7, err
        assert err.startswith("orch: error: ") and "unavailable" in err, err
        # The one sent during the stall waited in B behind it, reached the server late
        # and was judged by its clock: A holds that item now.
        _, err = queued.communicate(timeout=60)
        assert queued.returncode == 4, err
        assert err.startswith("orch: error: "), err
        # Every write B's agents send under the old claims is refused.
        for n, (item, c) in enumerate(held.items()):
            i, t = str(item), c["token"]
            ran(b.orch("heartbeat", i, "--token", t), 4)
            ran(b.orch("checkpoint", i, "--token", t, "--data", '{"late": true}'), 4)
            ran(b.orch("release", i, "--token", t, "--outcome", "succeeded",
                       "--result", json.dumps({"by": f"b-agent-{n}"})), 4)
        # B reconnected by itself: its requests reach the server on new connections.
        later = json.loads(ran(b.orch("submit", "--payload", '{"after": "heal"}',
                                      "--json")).stdout)
        assert proxy.connections > connections

        with a.client() as api_a:
            for item, c in taken.items():
                api_a.release_task(item, c["token"], "succeeded", result={"by": "a-agent"})
            assert api_a.get_task(later["id"])["status"] == "pending"
        assert b.daemon.stop() == 0

    # Nothing lost, nothing done twice: each item succeeded once, by A's claim.
    events = log_of(url)
    for item in ids:
        mine = [e for e in events if e["item_id"] == item]
        assert [e["worker_id"] for e in mine if e["type"] == "claimed"] == \
            [held[item]["worker_id"], "a-agent"]
        released = [e for e in mine if e["type"] == "released"]
        assert len(released) == 1, released
        assert (released[0]["worker_id"], released[0]["fence"]) == \
            ("a-agent", taken[item]["fence"])
    with Orchestrator(url) as o:
        for item in ids:
            row = o.get_task(item)
            assert (row["status"], row["worker_id"], row["result"]) == \
                ("succeeded", "a-agent", {"by": "a-agent"})
    doctor_ok(url)


# --- claim races across both machines, with a follower --------------------------------


class Lines(threading.Thread):
    """Collects a process's stdout lines as they come."""

    def __init__(self, p: subprocess.Popen):
        super().__init__(daemon=True)
        self.p, self.lines = p, []

    def run(self) -> None:
        try:
            for line in self.p.stdout:
                self.lines.append(line)
        except (ValueError, OSError):
            pass  # closed: the process is gone


def test_forty_claimers_on_two_machines_twenty_items_one_winner_each(url, machine, tmp_path):
    a, b = machine("a", url), machine("b", url)
    with a.client() as api:
        ids = {x["id"] for x in api.submit_many([{"payload": {"n": i}} for i in range(20)])}
    follower = a.start("events", "--follow", "--json")
    followed = Lines(follower)
    followed.start()
    try:
        sockets = [str(a.sock), str(b.sock)]
        with racers("claim_racer.py", 40, lambda i: [sockets[i % 2], f"w{i}"],
                    tmp_path) as procs:
            release_barrier(procs)
            answers = [racer_answer(p, i, tmp_path) for i, p in enumerate(procs)]
            racers_finish(procs, tmp_path)
        assert [x for x in answers if "error" in x] == []
        claims = [x["claim"] for x in answers if x["claim"] is not None]
        assert len(claims) == 20
        assert sorted(c[0] for c in claims) == sorted(ids)  # 20 distinct winners
        assert len({c[1] for c in claims}) == 20  # and 20 fences
        winners = {c[0]: f"w{i}" for i, x in enumerate(answers) if (c := x["claim"])}

        log = log_of(url)
        deadline = time.monotonic() + 20
        while not followed.lines or json.loads(followed.lines[-1])["seq"] < log[-1]["seq"]:
            assert follower.poll() is None, follower.stderr.read()
            assert time.monotonic() < deadline, "the follower did not catch up"
            time.sleep(0.05)
    finally:
        follower.kill()
        follower.wait()
        followed.join(10)
        reap(follower)
    # The follower saw every event exactly once, in order: the log itself.
    seen = [json.loads(line) for line in followed.lines]
    assert [e["seq"] for e in seen] == [e["seq"] for e in log]
    assert [(e["item_id"], e["type"], e["fence"]) for e in seen] == \
        [(e["item_id"], e["type"], e["fence"]) for e in log]
    with Orchestrator(url) as o:
        for item, w in winners.items():
            row = o.get_task(item)
            assert (row["status"], row["worker_id"], row["result"]) == \
                ("succeeded", w, {"by": w})
    types = Counter(e["type"] for e in log)
    assert (types["claimed"], types["released"]) == (20, 20)
    doctor_ok(url)


# --- exact following under concurrent writers -----------------------------------------


def test_a_follower_misses_no_event_while_four_processes_write(url, tmp_path):
    Orchestrator(url).close()  # the schema, made before anyone races to make it
    stop = tmp_path / "stop"
    follower = spawn("event_follower.py", url, str(stop), log=tmp_path / "follower.err")
    writers = []
    try:
        assert follower.stdout.readline().strip() == "ready", \
            (tmp_path / "follower.err").read_text()
        writers = [spawn("pg_writer.py", url, f"writer-{n}", str(n), "60",
                         log=tmp_path / f"writer-{n}.err") for n in range(4)]
        done = []
        for n, p in enumerate(writers):
            out, _ = p.communicate(timeout=120)
            assert p.returncode == 0, (tmp_path / f"writer-{n}.err").read_text()
            done.append(json.loads(out))
        stop.touch()
        out, _ = follower.communicate(timeout=60)
        assert follower.returncode == 0, (tmp_path / "follower.err").read_text()
    finally:
        for p in [follower, *writers]:
            reap(p)
    seen = json.loads(out)
    log = [e["seq"] for e in log_of(url)]
    assert sum(d.get("many", 0) for d in done) > 0 and sum(d.get("claim", 0) for d in done) > 0
    # Every event, once, in order: a number that committed late was waited for, not
    # passed over.
    missed = sorted(set(log) - set(seen))
    assert missed == [], f"the follower skipped {len(missed)} event(s): {missed[:20]}"
    assert seen == log
    doctor_ok(url)


# --- waking across machines ------------------------------------------------------------


def test_a_claim_parked_on_one_machine_wakes_when_the_other_submits(url, machine):
    a, b = machine("a", url), machine("b", url)
    started = time.monotonic()
    parked = a.start("claim", "--worker", "parked", "--wait", "10", "--json")
    try:
        time.sleep(1)  # parked by now, most likely; a claim that comes later gets it too
        item = json.loads(ran(b.orch("submit", "--payload", '{"from": "b"}', "--json")).stdout)
        out, err = parked.communicate(timeout=30)
    finally:
        reap(parked)
    assert parked.returncode == 0, err
    assert json.loads(out)["id"] == item["id"]
    # Woken, well before its wait ran out (at the end of it, it would have found the
    # item too).
    assert time.monotonic() - started < 8


def test_three_claims_parked_on_one_machine_one_item_from_the_other_one_gets_it(
        url, machine):
    a, b = machine("a", url), machine("b", url)
    parked = [a.start("claim", "--worker", f"parked-{n}", "--wait", "4", "--json")
              for n in range(3)]
    try:
        time.sleep(1)
        item = json.loads(ran(b.orch("submit", "--payload", '{"one": 1}', "--json")).stdout)
        outcomes = [(p.communicate(timeout=30), p.returncode) for p in parked]
    finally:
        for p in parked:
            reap(p)
    got = [json.loads(out) for (out, _), code in outcomes if code == 0]
    assert [c["id"] for c in got] == [item["id"]], outcomes
    # The others waited it out and found nothing: exit 3, nothing on stdout.
    assert sorted(code for _, code in outcomes) == [0, 3, 3], outcomes
    assert all(out == "" for (out, _), code in outcomes if code == 3)
    with Orchestrator(url) as o:
        assert [e["type"] for e in o.list_events(item_id=item["id"], limit=0)] == \
            ["submitted", "claimed"]


# --- clock skew ------------------------------------------------------------------------


def test_a_client_whose_clock_is_off_judges_leases_by_the_servers_clock(url):
    with Orchestrator(url) as honest:
        live, short = (x["id"] for x in honest.submit_many([{"payload": 1}, {"payload": 2}]))
        held = honest.claim_task("honest", item_id=live, ttl=60)
        brief = honest.claim_task("brief", item_id=short, ttl=1)

    # Ten minutes ahead: by its own clock the live lease ended long ago. It still
    # cannot take the item, nor recover it.
    with freeze_time(datetime.now(UTC) + timedelta(minutes=10), tick=True), \
            Orchestrator(url) as ahead:
        assert now_ms() > held["lease_expires_at"]
        with pytest.raises(Conflict, match="honest"):
            ahead.claim_task("thief", item_id=live, ttl=60)
        recovered = ahead.stale_recovery(dry_run=True)
        assert live not in [x["id"] for x in recovered["recovered"]]
        assert ahead.verify(live, held["token"])["valid"] is True

    # Ten minutes behind: by its own clock the brief lease is live. A heartbeat cannot
    # bring it back once the server's clock has passed its end.
    sleep_past_on_server(url, brief["lease_expires_at"])
    with freeze_time(datetime.now(UTC) - timedelta(minutes=10), tick=True), \
            Orchestrator(url) as behind:
        assert now_ms() < brief["lease_expires_at"]
        with pytest.raises(LeaseLost):
            behind.heartbeat(short, brief["token"], ttl=600)
        with pytest.raises(LeaseLost):
            behind.release_task(short, brief["token"], "succeeded")
        assert behind.verify(short, brief["token"])["valid"] is False
        taken = behind.claim_task("next", item_id=short, ttl=60)
        assert taken["fence"] > brief["fence"]
    with Orchestrator(url) as o:
        assert o.get_task(live)["worker_id"] == "honest"
        assert o.get_task(short)["worker_id"] == "next"
        report = o.doctor()
        assert report["ok"], report["problems"]
