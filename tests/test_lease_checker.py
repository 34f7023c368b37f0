"""The randomized multi-process lease checker.

Workers in their own processes (half embedded, half through a daemon) do random
operations with leases under 1.5 s against one file, pause longer than their leases,
get killed with SIGKILL mid-call and respawned, while `orch recover` and the daemon
recover at the same time. Afterwards the event log must show no broken lease rule
(``doctor.lease_problems``), `orch doctor` must be clean, and every write a worker saw
acknowledged must be in the log.

Short and seeded by default (a few seconds); longer by hand:

    ORCH_CHECKER_SECONDS=120 ORCH_CHECKER_WORKERS=8 ORCH_CHECKER_SEED=7 \\
        PYTHONPATH=. python -m pytest -q -s tests/test_lease_checker.py
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from conftest import HELPERS, DaemonProcess, orch_process, reap

from orchestrator import Orchestrator, doctor


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def test_random_workers_keep_every_lease_rule(short_tmp: Path):
    seconds = float(_env("ORCH_CHECKER_SECONDS", "3"))
    n_workers = int(_env("ORCH_CHECKER_WORKERS", "4"))
    seed = int(_env("ORCH_CHECKER_SEED", "1"))
    rng = random.Random(seed)
    db, logs = short_tmp / "orch.db", short_tmp / "logs"
    logs.mkdir()
    with Orchestrator(db) as o:
        o.submit_many([{"payload": i} for i in range(20)])
    daemon = DaemonProcess(db, short_tmp / "orch.sock", "--recover-every", "0.3").start()
    until = time.time() + seconds
    spawned = 0
    recoveries: list[subprocess.Popen] = []

    def spawn(i: int) -> subprocess.Popen:
        nonlocal spawned
        spawned += 1
        sock = str(daemon.sock) if i % 2 else "-"
        err = open(logs / f"{spawned}.err", "w")  # noqa: SIM115 -- the child writes it
        try:
            return subprocess.Popen(
                [sys.executable, str(HELPERS / "lease_worker.py"), str(db), sock, f"w{i}",
                 f"{seed}.{spawned}", str(until), str(logs / f"{spawned}.acks")],
                stdout=subprocess.DEVNULL, stderr=err)
        finally:
            err.close()

    workers = [spawn(i) for i in range(n_workers)]
    kills = 0
    try:
        while time.time() < until - 0.3:
            time.sleep(rng.uniform(0.1, 0.4))
            if rng.random() < 0.25:
                i = rng.randrange(n_workers)
                if workers[i].poll() is None:
                    workers[i].send_signal(signal.SIGKILL)  # mid-call, most likely
                    workers[i].wait()
                    kills += 1
                workers[i] = spawn(i)
            else:  # cron's recovery, beside the daemon's own
                recoveries.append(subprocess.Popen(
                    [sys.executable, "-m", "orchestrator", "--db", str(db), "recover"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for w in workers:
            assert w.wait(timeout=60) == 0, Path(w.args[-1]).with_suffix(".err").read_text()
        for r in recoveries:
            assert r.wait(timeout=60) == 0
    finally:
        for p in workers + recoveries:
            reap(p)
        assert daemon.stop() == 0

    with Orchestrator(db) as o:
        events = o.store.read(lambda tx: tx.all("all_events"))
    acked: Counter = Counter()
    refused = 0
    for f in logs.glob("*.acks"):
        lines = f.read_text().split("\n")
        for line in lines[:-1]:  # a worker killed mid-line leaves its last line unfinished
            a = json.loads(line)
            if "refused" in a:
                refused += 1
            else:
                acked[(a["item"], a["type"], a["fence"], a.get("expires"))] += 1
    types = Counter(e["type"] for e in events)
    summary = (f"seed {seed}, {n_workers} workers, {seconds:g} s: {spawned} processes "
               f"({kills} killed), {len(events)} events, {types['claimed']} leases, "
               f"{types['expired']} expiries, {types['taken_over']} takeovers, "
               f"{sum(acked.values())} writes acknowledged, {refused} refused as stale")
    print(summary)

    problems = doctor.lease_problems(events)
    by_rule = Counter(p.rsplit("[", 1)[1].rstrip("]") for p in problems)
    assert not problems, f"{summary}: {dict(by_rule)}\n" + "\n".join(problems[:30])
    # Every write a worker saw acknowledged is in the log.
    missing = acked - Counter(_ack_key(e) for e in events)
    assert not missing, f"{summary}: acknowledged but not in the log: {dict(missing)}"
    assert types["claimed"] > 0, summary
    p = orch_process("doctor", db=db)
    assert p.returncode == 0, p.stdout + p.stderr


def _ack_key(e: dict) -> tuple:
    """An event as a worker's acknowledgement names it."""
    expires = json.loads(e["detail"])["lease_expires_at"] if e["type"] == "heartbeat" else None
    return e["item_id"], e["type"], e["fence"], expires
