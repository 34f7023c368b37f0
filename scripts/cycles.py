#!/usr/bin/env python3
"""A first rough figure: claim -> release cycles per second, embedded, one process.

    python scripts/cycles.py [--items N] [--synchronous full|normal] [--next]

--next loops with release_and_claim (one transaction per cycle) instead of
claim_task + release_task (two).

The full side-by-side benchmark is scripts/bench.py.
"""

import argparse
import tempfile
import time
from pathlib import Path

from orchestrator import Orchestrator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=5000)
    ap.add_argument("--synchronous", choices=("full", "normal"), default="full")
    ap.add_argument("--next", action="store_true", help="loop with release_and_claim")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d, \
            Orchestrator(Path(d) / "cycles.db", synchronous=args.synchronous) as orch:
        orch.submit_many([{"payload": {"n": i}} for i in range(args.items)])
        start = time.perf_counter()
        done = 0
        if args.next:
            claim = orch.claim_task("bench", ttl=60)
            while claim is not None:
                claim = orch.release_and_claim(claim["id"], claim["token"], "succeeded")["next"]
                done += 1
        while (claim := orch.claim_task("bench", ttl=60)) is not None:
            orch.release_task(claim["id"], claim["token"], "succeeded")
            done += 1
        elapsed = time.perf_counter() - start
    print(f"{done} cycles in {elapsed:.2f} s: {done / elapsed:,.0f} claim->release cycles/s "
          f"(embedded, 1 process, synchronous={args.synchronous}"
          f"{', release_and_claim' if args.next else ''})")


if __name__ == "__main__":
    main()
