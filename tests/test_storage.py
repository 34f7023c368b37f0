"""The file itself: append-only log, doctor, paths and permissions, migrations, busy,
backup (SPEC sections 2, 5, 7 and 10)."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import apsw
import pytest
from conftest import ROOT, orch_process

from orchestrator import Orchestrator, SchemaTooNew
from orchestrator import events as ev
from orchestrator.store import QUERIES, SCHEMA_VERSION, SQL_DIR, load_queries

HELPERS = Path(__file__).resolve().parent / "helpers"


def raw(db: Path) -> apsw.Connection:
    """A plain APSW connection: no orch code between the test and the file."""
    return apsw.Connection(str(db))


def rows(conn: apsw.Connection, sql: str, params=()) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


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


# --- (a) the event log is append-only ------------------------------------------------


@pytest.mark.parametrize("sql", [
    "UPDATE event_log SET detail = '{}' WHERE seq = 2",
    "UPDATE event_log SET type = 'claimed'",
    "DELETE FROM event_log WHERE seq = 1",
    "DELETE FROM event_log",
])
def test_event_log_rejects_update_and_delete(busy_db, sql):
    conn = raw(busy_db)
    try:
        before = rows(conn, "SELECT * FROM event_log ORDER BY seq")
        assert len(before) >= 7
        with pytest.raises(apsw.Error, match="append-only"):
            conn.execute(sql)
        assert rows(conn, "SELECT * FROM event_log ORDER BY seq") == before
    finally:
        conn.close()
    with Orchestrator(busy_db) as o:
        assert o.doctor()["ok"]


# --- (b) doctor finds hand edits ---------------------------------------------------------


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
    conn = raw(busy_db)
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
    conn = raw(busy_db)
    conn.execute("INSERT INTO items (kind, queue, payload, status, max_attempts, run_after,"
                 " effect, created_at, updated_at)"
                 " VALUES ('task', 'default', '1', 'pending', 3, 0, 'idempotent', 0, 0)")
    new_id = conn.last_insert_rowid()
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1 and f"item {new_id}" in p.stdout, p.stdout


def test_doctor_reports_an_edited_event_as_a_broken_chain(busy_db):
    conn = raw(busy_db)
    conn.execute("DROP TRIGGER event_log_no_update")
    detail = json.loads(rows(conn, "SELECT detail FROM event_log WHERE seq = 2")[0][0])
    detail["priority"] = 5  # a plausible edit: event 2 is item 2's submission
    conn.execute("UPDATE event_log SET detail = ? WHERE seq = 2", (json.dumps(detail),))
    assert conn.changes() == 1
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1, p.stdout
    assert re.search(r"hash chain broken at event 2\b", p.stdout), p.stdout
    assert "event 1\n" not in p.stdout and "event 3" not in p.stdout


def test_doctor_reports_a_deleted_event(busy_db):
    conn = raw(busy_db)
    conn.execute("DROP TRIGGER event_log_no_delete")
    conn.execute("DELETE FROM event_log WHERE seq = 3")
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1, p.stdout
    assert "expected event 3, found 4" in p.stdout, p.stdout
    assert "item 3" in p.stdout, p.stdout  # event 3 was item 3's submission


# --- (c) paths and permissions -------------------------------------------------------------


def orch_with_umask(umask: int, *args: str, env: dict) -> subprocess.CompletedProcess:
    """``orch ARGS`` in a shell that set a permissive umask first."""
    cmd = f"umask {umask:03o} && exec \"$0\" -m orchestrator \"$@\""
    full_env = {k: v for k, v in os.environ.items() if k not in ("ORCH_DB", "ORCH_SOCKET")}
    full_env.update(env)
    return subprocess.run(["sh", "-c", cmd, sys.executable, *args], capture_output=True,
                          text=True, timeout=60, env=full_env, check=False)


@pytest.mark.parametrize("umask", [0o022, 0o000], ids=["umask022", "umask000"])
def test_init_creates_default_paths_private(tmp_path, umask):
    home = tmp_path / "fresh" / "home"
    assert not home.exists()
    p = orch_with_umask(umask, "init", env={"OPENCLAW_HOME": str(home)})
    assert p.returncode == 0, p.stderr
    db = home / "data" / "orchestrator.db"
    assert db.is_file()
    assert str(db) in p.stdout
    assert mode(home) == 0o700
    assert mode(home / "data") == 0o700
    assert mode(db) == 0o600
    conn = raw(db)
    assert rows(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert rows(conn, "PRAGMA journal_mode") == [("wal",)]
    conn.close()

    # After writes, with the connection still open, -wal and -shm are private too.
    cmd = f"umask {umask:03o} && exec \"$0\" \"$1\""
    env = {k: v for k, v in os.environ.items() if k not in ("ORCH_DB", "ORCH_SOCKET")}
    env["OPENCLAW_HOME"] = str(home)
    probe = subprocess.run(["sh", "-c", cmd, sys.executable, str(HELPERS / "perm_probe.py")],
                           capture_output=True, text=True, timeout=60, env=env, check=False)
    assert probe.returncode == 0, probe.stderr
    modes = json.loads(probe.stdout)
    assert modes == {str(db): 0o600, f"{db}-wal": 0o600, f"{db}-shm": 0o600}


def test_orch_db_env_and_db_flag_override_the_default(tmp_path):
    home = tmp_path / "home2"
    env_db = tmp_path / "envdir" / "nested" / "from-env.db"
    p = orch_with_umask(0o022, "init", env={"OPENCLAW_HOME": str(home), "ORCH_DB": str(env_db)})
    assert p.returncode == 0, p.stderr
    assert env_db.is_file() and mode(env_db) == 0o600
    assert mode(env_db.parent) == 0o700 and mode(env_db.parent.parent) == 0o700
    assert not (home / "data" / "orchestrator.db").exists()

    # --db beats ORCH_DB, before or after the command name.
    for i, where in enumerate(("before", "after")):
        flag_db = tmp_path / f"flag-{where}.db"
        args = (["--db", str(flag_db), "submit", "--payload", "1"] if where == "before"
                else ["submit", "--payload", "1", "--db", str(flag_db)])
        p = orch_with_umask(0o022, *args, env={"OPENCLAW_HOME": str(home),
                                               "ORCH_DB": str(env_db)})
        assert p.returncode == 0, p.stderr
        assert flag_db.is_file() and mode(flag_db) == 0o600
        with Orchestrator(flag_db) as o:
            assert len(o.list_tasks()) == 1
    with Orchestrator(env_db) as o:
        assert o.list_tasks() == []  # nothing went to ORCH_DB's file
    assert not (home / "data").exists()

    # ORCH_DB alone is used by an ordinary command too.
    p = orch_with_umask(0o022, "submit", "--payload", "2",
                        env={"OPENCLAW_HOME": str(home), "ORCH_DB": str(env_db)})
    assert p.returncode == 0, p.stderr
    with Orchestrator(env_db) as o:
        assert [i["payload"] for i in o.list_tasks()] == [2]


# --- (d) migrations --------------------------------------------------------------------


def schema(conn: apsw.Connection) -> list[tuple]:
    return rows(conn, "SELECT type, name, tbl_name, sql FROM sqlite_master "
                      "ORDER BY type, name")


def test_fresh_file_is_at_the_current_schema_version(db_path):
    Orchestrator(db_path).close()
    conn = raw(db_path)
    assert rows(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    conn.close()
    migration_numbers = sorted(int(p.name[:4]) for p in (SQL_DIR / "migrations").glob("*.sql"))
    assert SCHEMA_VERSION == migration_numbers[-1]
    assert migration_numbers == list(range(1, len(migration_numbers) + 1))


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "future.db"
    conn = raw(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for args in (["init"], ["status"], ["submit", "--payload", "1"]):
        p = orch_process(*args, db=db)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert p.stderr.startswith("orch: error: ") and len(p.stderr.splitlines()) == 1
        assert "newer" in p.stderr and str(SCHEMA_VERSION + 1) in p.stderr, p.stderr
    with pytest.raises(SchemaTooNew, match="newer"):
        Orchestrator(db)
    conn = raw(db)
    assert rows(conn, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert rows(conn, "SELECT name FROM sqlite_master") == []  # nothing was touched
    conn.close()


def test_a_version_1_file_keeps_its_history_through_migration_2(tmp_path):
    """0002 links events to their item's previous one; events written before it have no
    links and must stay findable, before and after new linked events of the same item."""
    db = tmp_path / "v1.db"
    conn = raw(db)
    conn.execute("PRAGMA journal_mode = WAL")
    with conn:
        conn.execute((SQL_DIR / "migrations" / "0001_initial.sql").read_text())
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    conn = raw(db)
    with conn:  # one item and its submitted event, as orch wrote them under schema 1
        conn.execute("INSERT INTO items (kind, queue, payload, status, max_attempts, run_after,"
                     " effect, created_at, updated_at)"
                     " VALUES ('task', 'default', '1', 'pending', 3, 0, 'idempotent', 0, 0)")
        detail = json.dumps({"kind": "task", "queue": "default", "parent_id": None,
                             "key": None, "priority": 0, "status": "pending", "attempts": 0,
                             "max_attempts": 3, "run_after": 0, "effect": "idempotent",
                             "payload_sha256": hashlib.sha256(b"1").hexdigest()},
                            separators=(",", ":"))
        h = ev.chain_hash(ev.GENESIS, 1, 0, 1, "submitted", None, None, detail)
        conn.execute("INSERT INTO event_log (seq, at, item_id, type, worker_id, fence, detail,"
                     " prev_hash, hash) VALUES (1, 0, 1, 'submitted', NULL, NULL, ?, ?, ?)",
                     (detail, ev.GENESIS, h))
    conn.close()
    with Orchestrator(db) as o:  # migrates
        c = o.claim_task("w1")
        o.release_task(c["id"], c["token"], "succeeded")
        assert [e["type"] for e in o.list_events(item_id=1)] == ["submitted", "claimed",
                                                                  "released"]
        assert [e["type"] for e in o.list_events(item_id=1, since=1)] == ["claimed",
                                                                           "released"]
        assert [e["type"] for e in o.list_events(item_id=1, limit=2)] == ["submitted",
                                                                           "claimed"]
        assert o.doctor()["ok"], o.doctor()
    conn = raw(db)
    assert rows(conn, "SELECT seq, item_prev FROM event_log ORDER BY seq") == \
        [(1, None), (2, 1), (3, 2)]
    assert rows(conn, "SELECT last_event FROM items") == [(3,)]
    assert not rows(conn, "SELECT 1 FROM sqlite_schema WHERE name = 'event_log_item'")
    conn.close()


def test_doctor_names_a_broken_item_link(busy_db):
    conn = raw(busy_db)
    conn.execute("UPDATE items SET last_event = 1 WHERE id = 2")
    conn.close()
    p = doctor_cli(busy_db)
    assert p.returncode == 1 and "item 2: names event 1 as its latest" in p.stdout, p.stdout


def test_empty_existing_file_is_migrated(tmp_path):
    db = tmp_path / "empty.db"
    db.touch()
    assert db.stat().st_size == 0
    p = orch_process("init", db=db)
    assert p.returncode == 0, p.stderr
    conn = raw(db)
    assert rows(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    conn.close()
    p = orch_process("submit", "--payload", '{"a": 1}', "--json", db=db)
    assert p.returncode == 0 and json.loads(p.stdout)["id"] == 1, p.stderr


def test_migrated_schema_equals_the_migration_files(db_path):
    Orchestrator(db_path).close()
    blank = apsw.Connection(":memory:")
    scripts = sorted((SQL_DIR / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql"))
    assert scripts
    for script in scripts:
        blank.execute(script.read_text())
    # The files shipped in the package are the repository's sql/ files.
    assert sorted(p.name for p in scripts) == \
        sorted(p.name for p in (ROOT / "sql" / "migrations").glob("*.sql"))
    conn = raw(db_path)
    try:
        assert schema(conn) == schema(blank)
        assert len(schema(conn)) >= 5
    finally:
        conn.close()
        blank.close()


def query_names_used_in_code() -> set[str]:
    """Every string literal in the first argument of a tx query method (tx.one(...))."""
    names: set[str] = set()
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("one", "all", "run", "run_many", "item", "items",
                                           "expired", "events", "scalar")
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "tx"
                    and node.args):
                for sub in ast.walk(node.args[0]):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        names.add(sub.value)
    return names


def test_every_query_named_in_the_code_exists():
    used = query_names_used_in_code()
    assert len(used) >= 20  # the scan really finds the calls
    assert {"events_since", "events_of_item", "next_claimable", "claim_item"} <= used
    missing = used - set(QUERIES)
    assert not missing, f"queries used but not defined: {sorted(missing)}"


def test_every_query_compiles_against_the_schema(db_path):
    Orchestrator(db_path).close()
    conn = raw(db_path)
    try:
        for name, sql in QUERIES.items():
            params = {p: None for p in re.findall(r"(?<!:):([A-Za-z_]\w*)", sql)}
            # EXPLAIN compiles the statement (tables, columns, INDEXED BY) without running it.
            try:
                conn.execute("EXPLAIN " + sql, params).fetchall()
            except apsw.Error as exc:
                pytest.fail(f"query {name}: {exc}")
    finally:
        conn.close()


def test_query_loader_rejects_duplicate_names():
    text = "-- name: a\nSELECT 1;\n\n-- name: b\nSELECT 2;\n"
    assert load_queries(text) == {"a": "SELECT 1;", "b": "SELECT 2;"}
    with pytest.raises(RuntimeError, match="'a'"):
        load_queries(text + "-- name: a\nSELECT 3;\n")
    assert load_queries((SQL_DIR / "queries.sql").read_text()) == QUERIES


# --- (e) busy --------------------------------------------------------------------------------


def test_submit_gives_up_with_exit_7_while_another_process_holds_the_write_lock(db_path,
                                                                               tmp_path):
    assert orch_process("init", db=db_path).returncode == 0
    holder = subprocess.Popen([sys.executable, str(HELPERS / "lock_holder.py"), str(db_path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        t0 = time.monotonic()
        p = orch_process("submit", "--payload", '{"x": 1}', db=db_path,
                         env={"ORCH_BUSY_TIMEOUT": "0.5"})
        elapsed = time.monotonic() - t0
        assert holder.poll() is None  # the lock was held the whole time
    finally:
        holder.stdin.close()
        holder.wait(timeout=10)
        holder.stdout.close()
        holder.stderr.close()
    assert holder.returncode == 0
    assert p.returncode == 7, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("orch: error: database is busy"), p.stderr
    assert p.stdout == ""
    assert 0.4 <= elapsed < 5, elapsed  # it honoured the 0.5 s budget, not the default 10 s
    # Nothing was written.
    conn = raw(db_path)
    assert rows(conn, "SELECT count(*) FROM items") == [(0,)]
    assert rows(conn, "SELECT count(*) FROM event_log") == [(0,)]
    conn.close()
    # With the lock gone the same command works.
    p = orch_process("submit", "--payload", '{"x": 1}', db=db_path,
                     env={"ORCH_BUSY_TIMEOUT": "0.5"})
    assert p.returncode == 0, p.stderr


# --- (f) backup --------------------------------------------------------------------------------


@pytest.mark.slow
def test_backup_while_another_process_writes(db_path, tmp_path):
    with Orchestrator(db_path) as o:
        o.submit_many([{"payload": {"n": i, "pad": "y" * 500}} for i in range(300)])
    err = open(tmp_path / "writer.err", "w")  # noqa: SIM115 -- the child process writes it; closed after
    writer = subprocess.Popen([sys.executable, str(HELPERS / "burst_writer.py"), str(db_path),
                               "bw"], stdout=subprocess.PIPE, stderr=err, text=True)
    err.close()
    dests = []
    try:
        for _ in range(20):  # the writer is under way
            assert writer.stdout.readline(), (tmp_path / "writer.err").read_text()
        for k in range(3):
            dest = tmp_path / "backups" / f"copy-{k}.db"
            p = orch_process("backup", str(dest), db=db_path)
            assert p.returncode == 0, p.stderr
            assert writer.poll() is None  # it kept writing throughout
            dests.append(dest)
            for _ in range(5):
                assert writer.stdout.readline()
    finally:
        writer.kill()
        writer.wait()
        writer.stdout.close()
    with Orchestrator(db_path) as o:
        final = o.status()["counts"]
    sizes = []
    for dest in dests:
        assert mode(dest) == 0o600
        p = orch_process("--db", str(dest), "doctor")
        assert p.returncode == 0, p.stdout + p.stderr
        conn = raw(dest)
        assert rows(conn, "PRAGMA integrity_check") == [("ok",)]
        assert rows(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
        n = rows(conn, "SELECT count(*) FROM items")[0][0]
        conn.close()
        assert n >= 300
        sizes.append(n)
    assert sizes == sorted(sizes)  # later copies saw later states
    assert sizes[-1] <= sum(final.values())
    # An existing destination is refused, not overwritten.
    p = orch_process("backup", str(dests[0]), db=db_path)
    assert p.returncode == 2 and "exists" in p.stderr
