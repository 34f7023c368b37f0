"""PostgreSQL faults, through real ``orch`` processes on the real server: a URL that does
not parse, a server that refuses, a database that is missing, a role without rights, a
schema without orch's tables or with someone else's, the connections cut under load,
and the append-only log tampered with. Each fault gives one ``orch: error:`` line and
its exit code, never a traceback, and never the URL's password."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import threading
import time
from contextlib import closing
from pathlib import Path

import psycopg
import pytest
from conftest import HELPERS, one_error_line, orch_process, pg_server

from orchestrator import Orchestrator
from orchestrator.errors import RPC_UNAVAILABLE, Unavailable

SECRET = "s3cret"


def assert_quiet_about(secret: str, *texts: str) -> None:
    for text in texts:
        assert secret not in text, text
        assert "Traceback" not in text, text


def fails(db: str, args: list[str], code: int, *needles: str) -> str:
    """``orch --db DB ARGS`` in its own process: exit ``code``, one error line holding
    every needle, the password nowhere."""
    p = orch_process(*args, db=db)  # type: ignore[arg-type]
    line = one_error_line(p, code)
    for needle in needles:
        assert needle in line, (needle, line)
    assert_quiet_about(SECRET, p.stdout, p.stderr)
    return line


def daemon_fails(db: str, tmp: Path, code: int, *needles: str) -> str:
    """``orch daemon`` on DB does not start: exit ``code``, one error line, no socket,
    and the password neither on stderr nor in its log file."""
    sock, log = tmp / "orch.sock", tmp / "daemon.log"
    p = orch_process("--socket", str(sock), "daemon", "--log-file", str(log), db=db,  # type: ignore[arg-type]
                     timeout=60)
    line = one_error_line(p, code)
    for needle in needles:
        assert needle in line, (needle, line)
    assert not sock.exists()
    assert_quiet_about(SECRET, p.stdout, p.stderr, log.read_text() if log.exists() else "")
    return line


def tables_of(schema_url: str) -> set[str]:
    with psycopg.connect(pg_server()) as conn:
        schema = schema_of(schema_url)
        return {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
            (schema,))}


def schema_of(url: str) -> str:
    return url.rsplit("search_path%3D", 1)[1].split("&", 1)[0]


def with_user(url: str, user: str, password: str = SECRET) -> str:
    """``url`` (the test server's) logging in as ``user`` with ``password``."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{user}:{password}@{rest.split('@', 1)[-1]}"


# --- URLs that lead nowhere ----------------------------------------------------------------

BAD_URLS = {
    # libpq cannot parse it: the user's input to fix
    "malformed": ("postgresql://postgres:s3cret@[bad", 2, ["not valid"]),
    "bad-percent-in-password": ("postgresql://postgres:s3cret%zz@127.0.0.1/test", 2,
                                ["not valid", "percent"]),
    "port-not-a-number": ("postgresql://postgres:s3cret@127.0.0.1:port/test", 2,
                          ["not valid", "port"]),
    "unknown-parameter": ("postgresql://postgres:s3cret@127.0.0.1/test?bogus=1", 2,
                          ["not valid", "bogus"]),
    # nothing listens there
    "refused": ("postgresql://postgres:s3cret@127.0.0.1:1/test", 7,
                ["unavailable", "refused"]),
    # the server answers; the database is not there
    "missing-database": ("postgresql://postgres:s3cret@127.0.0.1/no_such_db", 7,
                         ["no_such_db", "does not exist"]),
}


@pytest.mark.parametrize("case", list(BAD_URLS))
def test_a_url_that_leads_nowhere_fails_every_command_with_one_line(case, short_tmp):
    url, code, needles = BAD_URLS[case]
    if case == "missing-database":
        pg_server()
    for args in (["ls"], ["submit", "--payload", "1"]):
        line = fails(url, args, code, *needles)
        assert "postgresql://" in line and "***" in line, line  # which database, masked
    daemon_fails(url, short_tmp, code, *needles)


def test_the_password_in_a_query_parameter_is_never_shown(short_tmp):
    url = "postgresql://postgres@127.0.0.1:1/test?password=s3cret&connect_timeout=3"
    fails(url, ["ls"], 7, "password=***")
    daemon_fails(url, short_tmp, 7)
    fails(url + "&bogus=1", ["submit"], 2, "password=***")


# --- a role without rights ---------------------------------------------------------------


@pytest.fixture
def noright_role():
    """A role that may log in (trust auth) and nothing else; dropped with its grants."""
    role = f"orch_noright_{secrets.token_hex(4)}"
    with psycopg.connect(pg_server(), autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
    yield role
    with psycopg.connect(pg_server(), autocommit=True) as conn:
        conn.execute(f"DROP OWNED BY {role}")
        conn.execute(f"DROP ROLE {role}")


def test_a_role_that_cannot_use_the_schema_fails_with_7(pg_schemas, noright_role, short_tmp):
    url = pg_schemas.url()
    as_role = with_user(url, noright_role)
    for args in (["ls"], ["submit", "--payload", "1"], ["init"]):
        fails(as_role, args, 7, noright_role, "USAGE", schema_of(url))
    daemon_fails(as_role, short_tmp, 7, "USAGE")
    assert tables_of(url) == set()


def test_a_role_without_rights_on_orchs_tables_fails_with_7(pg_schemas, noright_role,
                                                            short_tmp):
    url = pg_schemas.url()
    with Orchestrator(url) as o:
        o.submit_task({"n": 1})
        before = o.list_events(limit=0)
    with psycopg.connect(pg_server(), autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema_of(url)}" TO {noright_role}')
    as_role = with_user(url, noright_role)
    for args in (["ls"], ["submit", "--payload", "2"]):
        fails(as_role, args, 7, "permission denied")
    daemon_fails(as_role, short_tmp, 7, "permission denied")
    with Orchestrator(url) as o:
        assert o.list_events(limit=0) == before


def test_a_role_that_may_not_create_tables_fails_a_write_with_7(pg_schemas, noright_role):
    url = pg_schemas.url()
    with psycopg.connect(pg_server(), autocommit=True) as conn:
        conn.execute(f'GRANT USAGE ON SCHEMA "{schema_of(url)}" TO {noright_role}')
    fails(with_user(url, noright_role), ["submit", "--payload", "1"], 7, "permission denied")
    assert tables_of(url) == set()


# --- a schema that is not (yet) orch's ------------------------------------------------------


def test_reads_on_a_schema_without_orchs_tables_exit_5_and_create_nothing(pg_schemas):
    url = pg_schemas.url()
    for args in (["ls"], ["show", "1"], ["events"], ["doctor"]):
        fails(url, args, 5, "no orch schema")
    assert tables_of(url) == set()
    p = orch_process("submit", "--json", "--payload", "1", db=url)  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    assert {"items", "event_log", "workers", "orch_meta", "orch_migrations"} <= tables_of(url)
    p = orch_process("doctor", db=url)  # type: ignore[arg-type]
    assert p.returncode == 0, p.stdout + p.stderr


def test_a_schema_with_a_foreign_items_table_is_refused(pg_schemas, short_tmp):
    url = pg_schemas.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int, note text)")
        conn.execute("INSERT INTO items VALUES (1, 'theirs')")
    for args in (["ls"], ["submit", "--payload", "1"], ["init"]):
        fails(url, args, 5, "not orch's")
    daemon_fails(url, short_tmp, 5, "not orch's")
    assert tables_of(url) == {"items"}
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT * FROM items").fetchall() == [(1, "theirs")]


# --- the append-only log ---------------------------------------------------------------


def _filled(url: str) -> list[int]:
    """Three items with a few events each; their ids."""
    with Orchestrator(url) as o:
        ids = [o.submit_task({"n": n})["id"] for n in range(3)]
        for _ in ids:
            c = o.claim_task("w1", ttl=60)
            assert c is not None
            o.heartbeat(c["id"], c["token"])
            o.release_task(c["id"], c["token"], "succeeded", result={"ok": True})
    return ids


@pytest.mark.parametrize("statement", [
    "UPDATE event_log SET detail = '{}' WHERE seq = (SELECT min(seq) FROM event_log)",
    "DELETE FROM event_log WHERE seq = (SELECT max(seq) FROM event_log)",
    "TRUNCATE event_log",
], ids=["update", "delete", "truncate"])
def test_the_event_log_refuses_changes(pg_schemas, statement):
    url = pg_schemas.url()
    _filled(url)
    with psycopg.connect(url) as conn:
        before = conn.execute("SELECT * FROM event_log ORDER BY seq").fetchall()
    with psycopg.connect(url) as conn, pytest.raises(psycopg.Error, match="append-only"):
        conn.execute(statement)
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT * FROM event_log ORDER BY seq").fetchall() == before


def _tamper(url: str, statement: str) -> None:
    """What a superuser can still do: switch the guard off, change the log, switch it on."""
    with psycopg.connect(url) as conn:
        conn.execute("ALTER TABLE event_log DISABLE TRIGGER ALL")
        assert conn.execute(statement).rowcount == 1
        conn.execute("ALTER TABLE event_log ENABLE TRIGGER ALL")


def doctor_finds(url: str, *needles: str) -> list[str]:
    p = orch_process("doctor", "--json", db=url)  # type: ignore[arg-type]
    assert p.returncode == 1, p.stdout + p.stderr
    report = json.loads(p.stdout)
    assert not report["ok"]
    text = " ".join(report["problems"])
    for needle in needles:
        assert needle in text, (needle, report["problems"])
    return report["problems"]


def test_doctor_finds_an_event_altered_behind_the_trigger(pg_schemas):
    url = pg_schemas.url()
    ids = _filled(url)
    assert orch_process("doctor", db=url).returncode == 0  # type: ignore[arg-type]
    with psycopg.connect(url) as conn:
        seq = conn.execute("SELECT seq FROM event_log WHERE item_id = %s AND type = 'heartbeat'",
                           (ids[1],)).fetchone()[0]
    _tamper(url, f"UPDATE event_log SET worker_id = 'mallory' WHERE seq = {seq}")
    doctor_finds(url, f"hash chain broken at event {seq}")


def test_doctor_finds_an_items_last_event_removed(pg_schemas):
    url = pg_schemas.url()
    ids = _filled(url)
    with psycopg.connect(url) as conn:
        last = conn.execute("SELECT last_event FROM items WHERE id = %s", (ids[2],)).fetchone()[0]
        assert conn.execute("SELECT max(seq) FROM event_log WHERE item_id = %s",
                            (ids[2],)).fetchone()[0] == last
    _tamper(url, f"DELETE FROM event_log WHERE seq = {last}")
    doctor_finds(url, f"item {ids[2]}", str(last))


# --- every connection cut (what a server restart looks like to clients) -------------------


def app_url(pg_schemas) -> tuple[str, str]:
    """A new schema's URL with a password (trust auth ignores it, orch must hide it) and
    an application_name of its own, so that this test cuts only its own connections:
    other tests share the server."""
    app = f"orch_t_{secrets.token_hex(4)}"
    url = pg_schemas.url()
    user = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[0]
    return with_user(f"{url}&application_name={app}", user), app


def backends(app: str) -> list[dict]:
    with psycopg.connect(pg_server()) as conn:
        cur = conn.execute("SELECT pid, query, state, wait_event_type FROM pg_stat_activity "
                           "WHERE application_name = %s AND pid <> pg_backend_pid()", (app,))
        return [dict(zip(("pid", "query", "state", "wait"), r, strict=True)) for r in cur]


def cut(app: str) -> int:
    """Terminate every backend of ``app``: to its clients, the server went away."""
    with psycopg.connect(pg_server(), autocommit=True) as conn:
        return len(conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = %s AND pid <> pg_backend_pid()", (app,)).fetchall())


def until(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    pytest.fail(f"waited {timeout:g} s for {what}")


def listening(app: str) -> set[int]:
    return {b["pid"] for b in backends(app) if b["query"].startswith("LISTEN")}


def test_a_request_in_flight_when_the_connection_is_cut_exits_7_and_the_daemon_goes_on(
        pg_schemas, start_daemon):
    url, app = app_url(pg_schemas)
    d = start_daemon(db=url)
    with d.client() as c:
        item = c.submit_task({"n": 1})["id"]
        claim = c.claim_task("w1", ttl=600)
    release = ["--socket", str(d.sock), "release", str(item), "--token", claim["token"],
               "--outcome", "succeeded"]
    with closing(psycopg.connect(pg_server())) as holder:
        # Someone holds the item's row: the daemon's release waits on it, in flight.
        holder.execute(f'SELECT * FROM "{schema_of(url)}".items WHERE id = %s FOR UPDATE',
                       (item,))
        p = subprocess.Popen([sys.executable, "-m", "orchestrator", "--db", url, *release],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        until(lambda: any(b["wait"] == "Lock" for b in backends(app)), "the release to wait")
        assert cut(app) >= 2  # the waiting writer and the listener at least
        out, err = p.communicate(timeout=30)
        holder.rollback()
    line = one_error_line(subprocess.CompletedProcess(p.args, p.returncode, out, err), 7)
    assert "unavailable" in line and "***" in line, line
    assert_quiet_about(SECRET, out, err)

    # Nothing of it was written; the daemon reconnects by itself and the same release,
    # sent again, is done once.
    with Orchestrator(url) as o:
        assert o.get_task(item)["status"] == "running"
    p = orch_process(*release, db=url)  # type: ignore[arg-type]
    assert p.returncode == 0, p.stderr
    with d.client() as c:
        assert c.get_task(item)["status"] == "succeeded"
        assert [e["type"] for e in c.list_events(item_id=item, limit=0)] == \
            ["submitted", "claimed", "released"]
    assert orch_process("doctor", db=url).returncode == 0  # type: ignore[arg-type]
    assert d.stop() == 0
    assert_quiet_about(SECRET, d.stderr_text(), d.log_text())
    assert_quiet_about(claim["token"], d.stderr_text(), d.log_text())


def test_a_parked_claim_still_wakes_after_the_listener_was_cut(pg_schemas, start_daemon):
    url, app = app_url(pg_schemas)
    d = start_daemon(db=url)
    first = until(lambda: listening(app), "the daemon to LISTEN")
    got: list = []
    with d.client(timeout=60) as c:
        waiter = threading.Thread(target=lambda: got.append(
            c.claim_task("w1", ["parked"], ttl=60, wait=30)))
        waiter.start()
        time.sleep(0.3)  # let it park (if not, it simply finds the item at once)
        assert cut(app) >= 1
        until(lambda: listening(app) - first, "the listener to reconnect")
        with Orchestrator(url) as o:  # another process's submit, as far as the daemon knows
            item = o.submit_task({"n": 1}, queue="parked")["id"]
        waiter.join(30)
    assert got and got[0] is not None and got[0]["id"] == item, got
    assert d.stop() == 0
    assert_quiet_about(SECRET, d.stderr_text(), d.log_text())


def test_connections_cut_under_load_lose_no_acknowledged_release(pg_schemas, start_daemon,
                                                                 tmp_path):
    url, app = app_url(pg_schemas)
    with Orchestrator(url) as o:
        o.submit_many([{"payload": {"n": i}} for i in range(2000)])
    d = start_daemon(db=url)
    stop = tmp_path / "stop"
    workers = [subprocess.Popen([sys.executable, str(HELPERS / "pg_loop_worker.py"),
                                 str(d.sock), f"w{i}", str(stop)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(4)]
    lines: list[list[dict]] = [[] for _ in workers]

    def read(i: int) -> None:
        for line in workers[i].stdout:
            lines[i].append(json.loads(line))
    readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(4)]
    for r in readers:
        r.start()

    def acks() -> int:
        return sum(1 for ls in lines for x in list(ls) if "released" in x)
    try:
        for _ in range(3):
            seen = acks()
            until(lambda seen=seen: acks() >= seen + 20, "the workers to release more")
            assert cut(app) >= 1
        seen = acks()
        until(lambda: acks() >= seen + 20, "the daemon to serve after the last cut")
    finally:
        stop.touch()
        for w in workers:
            w.wait(30)
        for r in readers:
            r.join(10)
    for w in workers:
        assert w.returncode == 0, w.stderr.read()
        w.stdout.close()
        w.stderr.close()

    released = [tuple(x["released"]) for ls in lines for x in ls if "released" in x]
    errors = [x["error"] for ls in lines for x in ls if "error" in x]
    # A request the cut caught fails as unavailable (exit 7, UNAVAILABLE), nothing else.
    assert all(e[2:] == [7, RPC_UNAVAILABLE] for e in errors), errors
    assert all(e[1] in (Unavailable.__name__, "OutcomeUnknown") for e in errors), errors
    assert len(set(released)) == len(released)
    with Orchestrator(url) as o:
        events = o.list_events(limit=0)
        logged = {(e["item_id"], e["fence"]) for e in events if e["type"] == "released"}
        assert set(released) <= logged
        for item_id, fence in released:
            row = o.get_task(item_id)
            assert (row["status"], row["fence"]) == ("succeeded", fence)
    p = orch_process("doctor", db=url)  # type: ignore[arg-type]
    assert p.returncode == 0, p.stdout + p.stderr
    assert d.stop() == 0
    assert_quiet_about(SECRET, d.stderr_text(), d.log_text())


def test_a_request_held_up_by_a_locked_row_does_not_hold_up_its_group(pg_schemas,
                                                                       start_daemon):
    """On PostgreSQL a child's write that finds its parent's row locked (NOWAIT) goes
    round again by itself: the requests committed with it, and after it, are answered
    at once, and it succeeds once the row is free."""
    url = pg_schemas.url()
    d = start_daemon("--writer-lanes", "1", db=url)  # one lane: every write in one queue
    with d.client() as c:
        s = c.start_session("agent", ttl=600)
        g = c.create_goal(s["id"], s["token"], ttl=600)
        t = c.execute_tool_idempotent(g["id"], g["token"], "fetch", {"u": 1}, ttl=600)
    beat: dict = {}
    with closing(psycopg.connect(pg_server())) as holder:
        holder.execute(f'SELECT * FROM "{schema_of(url)}".items WHERE id = %s FOR UPDATE',
                       (g["id"],))

        def heartbeat() -> None:
            with d.client() as c2:
                beat["answer"] = c2.heartbeat(t["id"], t["token"])
        hb = threading.Thread(target=heartbeat)
        hb.start()
        time.sleep(0.3)  # it is going round now
        # While the goal's row stays locked, other writes through the same lane are
        # answered (before: they waited behind it until the busy budget ran out).
        for n in range(3):
            p = orch_process("--socket", str(d.sock), "submit", "--payload", str(n), db=url,
                             timeout=8)
            assert p.returncode == 0, p.stderr
        assert hb.is_alive() and "answer" not in beat  # still held up
        holder.rollback()
    hb.join(timeout=20)
    assert beat["answer"]["id"] == t["id"]
    assert orch_process("doctor", db=url).returncode == 0  # type: ignore[arg-type]
