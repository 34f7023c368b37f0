"""An agent that dies holding its session: for the kill -9 tests in tests/test_agent_sessions.py.

    agent_holder.py DB TTL_SECONDS SESSION_KEY

Starts a session (worker "doomed-agent", the given ttl and key), adds a goal (key
"g1"), starts an unsafe tool execution (tool send_email, key "send") and an idempotent
one (tool fetch, key "fetch"), checkpoints the session, prints every claim (tokens
included) as one JSON line {"session", "goal", "unsafe", "idempotent"} and sleeps.
It never heartbeats or releases: the test SIGKILLs it.
"""

import json
import sys
import time

from orchestrator import Orchestrator


def main() -> None:
    db, ttl, key = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    orch = Orchestrator(db)
    s = orch.start_session("doomed-agent", key=key, payload={"job": "report"}, ttl=ttl)
    g = orch.create_goal(s["id"], s["token"], key="g1", payload={"goal": "send it"})
    unsafe = orch.execute_tool_idempotent(g["id"], g["token"], "send_email",
                                          {"to": "team@example.org"}, key="send")
    idem = orch.execute_tool_idempotent(g["id"], g["token"], "fetch",
                                        {"url": "https://example.org"}, key="fetch",
                                        effect="idempotent")
    orch.checkpoint(s["id"], s["token"], {"step": 2, "goal": g["id"]})
    print(json.dumps({"session": s, "goal": g, "unsafe": unsafe, "idempotent": idem}),
          flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
