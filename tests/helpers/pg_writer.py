"""One writer of the exact-following test (tests/test_pg_machines.py), its own process.

    pg_writer.py URL NAME SEED ROUNDS

On the embedded API over URL: ROUNDS random steps, each one of: submit one item;
submit 10 to 40 in one transaction (a transaction that takes many event numbers and
stays open while it does); claim from the shared queue and release the claim
(succeeded, failed or requeue); with a short sleep now and then. Prints what it did as
one JSON line of counts.
"""

import json
import random
import sys
import time
from collections import Counter

from orchestrator import Orchestrator


def main() -> None:
    url, name, seed, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    done: Counter[str] = Counter()
    with Orchestrator(url, busy_budget_s=60) as orch:
        for r in range(rounds):
            step = rng.choice(["submit", "many", "claim", "claim"])
            if step == "submit":
                orch.submit_task({"by": name, "r": r})
            elif step == "many":
                orch.submit_many([{"payload": {"by": name, "r": r, "i": i}}
                                  for i in range(rng.randint(10, 40))])
            else:
                c = orch.claim_task(name, ttl=30)
                if c is None:
                    step = "nothing"
                else:
                    outcome = rng.choice(["succeeded", "failed", "requeue"])
                    orch.release_task(c["id"], c["token"], outcome,
                                      retry_in=0.01 if outcome == "failed" else None)
            done[step] += 1
            if rng.random() < 0.3:
                time.sleep(rng.uniform(0, 0.02))
    print(json.dumps(done), flush=True)


if __name__ == "__main__":
    main()
