"""orch copy --to URL: a SQLite file, with its whole history, moved into an empty
PostgreSQL database, where the items, events and fences go on from where they were."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import apsw
import psycopg
import pytest
from conftest import T0, doctor_ok, orch_process
from freezegun import freeze_time

from orchestrator import LeaseLost, Orchestrator
from orchestrator.model import Status

#: Items submitted in one batch, so the copy reads and writes them (and their events) in
#: more than one page.
BULK = 2500
#: Events numbered up to this one look as if written before SQLite's migration 0002:
#: their item_prev is NULL, and the copy must work the links out.
UNLINKED_UNTIL = 15


def build_sqlite(db: Path) -> dict:
    """A file with an item in every status, a session with goals and tool executions,
    checkpoints, heartbeats and a bulk submit; returns the live claim's token and ids."""
    with freeze_time(T0) as frozen, Orchestrator(db) as o:
        done = o.submit_task({"n": "done"}, queue="q")["id"]
        c = o.claim_task("w1", "q", ttl=60)
        for _ in range(5):
            o.heartbeat(c["id"], c["token"])
            frozen.tick(1)
        o.checkpoint(c["id"], c["token"], {"page": 3})
        o.release_task(done, c["token"], "succeeded", result={"ok": True})

        failed = o.submit_task({"n": "failed"}, queue="q")["id"]
        c = o.claim_task("w1", "q", item_id=failed)
        o.release_task(failed, c["token"], "failed", error="boom", no_retry=True)

        dead = o.submit_task({"n": "dead"}, queue="q", max_attempts=1)["id"]
        c = o.claim_task("w2", "q", item_id=dead)
        o.release_task(dead, c["token"], "failed", error="again")

        cancelled = o.submit_task({"n": "cancelled"}, queue="q")["id"]
        o.cancel_task(cancelled)

        unknown = o.submit_task({"n": "unknown"}, queue="q", effect="unsafe")["id"]
        o.claim_task("w3", "q", item_id=unknown, ttl=1)
        frozen.tick(5)
        assert o.stale_recovery()["recovered"]

        s = o.start_session("agent-1", key="run-1", payload={"task": "docs"}, ttl=600)
        o.checkpoint(s["id"], s["token"], {"step": 1})
        g = o.create_goal(s["id"], s["token"], payload={"goal": "fetch"}, key="fetch")
        t = o.execute_tool_idempotent(g["id"], g["token"], "http_get", {"url": "a"})
        o.release_task(t["id"], t["token"], "succeeded", result={"status": 200})
        t2 = o.execute_tool_idempotent(g["id"], g["token"], "send_mail", {"to": "b"},
                                       effect="unsafe")
        o.release_task(t2["id"], t2["token"], "failed", error="smtp", no_retry=True)
        o.release_task(g["id"], g["token"], "succeeded")
        o.checkpoint(s["id"], s["token"], {"step": 2})
        o.release_task(s["id"], s["token"], "succeeded", result={"summary": "done"})

        o.submit_many([{"payload": {"i": i}, "queue": "bulk"} for i in range(BULK)])
        pending = o.submit_task({"n": "pending"}, queue="q", priority=5)["id"]
    # A lease live by the real clock (which the server's agrees with): held across the copy.
    with Orchestrator(db) as o:
        running = o.submit_task({"n": "running"}, queue="live")["id"]
        live = o.claim_task("w4", "live", ttl=3600)
        assert live["id"] == running
        statuses = {i["status"] for i in o.list_tasks(limit=0)}
    assert statuses == set(Status), statuses
    unlink_early_events(db)
    return {"token": live["token"], "running": running, "pending": pending,
            "session": s["id"]}


def unlink_early_events(db: Path) -> None:
    """Make the first events look as written before migration 0002 (no item_prev), as
    in a file that was made by an older orch and migrated."""
    conn = apsw.Connection(str(db))
    try:
        conn.execute("DROP TRIGGER event_log_no_update")
        conn.execute("UPDATE event_log SET item_prev = NULL WHERE seq <= ?", (UNLINKED_UNTIL,))
        conn.execute("CREATE TRIGGER event_log_no_update BEFORE UPDATE ON event_log BEGIN "
                     "SELECT RAISE(ABORT, 'event_log is append-only: UPDATE is not allowed'); "
                     "END")
        assert conn.execute("SELECT count(*) FROM event_log WHERE item_prev IS NULL"
                            ).fetchall() == [(UNLINKED_UNTIL,)]
    finally:
        conn.close()


