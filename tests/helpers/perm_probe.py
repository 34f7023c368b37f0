"""Open the default database (OPENCLAW_HOME / ORCH_DB), write, and report file modes.

Prints one JSON line {path: mode-or-null} for the database, its -wal and its -shm,
taken while the connection is still open (SQLite removes the -wal on the last close).
"""

import json
import os

from orchestrator import Orchestrator


def main() -> None:
    orch = Orchestrator()
    item = orch.submit_task({"probe": True})
    c = orch.claim_task("probe", ttl=30, item_id=item["id"])
    orch.release_task(c["id"], c["token"], "succeeded")
    db = str(orch.db_path)
    modes = {}
    for path in (db, db + "-wal", db + "-shm"):
        modes[path] = os.stat(path).st_mode & 0o777 if os.path.exists(path) else None
    print(json.dumps(modes), flush=True)
    orch.close()


if __name__ == "__main__":
    main()
