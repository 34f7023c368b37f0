"""Claim items by id with a short lease, checkpoint them, print the claims, then hang.

    crash_holder.py DB TTL_SECONDS ITEM_ID...

Prints one JSON line: a list of claims ({id, token, fence, lease_expires_at, ...}).
The test SIGKILLs this process while it sleeps, so it never releases anything.
"""

import json
import sys
import time

from orchestrator import Orchestrator


def main() -> None:
    db, ttl = sys.argv[1], float(sys.argv[2])
    orch = Orchestrator(db)
    claims = []
    for item_id in map(int, sys.argv[3:]):
        c = orch.claim_task("doomed", ttl=ttl, item_id=item_id)
        orch.checkpoint(c["id"], c["token"], {"step": 3, "item": c["id"]})
        claims.append(c)
    print(json.dumps(claims), flush=True)
    time.sleep(3600)


if __name__ == "__main__":
    main()
