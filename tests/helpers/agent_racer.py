"""One racer for the executeToolIdempotent races in tests/test_races.py, its own process.

    agent_racer.py embedded DB GOAL_ID TOKEN INDEX
    agent_racer.py daemon SOCKET GOAL_ID TOKEN INDEX

The backend is opened first (and used once), then "ready" is printed and the racer
blocks on a line from stdin; the test releases every racer at once by writing "go".

    Phase 1: execute_tool_idempotent with the shared key "the-one".
    Phase 2 (after another ready/go): with key "k<INDEX % 10>".

Each phase prints one JSON line: {"id", "created", "claimed", "status", "fence"} or
{"error": "<exception class>", "message": ...}.
"""

import json
import sys

from orchestrator import OrchError, Orchestrator
from orchestrator.client import Client


def barrier() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(9)


def call(api, goal_id: int, token: str, key: str) -> dict:
    try:
        r = api.execute_tool_idempotent(goal_id, token, "search", {"q": key}, key=key)
    except OrchError as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"id": r["id"], "created": r["created"], "claimed": r["claimed"],
            "status": r["status"], "fence": r["fence"], "has_token": "token" in r}


def main() -> None:
    mode, where, goal_id, token, index = sys.argv[1:6]
    goal_id, index = int(goal_id), int(index)
    if mode == "embedded":
        api = Orchestrator(where, busy_budget_s=60)
    elif mode == "daemon":
        api = Client(where, timeout=60, connect_within=5)
    else:
        sys.exit(f"unknown mode {mode}")
    api.get_task(goal_id)  # connected, schema read: the race starts at the barrier
    barrier()
    print(json.dumps(call(api, goal_id, token, "the-one")), flush=True)
    barrier()
    print(json.dumps(call(api, goal_id, token, f"k{index % 10}")), flush=True)
    api.close()


if __name__ == "__main__":
    main()
