"""A follower of the event log (tests/test_pg_machines.py), its own process.

    event_follower.py URL STOP_FILE

On the embedded API over URL, reads list_events(since=LAST) over and over, LAST being
the last number it has seen, and keeps every event's number. Prints "ready" once
connected. Once STOP_FILE exists (the writers are done), it reads until a read returns
nothing, then prints every number it saw, in the order seen, as one JSON line.
"""

import json
import os
import sys
import time

from orchestrator import Orchestrator


def main() -> None:
    url, stop = sys.argv[1:3]
    seen: list[int] = []
    last = 0
    with Orchestrator(url, busy_budget_s=60) as orch:
        orch.list_events(since=0, limit=1)
        print("ready", flush=True)
        while True:
            stopping = os.path.exists(stop)
            batch = orch.list_events(since=last)
            seen += [e["seq"] for e in batch]
            if batch:
                last = batch[-1]["seq"]
            elif stopping:
                break
            else:
                time.sleep(0.001)
    print(json.dumps(seen), flush=True)


if __name__ == "__main__":
    main()
