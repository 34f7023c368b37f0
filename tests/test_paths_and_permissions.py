"""Private by default: directories are made 0700 and the database, its -wal and -shm,
the socket and the logs (rotated ones too) 0600, whatever the umask; ORCH_DB and --db
choose the file; only the socket owner's uid is served, whatever the file modes say."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import HELPERS, fetch_all, file_mode, sqlite_connection

from orchestrator import Orchestrator
from orchestrator.store import SCHEMA_VERSION


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
    assert file_mode(home) == 0o700
    assert file_mode(home / "data") == 0o700
    assert file_mode(db) == 0o600
    conn = sqlite_connection(db)
    assert fetch_all(conn, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert fetch_all(conn, "PRAGMA journal_mode") == [("wal",)]
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
    assert env_db.is_file() and file_mode(env_db) == 0o600
    assert file_mode(env_db.parent) == 0o700 and file_mode(env_db.parent.parent) == 0o700
    assert not (home / "data" / "orchestrator.db").exists()

    # --db beats ORCH_DB, before or after the command name.
    for i, where in enumerate(("before", "after")):
        flag_db = tmp_path / f"flag-{where}.db"
        args = (["--db", str(flag_db), "submit", "--payload", "1"] if where == "before"
                else ["submit", "--payload", "1", "--db", str(flag_db)])
        p = orch_with_umask(0o022, *args, env={"OPENCLAW_HOME": str(home),
                                               "ORCH_DB": str(env_db)})
        assert p.returncode == 0, p.stderr
        assert flag_db.is_file() and file_mode(flag_db) == 0o600
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
