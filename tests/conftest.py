"""Shared fixtures and helpers: real files in tmp_path, one frozen clock, the storage
backends the contract suite runs against, the CLI in-process and as a subprocess, real
helper processes (kill -9 included) and the daemon as a real subprocess.

The contract suite is every test that takes ``store`` or ``api`` (most of them live in
tests/contract/): it runs once per entry of BACKENDS, so a second storage backend is
done when the suite passes with it added there.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from freezegun import freeze_time

from orchestrator import OrchError, Orchestrator
from orchestrator.cli import run
from orchestrator.clock import now_ms

ROOT = Path(__file__).resolve().parent.parent
HELPERS = Path(__file__).resolve().parent / "helpers"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "orchestrator.db"


@pytest.fixture
def orch(db_path: Path):
    """The embedded API on db_path: for tests that also reach the file another way
    (the CLI, SQL, other processes). Tests of the operations alone take ``api``."""
    with Orchestrator(db_path) as o:
        yield o


# --- one clock ---------------------------------------------------------------------------

T0 = datetime(2025, 1, 1, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)


@pytest.fixture
def clock():
    """Time frozen at T0: every time the engine stores comes from
    ``orchestrator.clock.now_ms()``, so stored times are exact, and ``clock.tick(s)`` /
    ``at_ms(clock, ms)`` move them."""
    with freeze_time(T0) as frozen:
        yield frozen


def at_ms(frozen, ms: int) -> None:
    """Move the frozen clock to epoch milliseconds ``ms``."""
    frozen.move_to(datetime.fromtimestamp(ms / 1000, UTC))
    assert now_ms() == ms


def sleep_past(ms: int, margin_s: float = 0.05) -> None:
    """Sleep (real time) until epoch milliseconds ``ms`` have passed."""
    time.sleep(max(0.0, (ms - now_ms()) / 1000) + margin_s)
    assert now_ms() > ms


# --- the storage backends: the contract suite runs once per entry -----------------------


class SQLiteBackend:
    """The SQLite store: real files in a directory of tmp_path, opened by
    ``orchestrator.Orchestrator`` (over ``orchestrator.store.SQLiteStore``)."""

    name = "sqlite"

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = directory / "orchestrator.db"  # the store ``api`` works on

    def open(self, name: str = "orchestrator") -> Orchestrator:
        """The API on the store ``name``: the default one again (a restart), or another,
        new and empty."""
        return Orchestrator(self.directory / f"{name}.db")

    def snapshot(self) -> dict:
        """Every row of the default store, items in id order: two snapshots compare
        equal when a refused request changed nothing."""
        return snapshot(self.path)

    def commits(self, api: Orchestrator) -> list[int]:
        """A list that grows by one at each commit of ``api``'s connection."""
        commits: list[int] = []
        # SQLite calls the WAL hook once per commit
        api.store.conn.set_wal_hook(lambda _conn, _db, _frames: commits.append(1) or 0)
        return commits


#: The PostgreSQL server the tests use. Where ORCH_TEST_PG is set (CI sets it), a server
#: that does not answer fails the tests; where it is not, they skip with the reason.
PG_URL = os.environ.get("ORCH_TEST_PG", "postgresql://postgres@127.0.0.1/test")
_pg_down: list[str] = []


def pg_server() -> str:
    """The test server's URL, or skip (fail, under ORCH_TEST_PG) when it does not answer."""
    if not _pg_down:
        try:
            import psycopg

            psycopg.connect(PG_URL, connect_timeout=3).close()
            _pg_down.append("")
        except Exception as exc:  # noqa: BLE001 -- any failure to connect means "no server"
            _pg_down.append(f"no PostgreSQL server at {PG_URL} ({str(exc).strip()}); "
                            "set ORCH_TEST_PG to a server's URL to run these tests")
    if _pg_down[0]:
        if os.environ.get("ORCH_TEST_PG"):
            pytest.fail(_pg_down[0])
        pytest.skip(_pg_down[0])
    return PG_URL


