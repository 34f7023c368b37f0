"""The command ``orch work`` runs in tests; what it does is read from its payload.

Payload keys (all optional): ``log`` (a JSON-lines file: a "start" and an "end" record
with the item, attempt, fence, pid and time), ``ignore_term`` (SIGTERM is ignored, so
only SIGKILL stops it), ``barrier`` ({"dir", "count"}: wait until that many commands
have started), ``wait_for`` (a file to wait for), ``hang`` / ``hang_attempts`` (sleep a
minute, always or on those attempts), ``sleep``, ``echo`` (print the payload and the
ORCH_* variables as JSON), ``stdout``, ``stderr``, ``exit``.
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

payload = json.load(sys.stdin)
me = {"id": int(os.environ["ORCH_ITEM_ID"]), "attempt": int(os.environ["ORCH_ATTEMPT"]),
      "fence": int(os.environ["ORCH_FENCE"]), "pid": os.getpid()}


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def note(event: str, **extra) -> None:
    if payload.get("log"):
        with open(payload["log"], "a") as f:
            f.write(json.dumps({**me, "event": event, "t": time.time(), **extra}) + "\n")


if payload.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
earlier = []
if payload.get("log") and os.path.exists(payload["log"]):
    with open(payload["log"]) as f:
        earlier = [r["pid"] for r in map(json.loads, f)
                   if r["id"] == me["id"] and r["event"] == "start"]
note("start", earlier_alive=[p for p in earlier if alive(p)])

if payload.get("barrier"):
    d = Path(payload["barrier"]["dir"])
    (d / f"{me['id']}.{me['attempt']}").touch()
    deadline = time.monotonic() + 5
    while len(list(d.iterdir())) < payload["barrier"]["count"] and time.monotonic() < deadline:
        time.sleep(0.02)
    note("barrier", met=len(list(d.iterdir())) >= payload["barrier"]["count"])
if payload.get("wait_for"):
    deadline = time.monotonic() + 30
    while not os.path.exists(payload["wait_for"]) and time.monotonic() < deadline:
        time.sleep(0.02)
if payload.get("hang") or me["attempt"] in payload.get("hang_attempts", []):
    time.sleep(60)
time.sleep(payload.get("sleep", 0))
if payload.get("echo"):
    print(json.dumps({"payload": payload, **{k: os.environ[k] for k in (
        "ORCH_ITEM_ID", "ORCH_FENCE", "ORCH_ATTEMPT", "ORCH_QUEUE", "ORCH_WORKER")},
                      "has_token": bool(os.environ.get("ORCH_TOKEN"))}))
sys.stdout.write(payload.get("stdout", ""))
sys.stderr.write(payload.get("stderr", ""))
note("end")
sys.exit(payload.get("exit", 0))
