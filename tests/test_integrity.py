"""The file keeps its history honest: the event log refuses UPDATE and DELETE, and
``orch doctor`` names what was changed behind orch's back (an item, an event, a link), or
says in one line that the file is damaged or not a database at all."""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
from pathlib import Path

import apsw
import pytest
from conftest import claim, fetch_all, ok, one_error_line, orch_process, sqlite_connection, submit

from orchestrator import Orchestrator


@pytest.fixture
def busy_db(db_path: Path) -> Path:
    """A file with a few items through their whole life: submitted, claimed, released."""
    with Orchestrator(db_path) as o:
        for n in range(3):
            o.submit_task({"n": n})
        c = o.claim_task("w1", ttl=30)
        o.checkpoint(c["id"], c["token"], {"half": True})
        o.release_task(c["id"], c["token"], "succeeded", result={"ok": 1})
        o.claim_task("w2", ttl=30)
        assert o.doctor()["ok"]
    return db_path


@pytest.mark.parametrize("sql", [
    "UPDATE event_log SET detail = '{}' WHERE seq = 2",
    "UPDATE event_log SET type = 'claimed'",
    "DELETE FROM event_log WHERE seq = 1",
    "DELETE FROM event_log",
])
def test_event_log_rejects_update_and_delete(busy_db, sql):
    conn = sqlite_connection(busy_db)
    try:
        before = fetch_all(conn, "SELECT * FROM event_log ORDER BY seq")
        assert len(before) >= 7
        with pytest.raises(apsw.Error, match="append-only"):
            conn.execute(sql)
        assert fetch_all(conn, "SELECT * FROM event_log ORDER BY seq") == before
    finally:
        conn.close()
    with Orchestrator(busy_db) as o:
        assert o.doctor()["ok"]


def test_event_log_is_append_only(orch, clock, db_path):
    orch.submit_task("x")
    conn = apsw.Connection(str(db_path))
    try:
        with pytest.raises(apsw.ConstraintError):
            conn.execute("UPDATE event_log SET type = 'forged'")
        with pytest.raises(apsw.ConstraintError):
            conn.execute("DELETE FROM event_log")
    finally:
        conn.close()
    assert orch.doctor()["ok"]


def doctor_cli(db: Path) -> subprocess.CompletedProcess:
    return orch_process("doctor", db=db)


def test_doctor_passes_a_healthy_file(busy_db):
    p = doctor_cli(busy_db)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("ok")
    p = orch_process("doctor", "--json", db=busy_db)
    assert p.returncode == 0
    report = json.loads(p.stdout)
    assert report["ok"] is True and report["problems"] == []
    assert report["items"] == 3 and report["events"] >= 7


@pytest.mark.parametrize("edit, field", [
    ("UPDATE items SET status = 'succeeded' WHERE id = 3", "status"),
    ("UPDATE items SET status = 'dead' WHERE id = 1", "status"),
    ("UPDATE items SET payload = '{\"n\":99}' WHERE id = 2", "payload"),
    ("UPDATE items SET priority = 7 WHERE id = 2", "priority"),
    ("UPDATE items SET attempts = 0 WHERE id = 1", "attempts"),
])
def test_doctor_names_a_hand_edited_item(busy_db, edit, field):
    conn = sqlite_connection(busy_db)
    conn.execute(edit)
    assert conn.changes() == 1
    conn.close()
    item = re.search(r"id = (\d+)", edit).group(1)
    p = doctor_cli(busy_db)
    assert p.returncode == 1, p.stdout + p.stderr
    bad = [line for line in p.stdout.splitlines() if f"item {item}" in line]
    assert bad and any(field in line for line in bad), p.stdout
    # Only the edited item is named.
    named = set(re.findall(r"item (\d+)", p.stdout))
    assert named == {item}, p.stdout
    report = json.loads(orch_process("doctor", "--json", db=busy_db).stdout)
    assert report["ok"] is False and report["problems"]


def test_doctor_reports_an_item_missing_from_the_log(busy_db):
    conn = sqlite_connection(busy_db)
    conn.execute("INSERT INTO items (kind, queue, payload, status, max_attempts, run_after,"
                 " effect, created_at, updated_at)"
                 " VALUES ('task', 'default', '1', 'pending', 3, 0, 'idempotent', 0, 0)")
    new_id = conn.last_insert_rowid()
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1 and f"item {new_id}" in p.stdout, p.stdout


