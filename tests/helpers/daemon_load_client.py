"""A client process that loads the daemon until it goes away (tests/test_crash.py).

    daemon_load_client.py SOCKET NAME OUT_FILE

Submits items with unique keys NAME-0, NAME-1, ... on queue "load" and, every fourth
submit, claims one. Every reply that came back is written to OUT_FILE at once (one
line each, flushed) before the next request is sent:

    ack KEY ITEM_ID        a submit the daemon acknowledged
    fence FENCE ITEM_ID    a claim the daemon acknowledged
    unknown KEY            the connection was lost after sending: it may have happened

It stops when the daemon cannot be reached any more (or after 60 s), and exits 0.
"""

import sys
import time

from orchestrator.client import Client
from orchestrator.errors import OutcomeUnknown, Unavailable


def main() -> None:
    sock, name, out_path = sys.argv[1:4]
    client = Client(sock, timeout=10, connect_within=0.5)
    deadline = time.monotonic() + 60
    i = 0
    with open(out_path, "w", buffering=1) as out:
        while time.monotonic() < deadline:
            key = f"{name}-{i}"
            try:
                item = client.submit_task({"n": i, "by": name}, queue="load", key=key)
                out.write(f"ack {key} {item['id']}\n")
                if i % 4 == 3:
                    claim = client.claim_task(name, ["load"], ttl=600)
                    if claim is not None:
                        out.write(f"fence {claim['fence']} {claim['id']}\n")
            except OutcomeUnknown:
                out.write(f"unknown {key}\n")
            except Unavailable:
                break
            i += 1
    client.close()


if __name__ == "__main__":
    main()
