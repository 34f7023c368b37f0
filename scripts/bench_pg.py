#!/usr/bin/env python3
"""orch on PostgreSQL beside procrastinate and pgqueuer, on one local server, in one run.

The peers are not orch's dependencies: they live in the benchmark's own venv.

    python scripts/bench_pg.py --make-venv                # /tmp/orch-bench-venv
    # which is: python -m venv /tmp/orch-bench-venv, then pip install orch's
    # dependencies (psycopg among them) and the bench-pg extra of pyproject.toml
    # (procrastinate pgqueuer asyncpg); orch itself runs from this checkout, not installed.
    /tmp/orch-bench-venv/bin/python scripts/bench_pg.py                # everything
    /tmp/orch-bench-venv/bin/python scripts/bench_pg.py --only peers   # procrastinate, pgqueuer
    /tmp/orch-bench-venv/bin/python scripts/bench_pg.py --only orch    # orch's rows alone
    /tmp/orch-bench-venv/bin/python scripts/bench_pg.py --quick        # tiny: checks it runs
    # each orch daemon with one writer lane (default 4: orch daemon --writer-lanes)
    ORCH_BENCH_WRITER_LANES=1 /tmp/orch-bench-venv/bin/python scripts/bench_pg.py --only orch

Every run: a fresh database is created on the server (--pg, default
postgresql://postgres@127.0.0.1/test, which is only used to CREATE and DROP it), N jobs
are submitted, then W worker processes each loop claim -> (no work) -> release as
succeeded, as fast as they can, for --seconds or until the jobs run out; the database is
dropped afterwards. Each worker sends back the job numbers its loop delivered, so the
figures are:

  cycles/s     jobs delivered / (last delivery - first worker's start)
  duplicates   deliveries beyond the first of a job: must be 0
  done         jobs the system's own tables count as completed afterwards (a job
               delivered but not recorded done would show as delivered > done)

The rows:
  raw SQL        the floor under a queue that hands out one job at a time: plain
                 psycopg, claim with FOR UPDATE SKIP LOCKED then ack, two transactions
                 a cycle ("2 tx") or the ack and the next claim in one ("1 tx").
  procrastinate  W processes, each procrastinate's own worker (run_worker_async,
                 concurrency 1, LISTEN/NOTIFY and polling as it defaults) on an async
                 no-op task.
  pgqueuer       W processes, each a QueueManager (asyncpg) with a no-op entrypoint,
                 run() as it defaults: it dequeues 10 jobs at a time and writes the
                 completions in batches, so its "cycle" is not one job's round trip.
                 "pgqueuer, batch 1": run(batch_size=1), one job per dequeue and each
                 completion written at once.
  orch daemon    W processes, each an orchestrator.client.Client on one
                 `orch daemon --db postgresql://...`: releaseAndClaim (the release and
                 the next claim in one call), or claim + release with --orch-loop pair.
  orch 2 daemons 2 daemons (own socket, own OPENCLAW_HOME) on the same database, 4
                 workers on each: with 1 daemon x 4 it gives the ratio that shows
                 whether independent claimers scale.
  orch embedded  W processes, each Orchestrator("postgresql://...") in-process.

Runs are interleaved (every row once per round) so a load change on the machine hits
every row alike. Each run also reports the CPU milliseconds per cycle spent by the
server's backends for that database, by orch's daemons and by the workers, and how
busy the whole machine was: where the cores are the limit, more daemons cannot help.
And what those backends were doing, sampled 5 times a second: the share of samples of
a backend running a statement in which it waited on a lock ("lock waits") is what
claimers queueing behind one another would show as.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_PG = "postgresql://postgres@127.0.0.1/test"
DEFAULT_VENV = Path("/tmp/orch-bench-venv")
SUBMIT_BATCH = 5000


def with_dbname(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _admin(url: str):
    import psycopg
    return psycopg.connect(url, autocommit=True)


def create_db(admin_url: str, name: str) -> str:
    from psycopg import sql
    with _admin(admin_url) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(admin_url, name)


def drop_db(admin_url: str, name: str) -> None:
    from psycopg import sql
    with _admin(admin_url) as c:
        c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def count(url: str, query: str) -> int:
    with _admin(url) as c:
        row = c.execute(query).fetchone()
    return int(row[0]) if row else 0


# --- the systems -----------------------------------------------------------------------------
# Each: prepare(url, n, workers, tmp) submits jobs 0..n-1 and starts what serves them
# (orch's daemons), returning those processes; consume(url, w, workers, tmp, started)
# runs in worker process w, calls started() once it is connected (which blocks until
# every worker is, then returns the deadline), and returns the job numbers it delivered
# with the time of the last one; done(url) counts the jobs the system recorded as
# completed.


class _Stamped(list):
    """The job numbers a peer's own loop delivered, noting when the last one came."""

    last = 0.0

    def append(self, x: Any) -> None:
        super().append(x)
        self.last = time.monotonic()


