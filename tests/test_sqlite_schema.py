"""The SQLite file's schema: numbered migrations applied in order and tracked in
user_version (a newer file refused, an older or empty one migrated with its history
kept), the migrated schema equal to the migration files, and every named query
defined once and compiling against it."""

from __future__ import annotations

import ast
import hashlib
import json
import re

import apsw
import pytest
from conftest import ROOT, fetch_all, orch_process, sqlite_connection

from orchestrator import Orchestrator, SchemaTooNew
from orchestrator import events as ev
from orchestrator.postgres import QUERIES as PG_QUERIES
from orchestrator.store import QUERIES, SCHEMA_VERSION, SQL_DIR, load_queries


def schema(conn: apsw.Connection) -> list[tuple]:
    return fetch_all(conn, "SELECT type, name, tbl_name, sql FROM sqlite_master "
                      "ORDER BY type, name")


def test_fresh_file_is_at_the_current_schema_version(db_path):
    Orchestrator(db_path).close()
    conn = sqlite_connection(db_path)
    assert fetch_all(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    conn.close()
    migration_numbers = sorted(int(p.name[:4]) for p in (SQL_DIR / "migrations").glob("*.sql"))
    assert SCHEMA_VERSION == migration_numbers[-1]
    assert migration_numbers == list(range(1, len(migration_numbers) + 1))


def test_newer_schema_is_refused(tmp_path):
    db = tmp_path / "future.db"
    conn = sqlite_connection(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    for args in (["init"], ["status"], ["submit", "--payload", "1"]):
        p = orch_process(*args, db=db)
        assert p.returncode == 1, (args, p.returncode, p.stderr)
        assert p.stderr.startswith("orch: error: ") and len(p.stderr.splitlines()) == 1
        assert "newer" in p.stderr and str(SCHEMA_VERSION + 1) in p.stderr, p.stderr
    with pytest.raises(SchemaTooNew, match="newer"):
        Orchestrator(db)
    conn = sqlite_connection(db)
    assert fetch_all(conn, "PRAGMA user_version") == [(SCHEMA_VERSION + 1,)]
    assert fetch_all(conn, "SELECT name FROM sqlite_master") == []  # nothing was touched
    conn.close()


def test_a_version_1_file_keeps_its_history_through_migration_2(tmp_path):
    """0002 links events to their item's previous one; events written before it have no
    links and must stay findable, before and after new linked events of the same item."""
    db = tmp_path / "v1.db"
    conn = sqlite_connection(db)
    conn.execute("PRAGMA journal_mode = WAL")
    with conn:
        conn.execute((SQL_DIR / "migrations" / "0001_initial.sql").read_text())
        conn.execute("PRAGMA user_version = 1")
    conn.close()
    conn = sqlite_connection(db)
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
    conn = sqlite_connection(db)
    assert fetch_all(conn, "SELECT seq, item_prev FROM event_log ORDER BY seq") == \
        [(1, None), (2, 1), (3, 2)]
    assert fetch_all(conn, "SELECT last_event FROM items") == [(3,)]
    assert not fetch_all(conn, "SELECT 1 FROM sqlite_schema WHERE name = 'event_log_item'")
    conn.close()


def test_empty_existing_file_is_migrated(tmp_path):
    db = tmp_path / "empty.db"
    db.touch()
    assert db.stat().st_size == 0
    p = orch_process("init", db=db)
    assert p.returncode == 0, p.stderr
    conn = sqlite_connection(db)
    assert fetch_all(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
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
    conn = sqlite_connection(db_path)
    try:
        assert schema(conn) == schema(blank)
        assert len(schema(conn)) >= 5
    finally:
        conn.close()
        blank.close()


def query_names_used_in_code() -> set[str]:
    """Every string literal in the first argument of tx.one/all/run/run_many(...) (or
    of the same calls on another transaction, named ..._tx)."""
    names: set[str] = set()
    for path in sorted((ROOT / "orchestrator").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("one", "all", "run", "run_many", "item", "items",
                                           "expired", "events", "scalar")
                    and isinstance(node.func.value, ast.Name)
                    and (node.func.value.id == "tx" or node.func.value.id.endswith("_tx"))
                    and node.args):
                for sub in ast.walk(node.args[0]):
                    if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                        names.add(sub.value)
    return names


def test_every_query_named_in_the_code_exists():
    used = query_names_used_in_code()
    assert len(used) >= 20  # the scan really finds the calls
    assert {"events_since", "events_of_item", "next_claimable", "claim_item"} <= used
    # Some run on PostgreSQL only (orch copy's writes, doctor's read of orch_meta).
    missing = used - set(QUERIES) - set(PG_QUERIES)
    assert not missing, f"queries used but not defined: {sorted(missing)}"
    assert {"copy_event", "items_after"} <= used


def test_every_query_compiles_against_the_schema(db_path):
    Orchestrator(db_path).close()
    conn = sqlite_connection(db_path)
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