def pg_rows(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params).fetchall()


def pg_snapshot(url: str) -> dict:
    """Every row of orch's tables and where its sequences stand."""
    tables = ("items", "workers", "event_log", "orch_meta", "orch_migrations")
    snap = {t: pg_rows(url, f"SELECT * FROM {t} ORDER BY 1") for t in tables}
    snap["seq"] = pg_rows(url, "SELECT last_value, is_called FROM orch_event_seq")
    snap["ids"] = pg_rows(url, "SELECT last_value, is_called FROM items_id_seq")
    return snap


def copy(db: Path, url: str, *args: str):
    return orch_process("copy", "--to", url, *args, db=db, timeout=120)


def same_everything(db: Path, url: str) -> None:
    """The API answers alike on the file and on the copy."""
    with Orchestrator(db) as lite, Orchestrator(url) as pg:
        assert pg.list_tasks(limit=0) == lite.list_tasks(limit=0)
        assert unlinked(pg.list_events(limit=0)) == unlinked(lite.list_events(limit=0))
        items = lite.list_tasks(limit=0)
        assert len(items) == BULK + 11
        # Each item's history: on PostgreSQL found through the item_prev links only.
        for item in items[:20] + items[-20:]:
            assert unlinked(pg.list_events(item["id"], limit=0)) == \
                unlinked(lite.list_events(item["id"], limit=0))
        session = next(i["id"] for i in items if i["kind"] == "session")
        assert pg.list_events(session, limit=0)[0]["seq"] > UNLINKED_UNTIL
        assert pg.replay_session(session) == lite.replay_session(session)
    lite_workers = sorted(apsw.Connection(str(db)).execute("SELECT * FROM workers"))
    assert pg_rows(url, "SELECT * FROM workers ORDER BY 1") == lite_workers


def unlinked(events: list[dict]) -> list[dict]:
    """Events as the file and the copy agree on them: the copy has the links
    (item_prev) the file's early events lack, checked on their own."""
    return [{**e, "item_prev": None if e["seq"] <= UNLINKED_UNTIL else e["item_prev"]}
            for e in events]


