#!/usr/bin/env python3
"""orch beside its peers and beside the raw SQLite limit, measured in one run.

    pip install '.[bench]'
    python scripts/bench.py                    # everything, defaults below
    python scripts/bench.py --quick            # tiny sizes: checks that it runs
    python scripts/bench.py --only cycle --items 5000 --rounds 5
    python scripts/bench.py --only cycle --systems daemon --web-load --workers 4 --sync full

Sections:
  cycle     N items submitted, then W consumers loop claim -> ack until the queue is
            empty (W = 1 process and W = 4 processes on one file); cycles/s, items
            delivered twice and never. orch runs the loop both ways: claimTask then
            releaseTask (two transactions a cycle), and releaseAndClaim (the release
            and the next claim in one). Every system, interleaved, over several
            rounds; medians with min-max and the ratio to the raw limit at the same
            synchronous setting. Each system's journal_mode and synchronous are read
            back from its own connection and printed. --web-load adds "orch daemon,
            web view open": the daemon with --http, and a poller fetching the overview
            page and its JSON endpoint once a second while the consumers run.
  recovery  20,000 expired leases, one staleRecovery pass (median of 3 fresh files).
  scale     claim latency p50/p99 with 1,000 and with 1,000,000 pending items.
  enqueue   submit_many of 100,000 items (median of 3 fresh files).
  memory    daemon peak RSS after 1,000,000 claim cycles, and its growth over the
            second half.
  work      `orch work --concurrency 4 -- true` draining 2,000 items (submit_many),
            through the daemon and embedded: items/s from the command's start to its
            exit (its own start-up included), median of 3 fresh files.
"""

from __future__ import annotations

import argparse
import json
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
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import OrchError, Orchestrator  # noqa: E402 -- after the path above
from orchestrator.client import Client  # noqa: E402

SYNCS = ("full", "normal")


# --- the systems ------------------------------------------------------------------------
# Each system: prepare(dir, sync, n) fills the queue (and starts what it needs) and
# returns a stop() callable; consume(dir, sync, w) runs in a worker process and returns
# (delivered payload indexes, (journal_mode, synchronous)).


def _pragmas(conn_execute) -> tuple[str, str]:
    mode = conn_execute("PRAGMA journal_mode")[0]
    sync = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[conn_execute("PRAGMA synchronous")[0]]
    return str(mode).upper(), sync


class Raw:
    """Plain APSW on orch's own items table (the same schema shape, its indexes and
    constraints), none of orch's bookkeeping: claim = one IMMEDIATE transaction with
    UPDATE ... WHERE id = (SELECT ... ORDER BY priority, id LIMIT 1) RETURNING,
    ack = one transaction. No events, no fences, no validation."""

    name = "raw limit"
    CLAIM = ("UPDATE items SET status = 'running', attempts = attempts + 1, worker_id = ?, "
             "token_hash = ?, lease_expires_at = ?, heartbeat_at = ?, updated_at = ? "
             "WHERE id = (SELECT id FROM items WHERE status = 'pending' AND kind = 'task' "
             "AND queue = 'default' AND run_after <= ? ORDER BY priority DESC, id LIMIT 1) "
             "RETURNING id, payload")
    ACK = ("UPDATE items SET status = 'succeeded', token_hash = NULL, lease_expires_at = NULL, "
           "heartbeat_at = NULL, updated_at = ? WHERE id = ?")

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        from orchestrator.store import open_connection
        c = open_connection(d / "raw.db", synchronous=sync)  # orch's migrations: its schema
        with c:
            c.executemany("INSERT INTO items (kind, queue, payload, status, max_attempts, "
                          "run_after, effect, created_at, updated_at) VALUES ('task', "
                          "'default', ?, 'pending', 3, 0, 'idempotent', 0, 0)",
                          ((str(i),) for i in range(n)))
        c.close()
        return lambda: None

    @staticmethod
    def consume(d: Path, sync: str, w: int):
        import apsw
        c = apsw.Connection(str(d / "raw.db"))
        c.set_busy_timeout(30_000)
        c.execute(f"PRAGMA synchronous={sync}")
        c.transaction_mode = "IMMEDIATE"
        got = []
        while True:
            now = int(time.time() * 1000)
            with c:
                row = c.execute(Raw.CLAIM, (f"w{w}", "t" * 64, now + 30_000, now, now,
                                            now)).fetchall()
            if not row:
                break
            with c:
                c.execute(Raw.ACK, (now, row[0][0]))
            got.append(int(row[0][1]))
        prag = _pragmas(lambda q: c.execute(q).fetchall()[0])
        c.close()
        return got, prag


