"""Write as fast as possible until killed: submit, claim, checkpoint, heartbeat, release.

    burst_writer.py DB WORKER

After every committed release it prints how many items this process has released as
succeeded so far, so the test knows what must have survived a kill -9.
"""

import sys

from orchestrator import Orchestrator


def main() -> None:
    db, worker = sys.argv[1:3]
    orch = Orchestrator(db, busy_budget_s=60)
    done = 0
    while True:
        # Each submit, claim and release is a transaction of its own; the submit_many
        # makes some transactions big, so a kill can land in the middle of a long one.
        orch.submit_many([{"payload": {"w": worker, "n": done, "i": i, "pad": "x" * 200},
                           "queue": worker} for i in range(20)])
        for _ in range(20):
            c = orch.claim_task(worker, worker, ttl=60)
            orch.checkpoint(c["id"], c["token"], {"half": True})
            orch.heartbeat(c["id"], c["token"])
            orch.release_task(c["id"], c["token"], "succeeded", result={"n": done})
            done += 1
            print(done, flush=True)


if __name__ == "__main__":
    main()