class Procrastinate:
    name = "procrastinate"

    @staticmethod
    def _app(url: str, sink: list[int] | None = None):
        import procrastinate
        # Its advice against an App built in the main module is about task names, which
        # are fixed below.
        logging.getLogger("procrastinate.blueprints").setLevel(logging.ERROR)
        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=url))

        # A fixed name: the task's module is __main__ in one process, __mp_main__ in another.
        @app.task(name="noop")
        async def noop(i: int) -> None:
            if sink is not None:
                sink.append(i)
        return app, noop

    @classmethod
    def prepare(cls, url: str, n: int, workers: int, tmp: Path) -> list[subprocess.Popen]:
        async def fill() -> None:
            app, noop = cls._app(url)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()
                for start in range(0, n, SUBMIT_BATCH):
                    await noop.batch_defer_async(*({"i": i} for i in
                                                   range(start, min(n, start + SUBMIT_BATCH))))
        asyncio.run(fill())
        return []

    @classmethod
    def consume(cls, url: str, w: int, workers: int, tmp: Path, started) -> tuple[list, float]:
        got = _Stamped()

        async def run() -> None:
            app, _ = cls._app(url, got)
            async with app.open_async():
                deadline = started()
                # wait=False: the worker returns once the queue is empty; the timeout
                # cancels it, which procrastinate turns into a graceful stop.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(app.run_worker_async(
                        wait=False, install_signal_handlers=False, name=f"w{w}"),
                        timeout=max(0.0, deadline - time.monotonic()))
        asyncio.run(run())
        return list(got), got.last

    @staticmethod
    def done(url: str) -> int:
        return count(url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'")


class PgQueuer:
    name = "pgqueuer"
    batch_size = 10  # run()'s default

    @classmethod
    def prepare(cls, url: str, n: int, workers: int, tmp: Path) -> list[subprocess.Popen]:
        async def fill() -> None:
            import asyncpg
            from pgqueuer import AsyncpgDriver, Queries
            conn = await asyncpg.connect(url)
            try:
                q = Queries(AsyncpgDriver(conn))
                await q.install()
                for start in range(0, n, SUBMIT_BATCH):
                    k = min(n, start + SUBMIT_BATCH) - start
                    await q.enqueue(["noop"] * k,
                                    [str(i).encode() for i in range(start, start + k)], [0] * k)
            finally:
                await conn.close()
        asyncio.run(fill())
        return []

    @classmethod
    def consume(cls, url: str, w: int, workers: int, tmp: Path, started) -> tuple[list, float]:
        got = _Stamped()

        async def run() -> None:
            import asyncpg
            from pgqueuer import Queries, QueueManager
            from pgqueuer.types import QueueExecutionMode
            conn = await asyncpg.connect(url)
            try:
                qm = QueueManager(Queries.from_asyncpg_connection(conn))

                @qm.entrypoint("noop")
                async def noop(job) -> None:
                    got.append(int(job.payload))

                deadline = started()
                asyncio.get_running_loop().call_later(max(0.0, deadline - time.monotonic()),
                                                      qm.shutdown.set)
                # drain: return once the queue is empty; shutdown: at the deadline.
                await qm.run(mode=QueueExecutionMode.drain, batch_size=cls.batch_size)
            finally:
                await conn.close()
        asyncio.run(run())
        return list(got), got.last

    @staticmethod
    def done(url: str) -> int:
        return count(url, "SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")


class PgQueuerOne(PgQueuer):
    """pgqueuer taking one job per dequeue (run(batch_size=1)), which also flushes each
    completion at once: its cost per job when it does not batch."""

    name = "pgqueuer, batch 1"
    batch_size = 1


def orch_loop(o, worker: str, deadline: float, together: bool) -> tuple[list, float]:
    """claim -> release as succeeded until ``deadline`` or no claimable item is left;
    ``together``: each release claims the next (releaseAndClaim, one call a cycle)."""
    got: list[int] = []
    last = time.monotonic()
    c = o.claim_task(worker, ttl=60)
    while c is not None:
        got.append(c["payload"])
        last = time.monotonic()
        if together and last < deadline:
            c = o.release_and_claim(c["id"], c["token"], "succeeded")["next"]
            continue
        o.release_task(c["id"], c["token"], "succeeded")
        c = o.claim_task(worker, ttl=60) if last < deadline else None
    return got, last


class Raw:
    """The floor under any queue that hands out one job at a time: plain psycopg on a
    two-column table, claim = UPDATE ... WHERE id = (SELECT ... FOR UPDATE SKIP LOCKED
    LIMIT 1) RETURNING, ack = UPDATE, each its own transaction (two commits a cycle,
    as procrastinate does). No lease, no event, no fence."""

    name = "raw SQL, 2 tx"
    CLAIM = ("UPDATE jobs SET status = 'doing' WHERE id = (SELECT id FROM jobs WHERE "
             "status = 'todo' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id, n")
    ACK = "UPDATE jobs SET status = 'done' WHERE id = %s"
    together = False

    @staticmethod
    def prepare(url: str, n: int, workers: int, tmp: Path) -> list[subprocess.Popen]:
        with _admin(url) as c:
            c.execute("CREATE TABLE jobs (id bigserial PRIMARY KEY, n int NOT NULL, "
                      "status text NOT NULL DEFAULT 'todo')")
            c.execute("CREATE INDEX jobs_todo ON jobs (id) WHERE status = 'todo'")
            c.execute("INSERT INTO jobs (n) SELECT generate_series(0, %s - 1)", (n,))
        return []

    @classmethod
    def consume(cls, url: str, w: int, workers: int, tmp: Path, started) -> tuple[list, float]:
        import psycopg
        got: list[int] = []
        with psycopg.connect(url) as c:
            deadline = started()
            last = time.monotonic()
            with c.transaction():
                row = c.execute(cls.CLAIM).fetchone()
            while row is not None:
                got.append(row[1])
                last = time.monotonic()
                going = last < deadline
                with c.transaction():
                    c.execute(cls.ACK, (row[0],))
                    row = c.execute(cls.CLAIM).fetchone() if cls.together and going else None
                if going and not cls.together:
                    with c.transaction():
                        row = c.execute(cls.CLAIM).fetchone()
        return got, last

    @staticmethod
    def done(url: str) -> int:
        return count(url, "SELECT count(*) FROM jobs WHERE status = 'done'")


class RawNext(Raw):
    """As ``Raw``, but each ack and the next claim share a transaction (one commit a
    cycle, as orch's releaseAndClaim)."""

    name = "raw SQL, 1 tx"
    together = True


class OrchEmbedded:
    name = "orch embedded"
    daemons = 0
    together = True

    @staticmethod
    def prepare(url: str, n: int, workers: int, tmp: Path) -> list[subprocess.Popen]:
        from orchestrator import Orchestrator
        if not (ROOT / "sql" / "postgres").is_dir():
            # An orch without the store would take the URL for a file name.
            raise RuntimeError(f"orch in {ROOT} has no PostgreSQL store (no sql/postgres/)")
        with Orchestrator(url) as o:
            for start in range(0, n, SUBMIT_BATCH):
                o.submit_many([{"payload": i} for i in range(start, min(n, start + SUBMIT_BATCH))])
        return []

    @classmethod
    def consume(cls, url: str, w: int, workers: int, tmp: Path, started) -> tuple[list, float]:
        from orchestrator import Orchestrator
        with Orchestrator(url) as o:
            return orch_loop(o, f"w{w}", started(), cls.together)

    @staticmethod
    def done(url: str) -> int:
        from orchestrator import Orchestrator
        with Orchestrator(url) as o:
            return int(o.status()["counts"].get("succeeded", 0))


class OrchDaemon(OrchEmbedded):
    name = "orch daemon"
    daemons = 1

    @classmethod
    def prepare(cls, url: str, n: int, workers: int, tmp: Path) -> list[subprocess.Popen]:
        OrchEmbedded.prepare(url, n, workers, tmp)  # migrates the database, then submits
        procs: list[subprocess.Popen] = []
        try:
            for k in range(cls.daemons):
                procs.append(start_daemon(url, tmp / f"home{k}", tmp / f"d{k}.sock"))
        except BaseException:
            for p in procs:
                stop_daemon(p)
            raise
        return procs

    @classmethod
    def consume(cls, url: str, w: int, workers: int, tmp: Path, started) -> tuple[list, float]:
        from orchestrator.client import Client
        # Worker w on daemon w // (W / daemons): the first half on one, the rest on the other.
        k = w * cls.daemons // workers
        with Client(tmp / f"d{k}.sock") as o:
            o.ping()
            return orch_loop(o, f"w{w}", started(), cls.together)


class OrchTwoDaemons(OrchDaemon):
    name = "orch 2 daemons"
    daemons = 2


def start_daemon(url: str, home: Path, sock: Path) -> subprocess.Popen:
    from orchestrator import OrchError
    from orchestrator.client import Client
    home.mkdir(parents=True)
    log = home / "daemon.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--db", url, "--socket", str(sock), "daemon",
         "--log-file", str(log), "--log-level", "WARNING",
         "--writer-lanes", os.environ.get("ORCH_BENCH_WRITER_LANES", "4")],
        stdout=subprocess.DEVNULL, stderr=open(home / "stderr", "wb"), cwd=ROOT,  # noqa: SIM115
        env={**os.environ, "OPENCLAW_HOME": str(home)})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = (home / "stderr").read_text(errors="replace").strip().splitlines()
            hint = (" (--make-venv again installs what pyproject.toml lists now)"
                    if err and "ModuleNotFoundError" in err[-1] else "")
            raise RuntimeError(f"orch daemon exited {proc.returncode}: "
                               f"{err[-1] if err else '(no output)'}{hint}")
        try:
            with Client(sock, connect_within=0) as c:
                c.ping()
            return proc
        except OrchError:  # not answering yet
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("orch daemon did not answer within 30 s")


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