class OrchEmbedded:
    name = "orch embedded"

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        with Orchestrator(d / "orch.db", synchronous=sync) as o:
            for start in range(0, n, 5000):
                o.submit_many([{"payload": i} for i in range(start, min(n, start + 5000))])
        return lambda: None

    together = False  # claim, then release: two transactions a cycle

    @classmethod
    def consume(cls, d: Path, sync: str, w: int):
        with Orchestrator(d / "orch.db", synchronous=sync) as o:
            got = orch_loop(o, f"w{w}", cls.together)
            prag = _pragmas(lambda q: o.store.conn.execute(q).fetchall()[0])
        return got, prag


def orch_loop(o, worker: str, together: bool) -> list:
    """claim -> release until empty; ``together``: each release claims the next
    (releaseAndClaim, one transaction a cycle)."""
    got = []
    if together:
        c = o.claim_task(worker, ttl=60)
        while c is not None:
            got.append(c["payload"])
            c = o.release_and_claim(c["id"], c["token"], "succeeded")["next"]
        return got
    while (c := o.claim_task(worker, ttl=60)) is not None:
        o.release_task(c["id"], c["token"], "succeeded")
        got.append(c["payload"])
    return got


class OrchEmbeddedNext(OrchEmbedded):
    name = "orch embedded, releaseAndClaim"
    together = True


class OrchDaemon:
    name = "orch daemon"

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        OrchEmbedded.prepare(d, sync, n)
        proc = start_daemon(d, sync)
        return lambda: stop_daemon(proc)

    together = False

    @classmethod
    def consume(cls, d: Path, sync: str, w: int):
        with Client(d / "s") as o:
            got = orch_loop(o, f"w{w}", cls.together)
        import apsw  # the daemon's own settings: journal mode is the file's, sync its flag
        conn = apsw.Connection(str(d / "orch.db"))
        mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0].upper()
        conn.close()
        return got, (mode, sync.upper())


class OrchDaemonNext(OrchDaemon):
    name = "orch daemon, releaseAndClaim"
    together = True


class OrchDaemonWeb(OrchDaemon):
    """orch daemon with its web view open (--web-load): a poller asks for the overview
    page and its JSON endpoint once a second, as a browser tab left on it would."""

    name = "orch daemon, web view open"

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        OrchEmbedded.prepare(d, sync, n)
        proc = start_daemon(d, sync, web=True)
        poller = WebPoller(d / "s")
        poller.start()

        def stop() -> None:
            poller.stop()
            stop_daemon(proc)
        return stop