def test_copy_moves_the_whole_history_and_work_goes_on(tmp_path, pg_schemas, start_daemon):
    db = tmp_path / "orch.db"
    built = build_sqlite(db)
    url = pg_schemas.url()
    daemon = start_daemon(db=db)  # the file stays served while it is copied

    p = copy(db, url, "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(p.stdout)
    daemon.stop()
    last_seq = report["copied"]["last_seq"]
    assert report["same"] and report["ok"] and report["doctor"]["ok"], report
    assert report["copied"] == report["target"]
    assert report["copied"]["items"] == BULK + 11 and last_seq > BULK
    doctor_ok(db)
    doctor_ok(url)
    same_everything(db, url)

    # Links worked out for the events the file had none for; hashes as they were.
    lite = apsw.Connection(str(db))
    lite_events = list(lite.execute("SELECT seq, prev_hash, hash FROM event_log ORDER BY seq"))
    assert pg_rows(url, "SELECT seq, prev_hash, hash FROM event_log ORDER BY seq") == lite_events
    links = dict(pg_rows(url, "SELECT seq, item_prev FROM event_log"))
    latest: dict[int, int] = {}
    for seq, item_id in lite.execute("SELECT seq, item_id FROM event_log ORDER BY seq"):
        assert links[seq] == latest.get(item_id, 0), seq
        latest[item_id] = seq
    assert pg_rows(url, "SELECT value FROM orch_meta WHERE key = 'chain_global_until'") == \
        [(str(last_seq),)]

    # Work goes on, on the server's clock: the live lease's holder keeps its token...
    token = built["token"]
    p = orch_process("heartbeat", str(built["running"]), "--ttl", "60", db=url,
                     env={"ORCH_TOKEN": token})
    assert p.returncode == 0, p.stderr
    # ...a new claim's fence is above every copied fence and event...
    p = orch_process("claim", "--worker", "pg-1", "--queue", "q", "--json", db=url)
    assert p.returncode == 0, p.stderr
    claim = json.loads(p.stdout)
    assert claim["id"] == built["pending"]
    assert claim["fence"] > last_seq >= report["copied"]["max_fence"]
    # ...and chains over its item's last copied event.
    before = pg_rows(url, "SELECT e.hash FROM event_log e WHERE e.seq = %s",
                     (latest[claim["id"]],))
    new = pg_rows(url, "SELECT prev_hash, item_prev FROM event_log WHERE seq = %s",
                  (claim["fence"],))
    assert new == [(before[0][0], latest[claim["id"]])]
    p = orch_process("release", str(claim["id"]), "--outcome", "succeeded", db=url,
                     env={"ORCH_TOKEN": claim["token"]})
    assert p.returncode == 0, p.stderr
    p = orch_process("release", str(built["running"]), "--outcome", "requeue", db=url,
                     env={"ORCH_TOKEN": token})
    assert p.returncode == 0, p.stderr
    # New items get ids above every copied one.
    p = orch_process("submit", "--json", "--payload", "1", db=url)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["id"] == BULK + 12
    p = orch_process("claim", "--worker", "pg-2", "--queue", "live", "--json", db=url)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["fence"] > claim["fence"]
    doctor_ok(url)
    with Orchestrator(url) as pg, pytest.raises(LeaseLost):
        pg.heartbeat(built["running"], token)  # the claim it held was released

    # Copying again: the target is not empty now. Refused, and nothing changes.
    before = pg_snapshot(url)
    p = copy(db, url)
    assert p.returncode == 6, p.stdout + p.stderr
    assert p.stdout == "" and len(p.stderr.splitlines()) == 1
    assert "already holds" in p.stderr and "changed nothing" in p.stderr
    assert pg_snapshot(url) == before


def test_copy_into_an_initialised_empty_database(tmp_path, pg_schemas):
    db = tmp_path / "orch.db"
    with Orchestrator(db) as o:
        o.submit_task(1)
        c = o.claim_task("w", ttl=60)
        assert c is not None
    url = pg_schemas.url()
    assert orch_process("init", db=url).returncode == 0
    p = copy(db, url)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.splitlines()[0].endswith(
        ": 1 items, 2 events, 1 workers (fences up to 2, events up to 2)")
    assert "doctor: ok: 1 items, 2 events" in p.stdout
    # The claim's token is live on the copy.
    with Orchestrator(url) as pg:
        assert pg.verify(c["id"], c["token"])["valid"]


def test_copy_into_a_schema_with_foreign_tables_is_refused(tmp_path, pg_schemas):
    db = tmp_path / "orch.db"
    with Orchestrator(db) as o:
        o.submit_task(1)
    url = pg_schemas.url()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'mine')")
    p = copy(db, url)
    assert p.returncode == 6, p.stdout + p.stderr
    assert "holds tables that are not orch's (notes)" in p.stderr
    assert len(p.stderr.splitlines()) == 1
    assert pg_rows(url, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                   ) == [("notes",)]
    assert pg_rows(url, "SELECT * FROM notes") == [(1, "mine")]


def test_copy_never_shows_the_password(tmp_path, pg_schemas):
    db = tmp_path / "orch.db"
    with Orchestrator(db) as o:
        o.submit_task(1)
    # The test server trusts local connections: the password is ignored there.
    first, second = (with_password(pg_schemas.url(), "s3cret") for _ in range(2))
    user = urlsplit(first).username
    for url, args, code in ((first, (), 0), (second, ("--json",), 0), (second, (), 6)):
        p = copy(db, url, *args)
        assert p.returncode == code, p.stderr
        assert "s3cret" not in p.stdout + p.stderr
        assert f"{user}:***@" in p.stdout + p.stderr


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:{password}@{host}"))


def test_copy_checks_its_arguments(tmp_path, pg_schemas):
    db = tmp_path / "orch.db"
    url = pg_schemas.url()
    p = copy(db, url)
    assert p.returncode == 5 and "does not exist" in p.stderr  # no file: nothing to copy
    with Orchestrator(db) as o:
        o.submit_task(1)
    p = orch_process("copy", "--to", str(tmp_path / "other.db"), db=db)
    assert p.returncode == 2 and "--to: expected a postgresql:// URL" in p.stderr
    p = orch_process("copy", "--to", url, db=url)
    assert p.returncode == 2 and "reads a SQLite file" in p.stderr
    assert pg_rows(url, "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
                   ) == [(0,)]
