"""Private by default: directories are made 0700 and the database, its -wal and -shm,
the socket and the logs (rotated ones too) 0600, whatever the umask; ORCH_DB and --db
choose the file; only the socket owner's uid is served, whatever the file modes say."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import (
    HELPERS,
    DaemonProcess,
    db_rows,
    fetch_all,
    file_mode,
    snapshot,
    sqlite_connection,
)
from helpers.daemon_wire import INVALID_REQUEST, serves, wait_until

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


def test_file_modes(short_tmp):
    db = short_tmp / "data" / "sub" / "orch.db"
    sock = short_tmp / "run" / "sub" / "orch.sock"
    old = os.umask(0)  # the daemon must not depend on a careful umask
    try:
        d = DaemonProcess(db, sock, "--recover-every", "0.5").start()
    finally:
        os.umask(old)
    try:
        with d.client() as c:
            c.submit_task({"x": 1})

        def mode(p: Path) -> int:
            return stat.S_IMODE(p.lstat().st_mode)
        assert stat.S_ISSOCK(sock.lstat().st_mode) and mode(sock) == 0o600
        for directory in (sock.parent, sock.parent.parent, db.parent, db.parent.parent):
            assert mode(directory) == 0o700, directory
        assert mode(db) == 0o600
        for suffix in ("-wal", "-shm"):
            f = db.with_name(db.name + suffix)
            if f.exists():
                assert mode(f) == 0o600, f
        assert d.log.parent == sock.parent and mode(d.log) == 0o600
    finally:
        assert d.stop() == 0


def test_log_files_are_private_rotated_ones_too(short_tmp):
    run = short_tmp / "run"
    run.mkdir(mode=0o700)
    log = run / "daemon.log"  # where DaemonProcess logs
    log.write_text("left by an older orch\n")
    os.chmod(log, 0o644)
    os.truncate(log, 10 << 20)  # full: the daemon's first line rotates it
    old = os.umask(0)
    try:
        d = DaemonProcess(short_tmp / "orch.db", run / "orch.sock").start()
    finally:
        os.umask(old)
    try:
        assert wait_until(lambda: len(list(run.glob("daemon*.log"))) == 2, 5)
        for f in run.glob("daemon*.log"):
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
        assert "orch daemon serving" in log.read_text()  # the new file
    finally:
        assert d.stop() == 0


STRANGER = r"""
import json, socket, sys
path, queue = sys.argv[1], sys.argv[2]
out = {"connected": False, "closed": False, "timeout": False, "lines": []}
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(path)
    out["connected"] = True
    try:
        s.sendall(('{"jsonrpc":"2.0","id":1,"method":"submitTask","params":{"queue":"%s"}}\n'
                   '{"jsonrpc":"2.0","id":2,"method":"ping"}\n' % queue).encode())
    except OSError as exc:
        out["send_error"] = repr(exc)
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except socket.timeout:
            out["timeout"] = True
            break
        except OSError as exc:
            out["closed"] = True
            out["recv_error"] = repr(exc)
            break
        if not chunk:
            out["closed"] = True
            break
        buf += chunk
        if buf.count(b"\n") >= 2:
            break
    out["lines"] = [json.loads(x) for x in buf.splitlines() if x.strip()]
except OSError as exc:
    out["connect_error"] = repr(exc)
finally:
    s.close()
print(json.dumps(out))
"""


def _python_for(user: str) -> str | None:
    for exe in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not exe:
            continue
        try:
            p = subprocess.run([exe, "-I", "-c", "pass"], user=user, capture_output=True,
                               timeout=20, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if p.returncode == 0:
            return exe
    return None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a process as another uid")
def test_another_uid_is_refused(start_daemon, short_tmp):
    python = _python_for("nobody")
    if python is None:
        pytest.skip("no Python that the user nobody may run")
    os.chmod(short_tmp, 0o711)
    public = short_tmp / "pub"
    public.mkdir()
    os.chmod(public, 0o777)
    d = start_daemon(sock=public / "orch.sock")
    os.chmod(d.sock, 0o666)  # only the peer-credential check stands in the way now

    def stranger(queue: str, user: str | None) -> dict:
        p = subprocess.run([python if user else sys.executable, "-I", "-c", STRANGER,
                            str(d.sock), queue], user=user, capture_output=True, text=True,
                           timeout=30, check=False)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    mine = stranger("owner", None)  # the same script as the owner: served
    assert [line.get("id") for line in mine["lines"]] == [1, 2]
    assert all("result" in line for line in mine["lines"]), mine
    before = snapshot(d.db)

    theirs = stranger("intruder", "nobody")
    assert theirs["connected"] is True, theirs  # the file modes let it in...
    assert theirs["closed"] is True and not theirs["timeout"], theirs  # ...the daemon did not
    assert all("result" not in line for line in theirs["lines"]), theirs
    for line in theirs["lines"]:
        assert line["error"]["code"] == INVALID_REQUEST
        assert line["error"]["data"]["reason"] == "forbidden"
    assert snapshot(d.db) == before
    assert db_rows(d.db, "SELECT count(*) FROM items WHERE queue='intruder'") == [(0,)]
    assert serves(d.sock)