SYSTEMS: dict[str, Any] = {"raw": Raw, "raw-next": RawNext,
                           "procrastinate": Procrastinate, "pgqueuer": PgQueuer,
                           "pgqueuer-b1": PgQueuerOne,
                           "orch-daemon": OrchDaemon, "orch-2daemons": OrchTwoDaemons,
                           "orch-embedded": OrchEmbedded}
PEERS = [("procrastinate", 1), ("procrastinate", 4), ("procrastinate", 8),
         ("pgqueuer", 1), ("pgqueuer", 4), ("pgqueuer", 8),
         ("pgqueuer-b1", 1), ("pgqueuer-b1", 4)]
RAW = [("raw", 1), ("raw", 4), ("raw-next", 1), ("raw-next", 4), ("raw-next", 8)]
ORCH = [("orch-daemon", 1), ("orch-daemon", 4), ("orch-2daemons", 8), ("orch-embedded", 4),
        ("orch-daemon", 8)]


# --- where the CPU went ---------------------------------------------------------------------
# The server, the daemons and the workers share the machine's cores (and other work may
# be running on it): each run reports the CPU each side used per cycle and how busy the
# whole machine was, so a figure limited by the cores can be told from one limited by
# waiting.

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot."""
    v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = v[3] + v[4]  # idle, iowait
    return sum(v) - idle, sum(v)


class ServerCpu(threading.Thread):
    """Samples the server processes that serve database ``name``: their CPU time (a
    backend's counter only grows; the last sample before it exits is kept), and what
    each one running a statement is waiting for, if anything. Waits of type Lock are
    transactions queued behind one another: the measure of claimers serializing."""

    def __init__(self, admin_url: str, name: str) -> None:
        super().__init__(daemon=True)
        self.admin_url, self.name = admin_url, name
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.waits: collections.Counter[str] = collections.Counter()
        self.halt = threading.Event()

    def run(self) -> None:
        with _admin(self.admin_url) as c:
            while True:
                rows = c.execute("SELECT pid, state, wait_event_type, wait_event "
                                 "FROM pg_stat_activity WHERE datname = %s",
                                 (self.name,)).fetchall()
                for pid, state, wtype, wevent in rows:
                    t = cpu_seconds(pid)
                    self.first.setdefault(pid, t)
                    self.last[pid] = max(t, self.last.get(pid, 0.0))
                    if state != "active":  # idle, or idle in transaction: the client's turn
                        self.waits[f"({state})"] += 1
                    else:
                        self.waits[f"{wtype}:{wevent}" if wtype else "running"] += 1
                if self.halt.wait(0.2):
                    return

    def stop(self) -> float:
        self.halt.set()
        self.join(10)
        return sum(t - self.first[pid] for pid, t in self.last.items())


# --- one measurement -------------------------------------------------------------------------


def _worker(key: str, url: str, w: int, workers: int, tmp: str, seconds: float,
            together: bool, ready, go, out) -> None:
    system = SYSTEMS[key]
    if key.startswith("orch"):
        system.together = together
    start = [0.0, 0.0]

    def started() -> float:
        ready.put(w)
        go.wait()
        start[:] = time.monotonic(), time.process_time()
        return start[0] + seconds

    try:
        got, last = system.consume(url, w, workers, Path(tmp), started)
        out.put((w, start[0], last, got, None, time.process_time() - start[1]))
    except Exception as exc:  # noqa: BLE001 -- sent back and shown in the row
        ready.put(w)  # a worker that failed before started() must not hang the others
        out.put((w, start[0], start[0], [], f"{type(exc).__name__}: {exc}", 0.0))


def measure(key: str, workers: int, n: int, seconds: float, admin_url: str,
            together: bool) -> dict:
    ctx = mp.get_context("spawn")
    name = f"orchbench_{key.replace('-', '_')}_{workers}_{os.getpid()}"
    tmp = Path(tempfile.mkdtemp(prefix="obpg-", dir="/tmp"))
    system = SYSTEMS[key]
    res: dict = {"system": system.name, "key": key, "workers": workers, "jobs": n,
                 "load": os.getloadavg()[0]}
    try:
        url = create_db(admin_url, name)
        helpers: list[subprocess.Popen] = []
        procs: list = []
        try:
            helpers = system.prepare(url, n, workers, tmp)
            ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(key, url, w, workers, str(tmp), seconds,
                                                       together, ready, go, out))
                     for w in range(workers)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=120)
            server = ServerCpu(admin_url, name)
            server.start()
            ticks = machine_ticks()
            daemons = -sum(cpu_seconds(p.pid) for p in helpers)
            go.set()
            results = [out.get(timeout=seconds + 300) for _ in procs]
            daemons += sum(cpu_seconds(p.pid) for p in helpers)
            busy, total = (b - a for a, b in zip(ticks, machine_ticks(), strict=True))
            res["cpu"] = {"server": server.stop(), "daemons": daemons,
                          "waits": dict(server.waits),
                          "workers": sum(r[5] for r in results),
                          "machine_busy": busy / total if total else 0.0}
            for p in procs:
                p.join(60)
            res["done"] = system.done(url)
        finally:
            for p in procs:  # left waiting only when the run failed
                if p.is_alive():
                    p.terminate()
            for p in helpers:
                stop_daemon(p)
    except Exception as exc:  # noqa: BLE001 -- a system that cannot run is a row that says why
        res.update(cycles_per_s=0.0, delivered=0, duplicates=0, done=0, ran_out=False,
                   errors=[f"{type(exc).__name__}: {exc}"], cpu_ms=None)
        return res
    finally:
        with contextlib.suppress(Exception):
            drop_db(admin_url, name)
        shutil.rmtree(tmp, ignore_errors=True)
    starts = [r[1] for r in results if r[1]]
    end = max((r[2] for r in results), default=0.0)
    delivered = [i for r in results for i in r[3]]
    elapsed = end - min(starts) if starts else 0.0
    res.update(cycles_per_s=len(delivered) / elapsed if elapsed > 0 else 0.0,
               delivered=len(delivered), duplicates=len(delivered) - len(set(delivered)),
               ran_out=len(set(delivered)) == n, seconds=elapsed,
               errors=sorted({r[4] for r in results if r[4]}))
    cpu = res["cpu"]
    res["cpu_ms"] = ({k: cpu[k] * 1000 / len(delivered) for k in ("server", "daemons", "workers")}
                     if delivered else None)
    return res


def run_rows(rows: list[tuple[str, int]], rounds: int, n: int, seconds: float,
             admin_url: str, together: bool) -> list[dict]:
    runs: dict[tuple[str, int], list[dict]] = {r: [] for r in rows}
    for r in range(rounds):
        for key, w in rows:
            res = measure(key, w, n, seconds, admin_url, together)
            runs[(key, w)].append(res)
            print(f"  round {r + 1}/{rounds} {res['system']:15s} W={w}: "
                  f"{res['cycles_per_s']:8,.0f}/s delivered={res['delivered']} "
                  f"dup={res['duplicates']} done={res['done']}"
                  f"{' (ran out)' if res['ran_out'] else ''} load={res['load']:.2f}"
                  + (f" busy={res['cpu']['machine_busy']:.0%} cpu ms/cycle: "
                     f"server {res['cpu_ms']['server']:.2f} daemons {res['cpu_ms']['daemons']:.2f}"
                     f" workers {res['cpu_ms']['workers']:.2f}" if res["cpu_ms"] else "")
                  + (f" errors={res['errors']}" if res["errors"] else ""), flush=True)
    out = []
    for (key, w), rs in runs.items():
        rates = [x["cycles_per_s"] for x in rs]
        out.append({"system": rs[0]["system"], "key": key, "workers": w,
                    "label": label(key, w), "median": statistics.median(rates),
                    "rates": rates, "duplicates": sum(x["duplicates"] for x in rs),
                    "delivered": sum(x["delivered"] for x in rs),
                    "done": sum(x["done"] for x in rs),
                    "errors": sorted({e for x in rs for e in x["errors"]}),
                    "cpu_ms": {k: statistics.median(x["cpu_ms"][k] for x in rs if x["cpu_ms"])
                               for k in ("server", "daemons", "workers")}
                    if all(x["cpu_ms"] for x in rs) else None,
                    "machine_busy": statistics.median(x.get("cpu", {}).get("machine_busy", 0.0)
                                                      for x in rs),
                    "waits": dict(sum((collections.Counter(x.get("cpu", {}).get("waits", {}))
                                       for x in rs), collections.Counter()))})
    return out


def label(key: str, w: int) -> str:
    if key == "orch-2daemons":
        return f"2 daemons x {w // 2}"
    if key == "orch-daemon":
        return f"1 daemon x {w}"
    return str(w)


def table(rows: list[dict]) -> str:
    lines = ["| system | workers | cycles/s (median) | runs | duplicates |",
             "| --- | --- | ---: | --- | ---: |"]
    for r in rows:
        runs = " / ".join(f"{x:,.0f}" for x in r["rates"])
        fig = f"{r['median']:,.0f}" if not r["errors"] else "failed"
        lines.append(f"| {r['system']} | {r['label']} | {fig} | {runs} | {r['duplicates']} |")
    return "\n".join(lines)


def lock_share(waits: dict[str, int]) -> float | None:
    """The share of samples of a busy backend in which it waited on a lock."""
    total = sum(n for k, n in waits.items() if not k.startswith("("))
    return sum(n for k, n in waits.items() if k.startswith("Lock:")) / total if total else None


def cpu_table(rows: list[dict]) -> str:
    lines = ["| system | workers | server | daemons | workers | machine busy | lock waits |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        if r["cpu_ms"]:
            c = r["cpu_ms"]
            share = lock_share(r["waits"])
            locks = f"{share:.0%}" if share is not None else "-"
            lines.append(f"| {r['system']} | {r['label']} | {c['server']:.2f} | "
                         f"{c['daemons']:.2f} | {c['workers']:.2f} | {r['machine_busy']:.0%} "
                         f"| {locks} |")
    return "\n".join(lines)


def server_facts(admin_url: str) -> str:
    with _admin(admin_url) as c:
        v = c.execute("SHOW server_version").fetchone()
        facts = {k: c.execute(f"SHOW {k}").fetchone() for k in
                 ("fsync", "synchronous_commit", "max_connections", "shared_buffers")}
    return f"PostgreSQL {v[0] if v else '?'}, " + ", ".join(
        f"{k}={x[0] if x else '?'}" for k, x in facts.items())


def make_venv(path: Path) -> None:
    """orch's dependencies and the bench-pg extra, from pyproject.toml, in a venv of
    their own; orch runs from this checkout (the script puts it first on sys.path)."""
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*meta["dependencies"], *meta["optional-dependencies"]["bench-pg"]]
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)  # keeps what is there
    subprocess.run([str(path / "bin" / "pip"), "install", "-q", *reqs], check=True)
    print(f"ready: {path / 'bin' / 'python'} {Path(__file__).relative_to(ROOT)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", choices=("all", "raw", "peers", "orch"), default="all")
    ap.add_argument("--rows", help="instead of --only: SYSTEM:W,... e.g. pgqueuer:4,orch-daemon:1"
                                   f" (systems: {', '.join(SYSTEMS)})")
    ap.add_argument("--pg", default=os.environ.get("ORCH_BENCH_PG", DEFAULT_PG),
                    help="server to create the benchmark databases on (default %(default)s)")
    ap.add_argument("--jobs", type=int, default=20_000, help="jobs submitted before each run")
    ap.add_argument("--seconds", type=float, default=10.0, help="each run's time limit")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--orch-loop", choices=("next", "pair"), default="next",
                    help="next: releaseAndClaim; pair: claimTask then releaseTask")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--make-venv", nargs="?", const=DEFAULT_VENV, type=Path, metavar="PATH",
                    help=f"create the benchmark's venv (default {DEFAULT_VENV}) and exit")
    a = ap.parse_args()
    if a.make_venv:
        make_venv(a.make_venv)
        return
    if a.quick:
        a.jobs, a.seconds, a.rounds = 200, 2.0, 1
    if a.rows:
        rows = [(k, int(w)) for k, _, w in (x.partition(":") for x in a.rows.split(","))]
    else:
        rows = {"all": RAW + PEERS + ORCH, "raw": RAW, "peers": PEERS, "orch": ORCH}[a.only]
    report: dict = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                   f"Python {platform.python_version()}",
        "server": server_facts(a.pg), "date": time.strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(sys.argv), "jobs": a.jobs, "seconds": a.seconds}
    print(f"# {report['machine']}, {report['date']}\n# {report['server']}\n"
          f"# {report['command']}\n# {a.jobs} jobs a run, at most {a.seconds:g} s, "
          f"{a.rounds} rounds; load average {os.getloadavg()[0]:.2f}", flush=True)
    report["rows"] = out = run_rows(rows, a.rounds, a.jobs, a.seconds, a.pg,
                                    a.orch_loop == "next")
    by = {(r["key"], r["workers"]): r["median"] for r in out}
    if by.get(("orch-daemon", 4)) and ("orch-2daemons", 8) in by:
        report["ratio_2x4_over_1x4"] = ratio = by[("orch-2daemons", 8)] / by[("orch-daemon", 4)]
        print(f"\norch 2 daemons x 4 / 1 daemon x 4: {ratio:.2f}")
        if by.get(("orch-daemon", 8)):
            report["ratio_2x4_over_1x8"] = r8 = by[("orch-2daemons", 8)] / by[("orch-daemon", 8)]
            print(f"orch 2 daemons x 4 / 1 daemon x 8 (as many workers): {r8:.2f}")
    print("\n" + table(out))
    print("\nCPU ms per cycle (medians), how busy the whole machine was, and the share of"
          " samples of a busy backend\nin which it waited on a lock:\n" + cpu_table(out))
    print("What the backends were doing (samples; in parentheses: not running a statement):")
    for r in out:
        if r["waits"]:
            top = ", ".join(f"{k} {n}" for k, n in collections.Counter(r["waits"]).most_common(6))
            print(f"  {r['system']}, {r['label']}: {top}")
    for r in out:
        if r["errors"]:
            print(f"\n{r['system']} W={r['workers']}: {r['errors'][0][:300]}")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
