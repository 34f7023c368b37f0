"""Shared fixtures: real database files in tmp_path, the CLI in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import OrchError, Orchestrator
from orchestrator.cli import run

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "orchestrator.db"


@pytest.fixture
def orch(db_path: Path):
    with Orchestrator(db_path) as o:
        yield o


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may touch the real ~/.openclaw, or find a daemon of the person running them.
    monkeypatch.setenv("OPENCLAW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ORCH_DB", raising=False)
    monkeypatch.delenv("ORCH_SOCKET", raising=False)


def snapshot(db: Path) -> dict:
    """Every row of every table, read straight from the file on a connection of its own.

    Tests compare two snapshots to prove that a refused request changed nothing.
    """
    import apsw

    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        tables = [t for (t,) in conn.execute(
            "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
        assert {"items", "event_log"} <= set(tables)
        return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1').fetchall() for t in tables}
    finally:
        conn.close()


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


@pytest.fixture
def cli(db_path: Path, capsys: pytest.CaptureFixture):
    """Run ``orch`` in-process against db_path: cli("submit", "--payload", "1")."""
    def invoke(*args: str) -> CliResult:
        capsys.readouterr()
        code = run(["--db", str(db_path), *args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)
    return invoke


def orch_process(*args: str, db: Path | None = None, env: dict | None = None,
                 timeout: float = 60, input: str | None = None) -> subprocess.CompletedProcess:
    """Run ``orch`` as a real subprocess (exit codes, signals, several processes)."""
    full_env = {**os.environ, **(env or {})}
    cmd = [sys.executable, "-m", "orchestrator", *(["--db", str(db)] if db else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=full_env, input=input, check=False)


@pytest.fixture
def orch_cli(db_path: Path):
    def invoke(*args: str, **kw) -> subprocess.CompletedProcess:
        return orch_process(*args, db=db_path, **kw)
    return invoke


# --- the daemon as a real subprocess ----------------------------------------------------


@pytest.fixture
def short_tmp():
    """A short directory: Unix socket paths must stay under ~100 bytes."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="orch-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


class DaemonProcess:
    """``orch daemon`` in a subprocess on ``db`` and ``sock``; stopped at teardown."""

    def __init__(self, db: Path, sock: Path, *args: str):
        self.db, self.sock, self.args = db, sock, args
        self.proc: subprocess.Popen | None = None
        self.log = sock.with_name("daemon.log")

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        import time

        from orchestrator.client import Client

        cmd = [sys.executable, "-m", "orchestrator", "--db", str(self.db), "--socket",
               str(self.sock), "daemon", "--log-file", str(self.log), *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited {self.proc.returncode}: "
                                   f"{self.proc.stderr.read()}")
            if self.sock.exists():
                try:
                    with Client(self.sock, connect_within=0) as c:
                        c.ping()
                    return self
                except OrchError:
                    pass  # not answering yet
            time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def client(self, **kw):
        from orchestrator.client import Client

        return Client(self.sock, **kw)

    def stop(self, sig: int | None = None, timeout: float = 20.0) -> int:
        import signal

        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def kill(self) -> None:
        import signal

        self.stop(signal.SIGKILL)


@pytest.fixture
def start_daemon(short_tmp: Path):
    """start_daemon(*extra_args, db=None) -> a running DaemonProcess."""
    started: list[DaemonProcess] = []

    def start(*args: str, db: Path | None = None, sock: Path | None = None) -> DaemonProcess:
        d = DaemonProcess(db or short_tmp / "orch.db", sock or short_tmp / "orch.sock",
                          "--recover-every", "0.5", *args)
        started.append(d.start())
        return d

    yield start
    for d in started:
        d.stop()