class WebPoller(threading.Thread):
    """GET / and /api/overview every ``every`` seconds until stopped."""

    def __init__(self, sock: Path, every: float = 1.0):
        super().__init__(daemon=True)
        from orchestrator import paths

        access = paths.web_access_file(sock)
        deadline = time.monotonic() + 20
        while not access.exists():
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon wrote no web access file")
            time.sleep(0.05)
        data = json.loads(access.read_text())
        self.url, self.token, self.every = data["url"], data["token"], every
        self.halt = threading.Event()
        self.took: list[float] = []
        self.failed = 0

    def run(self) -> None:
        import urllib.request

        while not self.halt.is_set():
            start = time.monotonic()
            for path in ("", "api/overview"):
                req = urllib.request.Request(self.url + path,
                                             headers={"Authorization": f"Bearer {self.token}"})
                try:
                    with urllib.request.urlopen(req, timeout=10) as r:
                        r.read()
                except OSError:
                    self.failed += 1
            self.took.append(time.monotonic() - start)
            self.halt.wait(max(0.0, self.every - (time.monotonic() - start)))

    def stop(self) -> None:
        self.halt.set()
        self.join(15)
        ms = sorted(t * 1000 for t in self.took)
        if ms:
            print(f"    web view: {len(ms)} polls (page + JSON), p50 {statistics.median(ms):.1f} ms"
                  f", max {ms[-1]:.1f} ms, {self.failed} failed", flush=True)


class PersistQueue:
    """persist-queue SQLiteAckQueue: get() then ack(), as its docs show."""

    name = "persist-queue"

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        from persistqueue import SQLiteAckQueue
        q = SQLiteAckQueue(str(d / "pq"), auto_commit=False)
        for i in range(n):
            q.put(i)
        q.task_done()
        del q
        return lambda: None

    @staticmethod
    def consume(d: Path, sync: str, w: int):
        from persistqueue import SQLiteAckQueue
        from persistqueue.exceptions import Empty
        q = SQLiteAckQueue(str(d / "pq"), auto_resume=False, timeout=30)
        q._getter.execute(f"PRAGMA synchronous={sync}")
        got = []
        while True:
            try:
                item = q.get(block=False)
            except Empty:
                break
            q.ack(item)
            got.append(item)
        prag = _pragmas(lambda s: q._getter.execute(s).fetchone())
        return got, prag


class LiteQueue:
    """litequeue: pop() then done(), as its docs show."""

    name = "litequeue"

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        from litequeue import LiteQueue as LQ
        q = LQ(str(d / "lq.db"))
        with q.transaction():
            for i in range(n):
                q.put(str(i))
        q.close()
        return lambda: None

    @staticmethod
    def consume(d: Path, sync: str, w: int):
        from litequeue import LiteQueue as LQ
        q = LQ(str(d / "lq.db"), timeout=30)
        q.conn.execute(f"PRAGMA synchronous={sync}")
        got = []
        while (m := q.pop()) is not None:
            q.done(m.message_id)
            got.append(int(m.data))
        prag = _pragmas(lambda s: tuple(q.conn.execute(s).fetchone()))
        q.close()
        return got, prag


class Huey:
    """huey SqliteStorage: enqueue/dequeue. It has no ack, so it does half the work."""

    name = "huey (no ack)"

    @staticmethod
    def prepare(d: Path, sync: str, n: int):
        from huey.storage import SqliteStorage
        s = SqliteStorage("bench", filename=str(d / "huey.db"))
        for i in range(n):
            s.enqueue(str(i).encode())
        s.close()
        return lambda: None

    @staticmethod
    def consume(d: Path, sync: str, w: int):
        from huey.storage import SqliteStorage
        s = SqliteStorage("bench", filename=str(d / "huey.db"), timeout=30)
        s.conn.execute(f"PRAGMA synchronous={sync}")
        got = []
        while (data := s.dequeue()) is not None:
            got.append(int(data))
        prag = _pragmas(lambda q: s.conn.execute(q).fetchone())
        s.close()
        return got, prag


SYSTEMS = {"raw": Raw, "embedded": OrchEmbedded, "embedded-next": OrchEmbeddedNext,
           "daemon": OrchDaemon, "daemon-next": OrchDaemonNext,
           "persist-queue": PersistQueue, "litequeue": LiteQueue, "huey": Huey}
#: Measured only when asked (--web-load).
WEB_SYSTEMS = {"daemon-web": OrchDaemonWeb}
SYSTEMS.update(WEB_SYSTEMS)


