"""An agent in its own process, driven one call at a time: for tests/test_agent_fencing.py.

    agent_steps.py embedded DB
    agent_steps.py daemon SOCKET

Prints "ready" once the backend is open; then, for every stdin line
{"op": NAME, "args": [...], "kwargs": {...}}, calls that method of the Python API and
prints one JSON line: {"ok": result} or {"error": class, "exit": CLI exit code,
"message": ..., "data": ...}. Exits when stdin closes.
"""

import json
import sys

from orchestrator import OrchError, Orchestrator
from orchestrator.client import Client
from orchestrator.errors import exit_code


def main() -> None:
    mode, where = sys.argv[1:3]
    api = Orchestrator(where) if mode == "embedded" else Client(where, connect_within=5)
    api.status()
    print("ready", flush=True)
    for line in sys.stdin:
        call = json.loads(line)
        try:
            answer = {"ok": getattr(api, call["op"])(*call.get("args", ()),
                                                     **call.get("kwargs", {}))}
        except OrchError as exc:
            answer = {"error": type(exc).__name__, "exit": exit_code(exc),
                      "message": str(exc), "data": exc.data}
        print(json.dumps(answer), flush=True)
    api.close()


if __name__ == "__main__":
    main()