class PgSchemas:
    """Schemas made for one test, each its own empty orch database; dropped at the end."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def url(self, name: str | None = None) -> str:
        """A URL whose search_path is a new schema (``name``, or a fresh one)."""
        import secrets

        import psycopg

        base = pg_server()
        schema = name or f"t_{secrets.token_hex(6)}"
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{schema}"')
        self.made.append(schema)
        sep = "&" if "?" in base else "?"
        return f"{base}{sep}options=-csearch_path%3D{schema}"

    def drop(self) -> None:
        if not self.made:
            return
        import psycopg

        with psycopg.connect(pg_server(), autocommit=True) as conn:
            for schema in self.made:
                conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@pytest.fixture
def pg_schemas():
    """New, empty PostgreSQL schemas for this test (``pg_schemas.url()``), dropped after."""
    schemas = PgSchemas()
    yield schemas
    schemas.drop()


class PostgresBackend:
    """The PostgreSQL store: a schema of its own on the test server per store, opened by
    ``orchestrator.Orchestrator`` with the tests' clock (freezegun moves it) instead of
    the server's."""

    name = "postgresql"

    def __init__(self, schemas: PgSchemas):
        self.schemas = schemas
        self.urls: dict[str, str] = {}
        self.path = self.url("orchestrator")

    def url(self, name: str) -> str:
        if name not in self.urls:
            self.urls[name] = self.schemas.url()
        return self.urls[name]

    def open(self, name: str = "orchestrator") -> Orchestrator:
        return Orchestrator(self.url(name), clock=now_ms)

    def snapshot(self) -> dict:
        import psycopg

        with psycopg.connect(self.path) as conn:
            return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                    for t in ("items", "workers", "event_log")}

    def commits(self, api: Orchestrator) -> _Counted:
        return _Counted(api.store)


class _Counted:
    """Grows by one at each commit of ``store`` from now on."""

    def __init__(self, store) -> None:
        self.store, self.start = store, store.commit_count

    def __len__(self) -> int:
        return self.store.commit_count - self.start


BACKENDS = {"sqlite": lambda tmp_path, _request: SQLiteBackend(tmp_path / "data"),
            "postgresql": lambda _tmp_path, request: PostgresBackend(
                request.getfixturevalue("pg_schemas"))}


@pytest.fixture(params=sorted(BACKENDS))
def store(request, tmp_path: Path):
    """One storage backend, empty: the contract suite's parameter."""
    return BACKENDS[request.param](tmp_path, request)


@pytest.fixture
def api(store):
    """The Python API on ``store``."""
    with store.open() as a:
        yield a


def events_of(db_or_api, item_id: int) -> list[dict]:
    """Every event of one item, oldest first: from an API handle (embedded or client), or
    read straight from a database file (Path) on a read-only connection."""
    if isinstance(db_or_api, Path):
        cols = ("seq", "at", "item_id", "type", "worker_id", "fence", "detail")
        rows = db_rows(db_or_api, f"SELECT {', '.join(cols)} FROM event_log "
                                  "WHERE item_id = ? ORDER BY seq", (item_id,))
        return [{**dict(zip(cols, r, strict=True)), "detail": json.loads(r[-1])}
                for r in rows]
    return db_or_api.list_events(item_id=item_id, limit=0)


def types_of(db_or_api, item_id: int) -> list[str]:
    return [e["type"] for e in events_of(db_or_api, item_id)]


def n_events(api) -> int:
    return len(api.list_events(limit=0))


def ceiling_ms(attempt: int) -> int:
    """The longest backoff after failed attempt ``attempt``."""
    return min(300_000, 1000 * 2 ** (attempt - 1))


def assert_backoff(item: dict, now: int, attempt: int) -> None:
    delta = item["run_after"] - now
    ceil = ceiling_ms(attempt)
    assert ceil // 2 <= delta <= ceil, (attempt, delta)


@pytest.fixture
def world(request):
    """A pending, a running (its token kept) and a succeeded item, made through the API
    the test takes: ``api``, or ``orch`` on db_path."""
    from helpers.bad_values import World

    return World(request.getfixturevalue("api" if "api" in request.fixturenames
                                         else "orch"))


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


# --- real helper processes --------------------------------------------------------------


def spawn(script: str, *args: str, log: Path, stdin: bool = False) -> subprocess.Popen:
    """tests/helpers/SCRIPT as its own process: stdout a text pipe, stderr to ``log``
    (and stdin a pipe when asked)."""
    with open(log, "w") as err:
        return subprocess.Popen([sys.executable, str(HELPERS / script), *args],
                                stdin=subprocess.PIPE if stdin else None,
                                stdout=subprocess.PIPE, stderr=err, text=True)


