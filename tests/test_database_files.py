"""Which commands make the database file, and what orch does with a file that is not its own.

A missing file is created by init, the daemon and the commands that write; read
commands on a missing file exit 5 and create nothing. A file without orch's schema,
an empty one included (a truncated database looks exactly like that), is refused by
every command but init, and left as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys

import apsw
import pytest
from conftest import orch_process

from orchestrator import NotFound, Orchestrator
from orchestrator.store import SCHEMA_VERSION

READS = [["ls"], ["show", "1"], ["events"], ["events", "--item", "1"], ["status"],
         ["why", "1"], ["replay", "--session", "1"], ["verify", "1", "--token", "x"],
         ["doctor"], ["backup", "BACKUP"]]
WRITES = [["submit", "--payload", "1"], ["claim", "--worker", "w"], ["recover"],
          ["session", "start", "--worker", "w"]]


def args_for(cmd: list[str], tmp_path) -> list[str]:
    return [str(tmp_path / "copy.db") if a == "BACKUP" else a for a in cmd]


@pytest.mark.parametrize("cmd", READS, ids=lambda c: " ".join(c))
def test_a_read_command_on_a_missing_file_says_so_and_creates_nothing(tmp_path, cmd):
    db = tmp_path / "mistyped.db"
    p = orch_process(*args_for(cmd, tmp_path), db=db)
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert p.stderr == f"orch: error: database {db} does not exist (orch init creates it)\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("cmd", WRITES, ids=lambda c: " ".join(c))
def test_a_write_command_creates_a_missing_file(tmp_path, cmd):
    db = tmp_path / "new" / "orch.db"
    p = orch_process(*cmd, db=db)
    assert p.returncode in (0, 3), p.stderr  # 3: nothing to claim in a new file
    with Orchestrator(db, create=False) as o:
        assert o.status()["schema_version"] == SCHEMA_VERSION
    assert sorted(f.name for f in db.parent.iterdir() if not f.name.startswith("orch.db-")) \
        == ["orch.db"]  # no temporary file left behind


def make_foreign(db, kind: str) -> bytes:
    if kind == "empty":
        db.write_bytes(b"")
    else:
        conn = apsw.Connection(str(db))
        conn.execute("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')")
        conn.close()
    return db.read_bytes()


@pytest.mark.parametrize("kind", ["empty", "foreign"])
@pytest.mark.parametrize("cmd", READS[:3] + WRITES, ids=lambda c: " ".join(c))
def test_a_file_without_orchs_schema_is_refused_and_left_alone(tmp_path, kind, cmd):
    db = tmp_path / "orch.db"
    before = make_foreign(db, kind)
    p = orch_process(*args_for(cmd, tmp_path), db=db)
    assert p.returncode == 5, (p.returncode, p.stderr)
    assert p.stderr.startswith(f"orch: error: {db} ") and "not an orch database" in p.stderr
    assert len(p.stderr.splitlines()) == 1
    assert db.read_bytes() == before
    with pytest.raises(NotFound, match="not an orch database"):
        Orchestrator(db)


def test_the_daemon_refuses_an_empty_file(tmp_path):
    db = tmp_path / "orch.db"
    db.write_bytes(b"")
    p = subprocess.run([sys.executable, "-m", "orchestrator", "--db", str(db), "--socket",
                        str(tmp_path / "s.sock"), "daemon", "--log-file",
                        str(tmp_path / "log")], capture_output=True, text=True, timeout=60,
                       check=False)
    assert p.returncode == 5, p.stderr
    assert "is empty: it is not an orch database" in p.stderr
    assert db.read_bytes() == b""


def test_init_makes_an_empty_file_a_database_but_not_someone_elses(tmp_path):
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    p = orch_process("init", db=empty)
    assert p.returncode == 0, p.stderr
    with Orchestrator(empty) as o:
        assert o.submit_task(1)["id"] == 1

    foreign = tmp_path / "notes.db"
    before = make_foreign(foreign, "foreign")
    p = orch_process("init", db=foreign)
    assert p.returncode == 5 and "has no orch schema" in p.stderr, p.stderr
    assert foreign.read_bytes() == before


def test_many_processes_making_one_new_file_all_succeed(tmp_path):
    """The file appears whole (built aside, linked into place): no racer sees it half made
    and mistakes it for a foreign or truncated one."""
    db = tmp_path / "race" / "orch.db"
    procs = [subprocess.Popen([sys.executable, "-m", "orchestrator", "--db", str(db), "submit",
                               "--payload", str(i), "--json"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(8)]
    ids = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        ids.append(json.loads(out)["id"])
    assert sorted(ids) == list(range(1, 9))
    assert [f.name for f in db.parent.iterdir() if f.name.startswith(".")] == []


def test_a_read_that_fails_in_the_database_reports_that_error(tmp_path, start_daemon):
    """A query that fails inside a read transaction rolls back and its own error reaches
    the caller, mapped like every other (exit 7 / UNAVAILABLE), not an internal error."""
    db = tmp_path / "orch.db"
    with Orchestrator(db) as o:
        s = o.start_session("w1")
        o.create_goal(s["id"], s["token"])
    conn = apsw.Connection(str(db))
    conn.execute("DROP INDEX items_parent")  # a foreign hand breaks the schema
    conn.close()
    p = orch_process("replay", "--session", "1", db=db)
    assert p.returncode == 7, p.stderr
    assert p.stderr == "orch: error: database error: no such index: items_parent\n"
    d = start_daemon(db=db)
    with d.client() as c:
        for _ in range(2):  # the reader's transaction was ended: it still serves
            with pytest.raises(Exception) as info:
                c.replay_session(1)
            assert "no such index: items_parent" in str(info.value)
            assert type(info.value).__name__ == "Unavailable"
            assert c.get_task(1)["kind"] == "session"
