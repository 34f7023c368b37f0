"""Submit items through the daemon's socket until told to stop (tests/test_foreign_sqlite.py).

    socket_submitter.py SOCKET NAME OUT_FILE STOP_FILE

Submits {"by": NAME, "n": i} without a key (so a lost or doubled item cannot hide behind
one) and writes each answer to OUT_FILE at once, before the next request:

    ack N ITEM_ID     the daemon acknowledged submit N
    unknown N         the connection was lost after sending: it may have happened
    error N MESSAGE   the daemon answered with an error

Stops when STOP_FILE exists, the daemon is gone, or after 60 s.
"""

import os
import sys
import time

from orchestrator.client import Client
from orchestrator.errors import OrchError, OutcomeUnknown, Unavailable


def main() -> None:
    sock, name, out_path, stop = sys.argv[1:5]
    client = Client(sock, timeout=30, connect_within=1)
    deadline = time.monotonic() + 60
    i = 0
    with open(out_path, "w", buffering=1) as out:
        while time.monotonic() < deadline and not os.path.exists(stop):
            try:
                item = client.submit_task({"by": name, "n": i})
                out.write(f"ack {i} {item['id']}\n")
            except OutcomeUnknown:
                out.write(f"unknown {i}\n")
            except Unavailable as exc:
                out.write(f"error {i} {exc}\n")
                break
            except OrchError as exc:
                out.write(f"error {i} {exc}\n")
            i += 1
            time.sleep(0.005)
    client.close()


if __name__ == "__main__":
    main()
