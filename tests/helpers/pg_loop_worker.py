"""A worker that claims and releases through the daemon until told to stop, its own
process (tests/test_pg_faults.py, whose test cuts the daemon's database connections
meanwhile).

    pg_loop_worker.py SOCKET WORKER STOP_FILE

Prints one JSON line per reply, flushed at once:

    {"released": [item_id, fence]}        a release the daemon acknowledged
    {"error": [op, class, exit, rpc]}     a request that failed, and how

and stops once STOP_FILE exists, exiting 0.
"""

import json
import os
import sys
import time

from orchestrator.client import Client
from orchestrator.errors import OrchError, exit_code, rpc_code


def say(value: object) -> None:
    print(json.dumps(value), flush=True)


def main() -> None:
    sock, worker, stop = sys.argv[1:4]
    client = Client(sock, timeout=30, connect_within=5)
    while not os.path.exists(stop):
        op = "claim"
        try:
            claim = client.claim_task(worker, ttl=2)
            if claim is None:
                time.sleep(0.01)
                continue
            op = "release"
            client.release_task(claim["id"], claim["token"], "succeeded", result={"by": worker})
            say({"released": [claim["id"], claim["fence"]]})
        except OrchError as exc:
            say({"error": [op, type(exc).__name__, exit_code(exc), rpc_code(exc)]})
    client.close()


if __name__ == "__main__":
    main()
