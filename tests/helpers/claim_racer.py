"""One claimer in the race across two daemons (tests/test_pg_machines.py), its own process.

    claim_racer.py SOCKET WORKER

Connects to the daemon on SOCKET (one ping), prints "ready" and waits for "go" on
stdin; then claims once from the default queue and, if it got an item, releases it
succeeded with {"by": WORKER}. Prints one JSON line: {"claim": [id, fence] | null}, or
{"error": "<exception class>", "message": ...}.
"""

import json
import sys

from orchestrator import OrchError
from orchestrator.client import Client


def main() -> None:
    sock, worker = sys.argv[1:3]
    api = Client(sock, timeout=60, connect_within=5)
    api.ping()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(9)
    try:
        c = api.claim_task(worker, ttl=60)
        if c is not None:
            api.release_task(c["id"], c["token"], "succeeded", result={"by": worker})
        answer = {"claim": None if c is None else [c["id"], c["fence"]]}
    except OrchError as exc:
        answer = {"error": type(exc).__name__, "message": str(exc)}
    print(json.dumps(answer), flush=True)
    api.close()


if __name__ == "__main__":
    main()
