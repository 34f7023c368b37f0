"""Shared fixtures: real database files in tmp_path, the CLI in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
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
    monkeypatch.delenv("ORCH_TOKEN", raising=False)


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


# --- many real processes released at once ----------------------------------------------


HELPERS = Path(__file__).resolve().parent / "helpers"


def db_rows(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """One query's rows, read straight from the file on a read-only connection."""
    import apsw

    conn = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@contextmanager
def racers(script: str, n: int, args_for, log_dir: Path):
    """n processes of tests/helpers/SCRIPT, yielded once each has printed "ready".

    Each waits for a "go" line on stdin (release_barrier) before every phase and
    answers one JSON line per phase (racer_answer).
    """
    procs: list[subprocess.Popen] = []
    try:
        for i in range(n):
            with open(log_dir / f"racer-{i}.err", "w") as err:
                procs.append(subprocess.Popen(
                    [sys.executable, str(HELPERS / script), *args_for(i)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True))
        for i, p in enumerate(procs):
            line = p.stdout.readline()
            assert line.strip() == "ready", (
                f"racer {i} did not get ready: {line!r} "
                f"{(log_dir / f'racer-{i}.err').read_text()}")
        yield procs
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
            for f in (p.stdin, p.stdout):
                if f is not None:
                    f.close()


def release_barrier(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        p.stdin.write("go\n")
    for p in procs:
        p.stdin.flush()


def racers_ready(procs: list[subprocess.Popen]) -> None:
    """Every racer says it is ready for the next round."""
    for i, p in enumerate(procs):
        assert p.stdout.readline().strip() == "ready", i


def racers_finish(procs: list[subprocess.Popen], log_dir: Path) -> None:
    """Tell every racer to stop (stdin closed); each must exit 0."""
    for i, p in enumerate(procs):
        p.stdin.close()
        p.stdin = None
        assert p.wait(timeout=30) == 0, (log_dir / f"racer-{i}.err").read_text()


def racer_answer(p: subprocess.Popen, i: int, log_dir: Path):
    line = p.stdout.readline()
    if not line:
        p.wait(timeout=10)
        pytest.fail(f"racer {i} exited {p.returncode} without an answer: "
                    f"{(log_dir / f'racer-{i}.err').read_text()}")
    return json.loads(line)


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def json(self):
        return json.loads(self.out)

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out!r}, err={self.err!r})"


def one_error_line(r, code: int) -> str:
    """The error contract: exit ``code``, nothing on stdout, one ``orch: error:`` line.

    ``r``: a CliResult, or a CompletedProcess of orch_process.
    """
    if isinstance(r, subprocess.CompletedProcess):
        r = CliResult(r.returncode, r.stdout, r.stderr)
    assert r.code == code, r
    assert r.out == "", r
    assert r.err.startswith("orch: error: "), r
    assert r.err.endswith("\n") and r.err.count("\n") == 1, r
    return r.err


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

    def __init__(self, db: Path, sock: Path, *args: str, wrap: tuple[str, ...] = ()):
        self.db, self.sock, self.args, self.wrap = db, sock, args, tuple(wrap)
        self.proc: subprocess.Popen | None = None
        self.log = sock.with_name("daemon.log")

    def start(self, timeout: float = 15.0) -> DaemonProcess:
        import time

        from orchestrator.client import Client

        cmd = [*self.wrap, sys.executable, "-m", "orchestrator", "--db", str(self.db), "--socket",
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
    """start_daemon(*extra_args, db=None, sock=None, wrap=()) -> a running DaemonProcess
    (``wrap``: a command that runs it, such as tests/helpers/fd_limit.py)."""
    started: list[DaemonProcess] = []

    def start(*args: str, db: Path | None = None, sock: Path | None = None,
              wrap: tuple[str, ...] = ()) -> DaemonProcess:
        d = DaemonProcess(db or short_tmp / "orch.db", sock or short_tmp / "orch.sock",
                          "--recover-every", "0.5", *args, wrap=wrap)
        started.append(d.start())
        return d

    yield start
    for d in started:
        d.stop()
