"""An agent whose work survives kill -9: run it, kill it mid-way, run it again.

    python scripts/agent_example.py            # the daemon if it runs, else the file
"""
import os
import sys
import time

from orchestrator import Conflict, Orchestrator
from orchestrator.client import connect

orch = connect(None, None) or Orchestrator()  # the daemon when it answers, else embedded
SLOW = float(os.environ.get("EXAMPLE_SLOW", "0"))  # seconds each tool call takes


def send_report(to: str) -> dict:  # the side effect we must not repeat
    time.sleep(SLOW)
    return {"sent_to": to, "at": time.time()}


# Start today's session, or take it back after a crash once its lease has expired.
while True:
    try:
        s = orch.start_session("report-agent", key="daily-report", ttl=5)
        break
    except Conflict as busy:  # the crashed run's lease is still live
        print("waiting:", busy, file=sys.stderr)
        time.sleep(1)
if not s["claimed"]:
    sys.exit(f"session {s['id']} is {s['status']} already: nothing to do")
print("session", s["id"], "attempt", s["attempt"], "checkpoint", s["checkpoint"])

with orch.hold(s) as session:
    goal = orch.create_goal(s["id"], s["token"], key="send-daily-report")
    with orch.hold(goal):
        call = orch.execute_tool_idempotent(goal["id"], goal["token"], "send_report",
                                            {"to": "team@example.org"})
        if call["claimed"]:  # ours to run: created now, or never started before
            with orch.hold(call) as tool:
                tool.result = send_report("team@example.org")
            print("sent")
        else:  # it ran before: never again
            print("tool call", call["id"], "is", call["status"], "result", call["result"])
    session.checkpoint({"report": "done"})