def test_doctor_reports_an_edited_event_as_a_broken_chain(busy_db):
    conn = sqlite_connection(busy_db)
    conn.execute("DROP TRIGGER event_log_no_update")
    detail = json.loads(fetch_all(conn, "SELECT detail FROM event_log WHERE seq = 2")[0][0])
    detail["priority"] = 5  # a plausible edit: event 2 is item 2's submission
    conn.execute("UPDATE event_log SET detail = ? WHERE seq = 2", (json.dumps(detail),))
    assert conn.changes() == 1
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1, p.stdout
    assert re.search(r"hash chain broken at event 2\b", p.stdout), p.stdout
    assert "event 1\n" not in p.stdout and "event 3" not in p.stdout


def test_doctor_reports_a_deleted_event(busy_db):
    conn = sqlite_connection(busy_db)
    conn.execute("DROP TRIGGER event_log_no_delete")
    conn.execute("DELETE FROM event_log WHERE seq = 3")
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1, p.stdout
    assert "expected event 3, found 4" in p.stdout, p.stdout
    assert "item 3" in p.stdout, p.stdout  # event 3 was item 3's submission


def test_doctor_names_a_broken_item_link(busy_db):
    conn = sqlite_connection(busy_db)
    conn.execute("UPDATE items SET last_event = 1 WHERE id = 2")
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1 and "item 2: names event 1 as its latest" in p.stdout, p.stdout


def test_doctor(cli, db_path):
    a = submit(cli)
    claim(cli)
    r = cli("doctor")
    ok(r)
    assert r.out.startswith("ok: 1 items, 2 events")
    r = cli("doctor", "--json")
    assert r.code == 0 and r.json["ok"] is True and r.json["problems"] == []
    # tamper with a row behind orch's back: doctor must notice and exit 1
    conn = apsw.Connection(str(db_path))
    conn.execute("UPDATE items SET priority = 99 WHERE id = ?", (a,))
    conn.close()
    r = cli("doctor")
    assert r.code == 1
    assert "problem" in r.out and "priority" in r.out
    r = cli("doctor", "--json")
    assert r.code == 1 and r.json["ok"] is False
    assert any("priority" in p for p in r.json["problems"])


@pytest.fixture
def filled_db(tmp_path: Path) -> Path:
    """A database of a few hundred pages, closed (its WAL folded in)."""
    db = tmp_path / "full.db"
    with Orchestrator(db) as o:
        o.submit_many([{"payload": {"i": i, "pad": "x" * 300}} for i in range(2000)])
        for _ in range(100):
            c = o.claim_task("w", ttl=30)
            o.release_task(c["id"], c["token"], "succeeded")
    assert not Path(f"{db}-wal").exists()
    return db


def test_doctor_on_a_damaged_page_says_so_in_one_line(filled_db, tmp_path):
    damaged = tmp_path / "damaged.db"
    shutil.copyfile(filled_db, damaged)  # no connection has the copy open
    size = damaged.stat().st_size
    with open(damaged, "r+b") as f:
        f.seek(size // 2 // 4096 * 4096 + 100)  # into a page in the middle of the file
        f.write(random.Random(1).randbytes(2000))
    for args in (("doctor",), ("doctor", "--json")):
        p = orch_process(*args, db=damaged)
        err = one_error_line(p, 1)
        assert f"database {damaged} is damaged" in err, err
        assert "backup" in err and f"sqlite3 {damaged} .recover" in err, err
        assert "Traceback" not in p.stderr
    assert orch_process("doctor", db=filled_db).returncode == 0


def test_doctor_on_a_file_that_is_not_a_database(tmp_path):
    junk = tmp_path / "notes.db"
    junk.write_bytes(b"these are not the pages you are looking for\n" * 300)
    before = junk.read_bytes()
    p = orch_process("doctor", db=junk)
    err = one_error_line(p, 1)
    assert f"database {junk} is damaged or not a database" in err, err
    assert "backup" in err, err
    assert junk.read_bytes() == before
