"""An agent on one simulated machine, for the handoff test in tests/test_pg_machines.py.

    machine_agent.py SOCKET TTL_SECONDS SESSION_KEY

Through the daemon on SOCKET only: starts a session (worker "agent-a"), adds a goal
(key "g1"), checkpoints the session twice ({"step": 1}, then {"step": 2}), prints both
claims (tokens included) as one JSON line {"session", "goal"}, then heartbeats both
every TTL/4 until it is killed. A failed heartbeat is let be: its daemon dies first.
"""

import json
import sys
import time

from orchestrator import OrchError
from orchestrator.client import Client


def main() -> None:
    sock, ttl, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    api = Client(sock, timeout=10, connect_within=0)
    s = api.start_session("agent-a", key=key, payload={"job": "report"}, ttl=ttl)
    g = api.create_goal(s["id"], s["token"], key="g1", payload={"goal": "write it"})
    api.checkpoint(s["id"], s["token"], {"step": 1})
    api.checkpoint(s["id"], s["token"], {"step": 2})
    print(json.dumps({"session": s, "goal": g}), flush=True)
    while True:
        time.sleep(ttl / 4)
        for c in (s, g):
            try:
                api.heartbeat(c["id"], c["token"])
            except OrchError:
                pass


if __name__ == "__main__":
    main()
