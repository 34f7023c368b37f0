"""``Orchestrator``: the Python API (``interface.Operations``) run in this process
against the database file (embedded mode)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

from . import clock, defaults, doctor, paths, rules, validate
from .errors import InvalidInput
from .interface import Operations
from .operations import OPERATIONS
from .registry import BY_NAME
from .store import open_store

#: Operations that can wait, and when their result is final.
WAITS: dict[str, Callable[[Any], bool]] = {
    name: op.settled for name, op in BY_NAME.items() if op.settled is not None}


class Orchestrator(Operations):
    """orch embedded: the operations run in this process against the database file."""

    mode = "embedded"

    def __init__(self, db: str | Path | None = None, *, synchronous: str = "full",
                 busy_budget_s: float = defaults.BUSY_BUDGET_S, create: bool = True,
                 init: bool = False, **store_options: Any):
        """Open ``db`` (default: the per-user file; a ``postgresql://`` URL selects
        PostgreSQL). A missing file is created unless ``create`` is False (NotFound
        then); a file or database without orch's schema, an empty one included, raises
        NotFound unless ``init`` is set (on PostgreSQL, ``create`` makes the schema)."""
        self.db_path = paths.db_arg(db) if db is not None else paths.default_db()
        self.synchronous = synchronous
        self.store_options = store_options
        self.store = open_store(self.db_path, synchronous=synchronous,
                                busy_budget_s=busy_budget_s, create=create, init=init,
                                **store_options)

    def _call(self, op: str, params: dict[str, Any]) -> Any:
        kwargs = validate.check(op, params)
        if op == "ping":
            return {"pong": True, "now": clock.now_ms(), "db": paths.shown(self.db_path),
                    "pid": os.getpid(), "mode": "embedded"}
        if op in WAITS and kwargs["wait"]:
            return self._polling(op, kwargs, WAITS[op])
        out = self.run(op, kwargs)
        if op == "release_and_claim" and out["next"] is None and kwargs["wait"]:
            # Released (committed); only the claim waits.
            out["next"] = self._polling("claim_task", rules.next_claim(out["released"], **kwargs),
                                        WAITS["claim_task"])
        return out

    def run(self, op: str, kwargs: dict[str, Any]) -> Any:
        """Run a checked operation in its own transaction."""
        fn, writes = OPERATIONS[op]
        execute = self.store.write if writes else self.store.read
        return execute(lambda tx: fn(tx, tx.now(), **kwargs))

    def _polling(self, op: str, kwargs: dict[str, Any], settled: Callable[[Any], bool]) -> Any:
        # Embedded mode has no one to wake it: poll, backing off up to 1 s.
        deadline = time.monotonic() + kwargs["wait"] / 1000
        pause = 0.05
        while True:
            out = self.run(op, kwargs)
            left = deadline - time.monotonic()
            if settled(out) or left <= 0:
                return out
            time.sleep(min(pause, left))
            pause = min(pause * 2, 1.0)

    def clone(self) -> Orchestrator:
        return Orchestrator(self.db_path, synchronous=self.synchronous,
                            busy_budget_s=self.store.busy_budget_s, create=False,
                            **self.store_options)

    def doctor(self) -> dict:
        """Check the file: integrity, the event chain, that replay equals the rows, the
        lease rules, and that a daemon serving the file holds its locks and the WAL that
        is on disk; a damaged file raises ``Corrupt``."""
        return doctor.check(self.store, self.db_path if isinstance(self.db_path, Path) else None)

    def backup(self, dest: str | Path) -> None:
        """A consistent copy of the database at ``dest``, taken while writers go on
        (SQLite; PostgreSQL is backed up with pg_dump)."""
        if not isinstance(self.db_path, Path):
            raise InvalidInput("orch backup copies a SQLite file; back up a PostgreSQL "
                               "database with pg_dump", data={"field": "db"})
        self.store.backup(Path(dest))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