def close_pipes(p: subprocess.Popen) -> None:
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            f.close()


def reap(p: subprocess.Popen) -> None:
    """Kill ``p`` if it still runs (cleanup, whatever state the test left it in), wait
    for it, and close its pipes."""
    if p.poll() is None:
        p.kill()
    p.wait()
    close_pipes(p)


def kill9(p: subprocess.Popen) -> None:
    """kill -9: SIGKILL ``p``, see it die of that signal, and close its pipes."""
    os.kill(p.pid, signal.SIGKILL)
    assert p.wait(timeout=10) == -signal.SIGKILL
    close_pipes(p)


# --- many real processes released at once ----------------------------------------------


def sqlite_connection(db: Path):
    """A plain APSW connection, read and write: no orch code between the test and the
    file (to tamper with it, or to look at what orch does not show)."""
    import apsw

    return apsw.Connection(str(db))


def fetch_all(conn, sql: str, params=()) -> list[tuple]:
    return conn.execute(sql, params).fetchall()


def file_mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


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
            procs.append(spawn(script, *args_for(i), log=log_dir / f"racer-{i}.err",
                               stdin=True))
        for i, p in enumerate(procs):
            line = p.stdout.readline()
            assert line.strip() == "ready", (
                f"racer {i} did not get ready: {line!r} "
                f"{(log_dir / f'racer-{i}.err').read_text()}")
        yield procs
    finally:
        for p in procs:
            reap(p)


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


def ok(r: CliResult) -> None:
    assert r.code == 0, r
    assert r.err == "", r


def submit(cli, *args: str) -> int:
    """``orch submit --json ARGS`` through the ``cli`` fixture; the new item's id."""
    r = cli("submit", "--json", *args)
    ok(r)
    return r.json["id"]


def claim(cli, *args: str) -> dict:
    """``orch claim --worker w1 ARGS`` through the ``cli`` fixture; the claim."""
    r = cli("claim", "--worker", "w1", *args)
    ok(r)
    return r.json


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


def doctor_ok(db: Path) -> None:
    """``orch doctor`` on ``db``, in a process of its own, finds nothing wrong."""
    p = orch_process("doctor", db=db)
    assert p.returncode == 0, p.stdout + p.stderr


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
    """``orch daemon`` in a subprocess on ``db`` and ``sock``; stopped at teardown.

    Its stderr is read as it goes (a daemon that logs a lot, tracebacks of bad requests
    say, must not block on a full pipe): ``stderr_text()`` is what it wrote there, all of
    it once it has exited; ``log_text()`` is its log file."""

    def __init__(self, db: Path, sock: Path, *args: str, wrap: tuple[str, ...] = ()):
        self.db, self.sock, self.args, self.wrap = db, sock, args, tuple(wrap)
        self.proc: subprocess.Popen | None = None
        self.log = sock.with_name("daemon.log")
        self._stderr: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> DaemonProcess:
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
                    self._drain_stderr()
                    return self
                except OrchError:
                    pass  # not answering yet
            time.sleep(0.05)
        raise RuntimeError("daemon did not start")

    def _drain_stderr(self) -> None:
        pipe = self.proc.stderr

        def drain() -> None:
            try:
                while chunk := pipe.read(1 << 16):
                    self._stderr.append(chunk)
            except (ValueError, OSError):
                pass
        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()

    def stderr_text(self) -> str:
        if self._reader is not None and self.proc.poll() is not None:
            self._reader.join(10)
        return "".join(self._stderr)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    def client(self, **kw):
        from orchestrator.client import Client

        return Client(self.sock, **kw)

    def stop(self, sig: int | None = None, timeout: float = 20.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code

    def kill(self) -> None:
        """kill -9 (the daemon may be dead or wedged already: no graceful stop)."""
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


@pytest.fixture
def daemon(start_daemon) -> DaemonProcess:
    """A daemon on a new database of its own."""
    return start_daemon()


@pytest.fixture
def raw(daemon):
    """One raw connection to ``daemon`` (tests/helpers/daemon_wire.py)."""
    from helpers.daemon_wire import Raw

    with Raw(daemon.sock) as r:
        yield r