def start_daemon(d: Path, sync: str, web: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "--db", str(d / "orch.db"), "--socket",
         str(d / "s"), "daemon", "--synchronous", sync, "--log-file", str(d / "daemon.log"),
         "--log-level", "WARNING", *(["--http", "127.0.0.1:0"] if web else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with Client(d / "s", connect_within=0) as c:
                c.ping()
            return proc
        except OrchError:  # not answering yet
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("daemon did not start")


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- running one measurement -----------------------------------------------------------------


def _worker(key: str, d: str, sync: str, w: int, ready, go, out) -> None:
    system = SYSTEMS[key]
    ready.put(w)
    go.wait()
    start = time.monotonic()
    try:
        got, prag = system.consume(Path(d), sync, w)
        out.put((w, start, time.monotonic(), got, prag, None))
    except Exception as exc:  # noqa: BLE001 -- report it, e.g. a peer that cannot share its file
        out.put((w, start, time.monotonic(), [], ("?", "?"), f"{type(exc).__name__}: {exc}"))


def measure(key: str, sync: str, workers: int, n: int) -> dict:
    ctx = mp.get_context("spawn")
    d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
    try:
        stop = SYSTEMS[key].prepare(d, sync, n)
        try:
            ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
            procs = [ctx.Process(target=_worker, args=(key, str(d), sync, w, ready, go, out))
                     for w in range(workers)]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=60)
            time.sleep(0.2)  # let every worker reach go.wait()
            go.set()
            results = [out.get(timeout=900) for _ in procs]
            for p in procs:
                p.join(60)
        finally:
            stop()
    finally:
        shutil.rmtree(d, ignore_errors=True)
    start = min(r[1] for r in results)
    end = max(r[2] for r in results)
    delivered = [i for r in results for i in r[3]]
    errors = sorted({r[5] for r in results if r[5]})
    return {"cycles_per_s": len(delivered) / (end - start) if end > start else 0.0,
            "twice": len(delivered) - len(set(delivered)),
            "never": n - len(set(delivered)), "pragmas": results[0][4], "errors": errors}


# --- the sections --------------------------------------------------------------------------------


def cycle_section(n: int, rounds: int, systems: list[str], workers: tuple[int, ...] = (1, 4),
                  syncs: tuple[str, ...] = SYNCS) -> list[dict]:
    matrix = [(key, sync, w) for w in workers for sync in syncs for key in systems]
    runs: dict[tuple, list[dict]] = {m: [] for m in matrix}
    for r in range(rounds):
        for m in matrix:  # interleaved: every system once per round
            res = measure(*m, n)
            runs[m].append(res)
            print(f"  round {r + 1}/{rounds} {m[0]:14s} {m[1]:6s} W={m[2]}: "
                  f"{res['cycles_per_s']:9,.0f}/s twice={res['twice']} never={res['never']}"
                  + (f" errors={res['errors']}" if res["errors"] else ""), flush=True)
    rows = []
    for (key, sync, w), rs in runs.items():
        rates = [x["cycles_per_s"] for x in rs]
        rows.append({"system": SYSTEMS[key].name, "key": key, "sync": sync, "workers": w,
                     "median": statistics.median(rates), "min": min(rates), "max": max(rates),
                     "twice": sum(x["twice"] for x in rs), "never": sum(x["never"] for x in rs),
                     "journal_mode": rs[-1]["pragmas"][0], "synchronous": rs[-1]["pragmas"][1],
                     "errors": sorted({e for x in rs for e in x["errors"]})})
    raw = {(r["sync"], r["workers"]): r["median"] for r in rows if r["key"] == "raw"}
    raw1 = {r["sync"]: r["median"] for r in rows if r["key"] == "raw" and r["workers"] == 1}
    for r in rows:
        base = raw.get((r["sync"], r["workers"]))
        r["ratio"] = r["median"] / base if base else None
        r["ratio_raw_w1"] = r["median"] / raw1[r["sync"]] if raw1.get(r["sync"]) else None
        if r["key"] == "daemon-web" and ("daemon", r["sync"], r["workers"]) in runs:
            # Paired by round (the two ran back to back), which cancels much of what
            # other load on the machine does to both.
            plain = runs[("daemon", r["sync"], r["workers"])]
            web = runs[("daemon-web", r["sync"], r["workers"])]
            r["vs_daemon_by_round"] = [w["cycles_per_s"] / p["cycles_per_s"]
                                       for w, p in zip(web, plain, strict=True)]
    return rows


def recovery_section(n: int, repeats: int = 3) -> dict:
    """One staleRecovery pass over ``n`` expired leases, on ``repeats`` fresh files
    (this VM's disk varies by a third from one pass to the next): median, min, max."""
    runs = []
    for _ in range(repeats):
        d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
        try:
            with Orchestrator(d / "r.db") as o:
                for start in range(0, n, 5000):
                    o.submit_many([{"payload": i} for i in range(start, min(n, start + 5000))])
                for _ in range(n):
                    o.claim_task("doomed", ttl=0.001)
                time.sleep(0.01)
                assert o.status()["counts"]["running"] == n
                t = time.perf_counter()
                r = o.stale_recovery()
                runs.append((time.perf_counter() - t) * 1000)
                assert r["count"] == n, r["count"]
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return {"expired_leases": n, "ms": statistics.median(runs), "min_ms": min(runs),
            "max_ms": max(runs), "passes": len(runs)}


def scale_section(sizes: list[int], samples: int) -> list[dict]:
    out = []
    for size in sizes:
        d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
        try:
            with Orchestrator(d / "s.db") as o:
                for start in range(0, size, 10_000):
                    o.submit_many([{"payload": i} for i in range(start, min(size, start + 10_000))])
                lat = []
                for _ in range(samples):
                    t = time.perf_counter()
                    c = o.claim_task("w", ttl=60)
                    lat.append((time.perf_counter() - t) * 1e6)
                    o.release_task(c["id"], c["token"], "succeeded")
                    o.submit_task(0)  # keep the pending count where it was
            lat.sort()
            out.append({"pending": size, "p50_us": lat[len(lat) // 2],
                        "p99_us": lat[int(len(lat) * 0.99) - 1]})
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return out


def enqueue_section(n: int, repeats: int = 3) -> dict:
    """``submit_many`` of ``n`` items in calls of 10,000, on ``repeats`` fresh files:
    the median rate, with min and max."""
    batch, rates = 10_000, []
    for _ in range(repeats):
        d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
        try:
            with Orchestrator(d / "e.db") as o:
                t = time.perf_counter()
                for start in range(0, n, batch):
                    o.submit_many([{"payload": {"n": i}}
                                   for i in range(start, min(n, start + batch))])
                rates.append(n / (time.perf_counter() - t))
        finally:
            shutil.rmtree(d, ignore_errors=True)
    return {"items": n, "items_per_s": statistics.median(rates), "min": min(rates),
            "max": max(rates), "batch": batch, "runs": len(rates)}


def work_section(n: int, repeats: int = 3, concurrency: int = 4) -> list[dict]:
    """``orch work --max-items n --concurrency 4 -- true`` on a queue of ``n`` items,
    through the daemon and embedded, synchronous=full: the wall time of the command."""
    rows = []
    for mode in ("daemon", "embedded"):
        rates = []
        for _ in range(repeats):
            d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
            try:
                with Orchestrator(d / "orch.db") as o:
                    for start in range(0, n, 10_000):
                        o.submit_many([{"payload": i}
                                       for i in range(start, min(n, start + 10_000))])
                proc = start_daemon(d, "full") if mode == "daemon" else None
                try:
                    cmd = [sys.executable, "-m", "orchestrator", "--db", str(d / "orch.db"),
                           "--socket", str(d / "s"), "--json", "work", "--max-items", str(n),
                           "--concurrency", str(concurrency), "--", "true"]
                    t = time.perf_counter()
                    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
                    rates.append(n / (time.perf_counter() - t))
                    done = json.loads(p.stdout)
                    assert done["succeeded"] == n, done
                finally:
                    if proc is not None:
                        stop_daemon(proc)
                with Orchestrator(d / "orch.db") as o:
                    assert o.status()["counts"]["succeeded"] == n
            finally:
                shutil.rmtree(d, ignore_errors=True)
        rows.append({"mode": mode, "items": n, "concurrency": concurrency,
                     "items_per_s": statistics.median(rates), "min": min(rates),
                     "max": max(rates), "runs": len(rates)})
    return rows


def _rss_kb(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        k, _, v = line.partition(":")
        fields[k] = v.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def _memory_client(sock: str, w: int, cycles: int, out, progress) -> None:
    done = 0
    with Client(Path(sock)) as c:
        while done < cycles:
            claim = c.claim_task(f"m{w}", ttl=60, wait=1)
            if claim is None:
                continue
            c.release_task(claim["id"], claim["token"], "succeeded")
            done += 1
            if done % 100 == 0:
                with progress.get_lock():
                    progress.value += 100
    out.put(done)


def memory_section(cycles: int, clients: int = 4) -> dict:
    ctx = mp.get_context("spawn")
    d = Path(tempfile.mkdtemp(prefix="ob-", dir="/tmp"))
    try:
        with Orchestrator(d / "orch.db", synchronous="normal"):
            pass
        proc = start_daemon(d, "normal")
        try:
            samples = []
            feeder = Client(d / "s")
            per = cycles // clients
            out, progress = ctx.Queue(), ctx.Value("q", 0)
            procs = [ctx.Process(target=_memory_client,
                                 args=(str(d / "s"), w, per, out, progress))
                     for w in range(clients)]
            for p in procs:
                p.start()
            submitted, t0 = 0, time.monotonic()
            while submitted < per * clients:
                # the clients count what they finish: no query needed to keep the queue fed
                # small batches: measure the cycles, not huge replies
                if submitted - progress.value < 5_000:
                    k = min(1_000, per * clients - submitted)
                    feeder.submit_many([{"payload": i} for i in range(k)])
                    submitted += k
                rss, hwm = _rss_kb(proc.pid)
                samples.append((submitted, rss, hwm))
                time.sleep(0.1)
            done = sum(out.get(timeout=3600) for _ in procs)
            for p in procs:
                p.join()
            rss, hwm = _rss_kb(proc.pid)
            samples.append((submitted, rss, hwm))
            feeder.close()
            elapsed = time.monotonic() - t0
        finally:
            stop_daemon(proc)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    half = [s for s in samples if s[0] >= cycles // 2]
    return {"cycles": done, "seconds": elapsed, "peak_rss_mb": hwm / 1024,
            "rss_at_half_mb": half[0][1] / 1024 if half else None,
            "rss_at_end_mb": rss / 1024}


# --- report --------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--only", default="cycle,recovery,scale,enqueue,memory,work")
    ap.add_argument("--systems", default=",".join(k for k in SYSTEMS if k not in WEB_SYSTEMS))
    ap.add_argument("--web-load", action="store_true",
                    help="also measure the daemon with its web view open and refreshing "
                         "(system daemon-web: the overview page and its JSON once a second)")
    ap.add_argument("--workers", default="1,4", help="claim-cycle consumer counts")
    ap.add_argument("--sync", default=",".join(SYNCS), help="claim-cycle synchronous settings")
    ap.add_argument("--items", type=int, default=3000, help="items per claim-cycle run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--recovery", type=int, default=20_000)
    ap.add_argument("--scale", default="1000,1000000")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--enqueue", type=int, default=100_000)
    ap.add_argument("--memory-cycles", type=int, default=1_000_000)
    ap.add_argument("--work-items", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    a = ap.parse_args()
    if a.quick:
        a.items, a.rounds, a.recovery, a.scale, a.samples = 60, 1, 200, "100,1000", 50
        a.enqueue, a.memory_cycles, a.work_items = 2000, 400, 40
    only = set(a.only.split(","))
    systems = [s for s in a.systems.split(",") if s]
    if a.web_load and "daemon-web" not in systems:
        systems.append("daemon-web")
    report: dict = {"machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
                               f"Python {platform.python_version()}",
                    "date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv)}
    print(f"# {report['machine']}, {report['date']}\n# {report['command']}", flush=True)
    if "cycle" in only:
        report["cycle"] = rows = cycle_section(
            a.items, a.rounds, systems, tuple(int(w) for w in a.workers.split(",")),
            tuple(a.sync.split(",")))
        print(f"\nclaim cycle: {a.items} items, {a.rounds} rounds, median (min-max) cycles/s")
        print(f"{'system':30s} {'W':>2s} {'journal/sync':12s} {'median':>9s} {'min-max':>17s} "
              f"{'x raw':>6s} {'twice':>5s} {'never':>5s}")
        for r in sorted(rows, key=lambda r: (r["workers"], r["sync"], -r["median"])):
            ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
            print(f"{r['system']:30s} {r['workers']:2d} "
                  f"{r['journal_mode'] + '/' + r['synchronous']:12s} {r['median']:9,.0f} "
                  f"{r['min']:8,.0f}-{r['max']:<8,.0f} {ratio:>6s} {r['twice']:5d} "
                  f"{r['never']:5d}" + (f"  {r['errors'][0][:60]}" if r["errors"] else ""))
        for r in rows:
            if r.get("vs_daemon_by_round"):
                by_round = r["vs_daemon_by_round"]
                print(f"web view open, {r['sync']} W={r['workers']}: "
                      f"{statistics.median(by_round):.3f} of the daemon alone (median of the "
                      f"rounds' ratios: {', '.join(f'{x:.2f}' for x in by_round)})")
    if "recovery" in only:
        report["recovery"] = r = recovery_section(a.recovery)
        print(f"\nrecovery: {r['expired_leases']:,} expired leases in one pass: {r['ms']:.0f} ms "
              f"(median of {r['passes']} files, {r['min_ms']:.0f}-{r['max_ms']:.0f})")
    if "scale" in only:
        report["scale"] = rows = scale_section([int(x) for x in a.scale.split(",")], a.samples)
        for r in rows:
            print(f"scale: {r['pending']:>9,} pending: claim p50 {r['p50_us']:.0f} us, "
                  f"p99 {r['p99_us']:.0f} us")
    if "enqueue" in only:
        report["enqueue"] = r = enqueue_section(a.enqueue)
        print(f"enqueue: submit_many of {r['items']:,} items: {r['items_per_s']:,.0f} items/s "
              f"(median of {r['runs']} files, {r['min']:,.0f}-{r['max']:,.0f})")
    if "memory" in only:
        report["memory"] = r = memory_section(a.memory_cycles)
        print(f"memory: daemon after {r['cycles']:,} cycles ({r['seconds']:.0f} s): peak RSS "
              f"{r['peak_rss_mb']:.1f} MB; RSS at half {r['rss_at_half_mb'] or 0:.1f} MB, "
              f"at end {r['rss_at_end_mb']:.1f} MB")
    if "work" in only:
        report["work"] = rows = work_section(a.work_items, 1 if a.quick else 3)
        for r in rows:
            print(f"work: orch work --concurrency {r['concurrency']} -- true, {r['items']:,} "
                  f"items, {r['mode']}: {r['items_per_s']:,.0f} items/s (median of "
                  f"{r['runs']}, {r['min']:,.0f}-{r['max']:,.0f})")
    if a.json:
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
