"""A racing worker for tests/test_races.py, run as its own OS process.

    race_worker.py DB WORKER drain
        Claim and release (succeeded) until nothing is left; print the claims as one
        JSON line: [[item_id, fence, attempt], ...].
    race_worker.py DB WORKER one ITEM_ID
        Phase 1: claim_task from the default queue once; print {"claim": [id, fence]|null}.
        Phase 2 (after a second "go"): claim_task(item_id=ITEM_ID); print
        {"claim": [id, fence]} or {"error": "<exception class>"}.

DB is a database (a file or a postgresql:// URL), or daemon:SOCKET to go through the
daemon on SOCKET. The database is opened first, then "ready" is printed and the worker
blocks on a line from stdin: the test releases every worker at once by writing "go" to
all of them.
"""

import json
import sys

from orchestrator import OrchError, Orchestrator
from orchestrator.client import Client


def barrier() -> None:
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        sys.exit(9)


def main() -> None:
    db, worker, mode = sys.argv[1:4]
    if db.startswith("daemon:"):
        orch = Client(db.removeprefix("daemon:"), timeout=60, connect_within=5)
    else:
        orch = Orchestrator(db, busy_budget_s=60)
    orch.ping()  # the connection is open and the schema read before the race starts
    if mode == "drain":
        barrier()
        claims = []
        while True:
            c = orch.claim_task(worker, ttl=120)
            if c is None:
                break
            claims.append([c["id"], c["fence"], c["attempt"]])
            orch.release_task(c["id"], c["token"], "succeeded", result={"by": worker})
        print(json.dumps(claims), flush=True)
    elif mode == "one":
        target = int(sys.argv[4])
        barrier()
        c = orch.claim_task(worker, ttl=120)
        print(json.dumps({"claim": None if c is None else [c["id"], c["fence"]]}), flush=True)
        barrier()
        try:
            c = orch.claim_task(worker, ttl=120, item_id=target)
            print(json.dumps({"claim": [c["id"], c["fence"]]}), flush=True)
        except OrchError as exc:
            print(json.dumps({"error": type(exc).__name__}), flush=True)
    else:
        sys.exit(f"unknown mode {mode}")
    orch.close()


if __name__ == "__main__":
    main()
