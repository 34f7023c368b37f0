"""A lease holder that the test stops and continues: for the Lease.check() test.

    paused_holder.py DB TTL_SECONDS HEARTBEAT_EVERY

Submits and claims one task with the given ttl, holds it with ``orch.hold`` (the
background heartbeat every HEARTBEAT_EVERY seconds), prints the claim's id and
"ready", then answers each line on stdin with "ok" when ``lease.check()`` passes and
"lost" when it raises LeaseLost. Exits at end of input without releasing (the test
reads the lease as it was left).
"""

import os
import sys

from orchestrator import LeaseLost, Orchestrator


def main() -> None:
    db, ttl, every = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    orch = Orchestrator(db)
    orch.submit_task("paused", queue="paused")
    claim = orch.claim_task("paused-holder", ["paused"], ttl=ttl)
    with orch.hold(claim, heartbeat_every=every) as lease:
        print(claim["id"], flush=True)
        print("ready", flush=True)
        for _ in sys.stdin:
            try:
                lease.check()
                print("ok", flush=True)
            except LeaseLost:
                print("lost", flush=True)
        os._exit(0)  # no release: what the lease became is the test's to read


if __name__ == "__main__":
    main()
