#!/usr/bin/env python3
"""The README's screenshots of the web view: docs/overview.png and docs/session.png.

    pip install '.[test]'          # selenium, freezegun
    apt-get install chromium chromium-driver
    python scripts/screenshots.py [--out docs] [--keep]

Builds a database in a temporary directory: an hour of history (tasks claimed,
released, some failed, written under a clock moved minute by minute, so the charts have
something to draw), then starts a daemon with --http on it and adds what is live now:
workers holding leases, a dead item, an item whose outcome is unknown, and an agent's
session with goals and tool executions, one of them running. Headless Chromium then
opens the overview and the session's page and saves them 1200 px wide. ``--keep``
leaves the daemon running and prints its URL, to look around by hand.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from orchestrator import Orchestrator, paths  # noqa: E402 -- after the path above
from orchestrator.client import Client  # noqa: E402
from orchestrator.web import access  # noqa: E402

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
WIDTH = 1200
QUEUES = ("crawl", "embed", "email")


def history(db: Path, minutes: int = 58) -> None:
    """An hour of work, a minute at a time, ending a minute ago."""
    from freezegun import freeze_time

    rng = random.Random(7)
    start = datetime.now(UTC) - timedelta(minutes=minutes + 1)
    with freeze_time(start) as clock, Orchestrator(db) as o:
        for minute in range(minutes):
            load = 12 + 10 * math.sin(minute / 9) + rng.randint(0, 6)
            for _ in range(int(load)):
                q = rng.choice(QUEUES)
                o.submit_task({"url": f"https://example.org/{rng.randint(1, 9999)}"}, queue=q,
                              max_attempts=3)
            for _ in range(int(load)):
                c = o.claim_task(f"worker-{rng.randint(1, 3)}", list(QUEUES), ttl=60)
                if c is None:
                    break
                clock.tick(rng.uniform(0.2, 2))
                failed = rng.random() < (0.25 if 20 <= minute <= 26 else 0.04)
                o.release_task(c["id"], c["token"], "failed" if failed else "succeeded",
                               error="HTTP 503 from upstream" if failed else None,
                               result=None if failed else {"bytes": rng.randint(900, 90000)},
                               retry_in=5)
            clock.move_to(start + timedelta(minutes=minute + 1))


def live(sock: Path) -> int:
    """What is going on now: leases, a dead and an unknown item, an agent's session."""
    with Client(sock) as c:
        for q in QUEUES:
            for i in range(4):
                c.submit_task({"url": f"https://example.org/new/{q}/{i}"}, queue=q)
        for w, ttl in (("worker-1", 120), ("worker-2", 45), ("worker-3", 300)):
            c.claim_task(w, list(QUEUES), ttl=ttl)
        dead = c.submit_task({"to": "ops@example.org", "subject": "<weekly report>"},
                             queue="email", max_attempts=2)
        for _ in range(2):
            got = c.claim_task("mailer", "email", item_id=dead["id"])
            c.release_task(dead["id"], got["token"], "failed", retry_in=0,
                           error="SMTP 421: service not available")
        charge = c.submit_task({"invoice": 1042, "eur": 99}, queue="billing", effect="unsafe")
        c.claim_task("biller", "billing", ttl=0.2)
        # the agent's run: a session, two goals, their tool executions
        s = c.start_session("agent-7", key="triage-2026-11-23",
                            payload={"task": "triage yesterday's failed crawls"}, ttl=120)
        c.checkpoint(s["id"], s["token"], {"step": "report", "goals_done": 1})
        g1 = c.create_goal(s["id"], s["token"], key="collect", payload={"goal": "collect"})
        e = c.execute_tool_idempotent(g1["id"], g1["token"], "search_logs",
                                      {"since": "2026-11-22", "level": "error"})
        c.release_task(e["id"], e["token"], "succeeded", result={"matches": 41})
        e = c.execute_tool_idempotent(g1["id"], g1["token"], "fetch", {"url": "https://x.org/a"},
                                      effect="idempotent")
        c.release_task(e["id"], e["token"], "failed", error="timeout", retry_in=0)
        e = c.execute_tool_idempotent(g1["id"], g1["token"], "fetch", {"url": "https://x.org/a"},
                                      effect="idempotent")
        c.release_task(e["id"], e["token"], "succeeded", result={"status": 200})
        c.release_task(g1["id"], g1["token"], "succeeded", result={"failed_crawls": 41})
        g2 = c.create_goal(s["id"], s["token"], key="report", payload={"goal": "report"},
                           ttl=90)
        c.checkpoint(g2["id"], g2["token"], {"sections": ["summary", "causes"]})
        e = c.execute_tool_idempotent(g2["id"], g2["token"], "write_file",
                                      {"path": "report.md"}, effect="idempotent")
        c.release_task(e["id"], e["token"], "succeeded", result={"bytes": 5120})
        c.execute_tool_idempotent(g2["id"], g2["token"], "send_email",
                                  {"to": "team@example.org", "attach": "report.md"}, ttl=60)
        time.sleep(0.3)
        c.stale_recovery()  # the unsafe charge's holder is gone: unknown
        assert c.get_task(charge["id"])["status"] == "unknown"
        return s["id"]


def browser(width: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--window-size={width},900", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def shoot(driver, url: str, dest: Path, width: int, max_height: int) -> None:
    """The page whole (up to ``max_height``), ``width`` px wide."""
    driver.get(url)
    time.sleep(0.5)
    for _ in range(3):  # the window's frame is not the page: size until they agree
        height = driver.execute_script("return document.documentElement.scrollHeight")
        extra = driver.execute_script("return window.outerHeight - window.innerHeight")
        driver.set_window_size(width, min(height, max_height) + extra)
        time.sleep(0.2)
    driver.save_screenshot(str(dest))
    print(f"{dest} ({dest.stat().st_size // 1024} KiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "docs")
    ap.add_argument("--keep", action="store_true", help="leave the daemon running")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="orch-shots-", dir="/tmp"))
    db, sock = d / "orch.db", d / "orch.sock"
    history(db)
    daemon = subprocess.Popen([sys.executable, "-m", "orchestrator", "--db", str(db),
                               "--socket", str(sock), "daemon", "--http", "127.0.0.1:0",
                               "--log-file", str(d / "daemon.log")],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 20
        while not paths.web_access_file(sock).exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        session_id = live(sock)
        url = access.read(sock)["url"]
        login = access.login_url(access.read(sock))
        a.out.mkdir(parents=True, exist_ok=True)
        driver = browser(WIDTH)
        try:
            driver.get(login)
            shoot(driver, url, a.out / "overview.png", WIDTH, 1600)
            shoot(driver, f"{url}sessions/{session_id}", a.out / "session.png", WIDTH, 1300)
        finally:
            driver.quit()
        if a.keep:
            print(f"daemon {daemon.pid} keeps running: {login}")
            return
    finally:
        if not a.keep:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
