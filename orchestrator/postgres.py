"""The PostgreSQL store: the same named queries, transactions and event log as the
SQLite store, on a database that several machines share.

What differs from SQLite, and why:

- **Time** is the database server's clock, read at the start of each transaction, so
  machines whose clocks disagree judge every lease alike.
- **Locks, not one writer.** SQLite lets one transaction write at a time; here many
  do. A write transaction reads the rows it decides about with a row lock (the
  ``__locked`` queries), claimers skip rows another claimer holds, and a conflict the
  server reports (deadlock, a lock not granted, the same key inserted twice) retries
  the whole transaction.
- **Fences and event numbers** come from a sequence, which only grows.
- **The hash chain is kept per item**: each event chains over the previous event of
  its item. A chain over the whole log would make every writer wait for the one before
  it to learn the head. Removing, altering or inserting an event still breaks a chain
  (the item names its latest event, so even the last one cannot go unnoticed).
- **Exact following.** Event numbers are taken before commit, so number 7 can commit
  after number 8. Every write transaction holds a shared advisory lock from its start;
  a reader of ``events_since`` reads the last number handed out, then waits for the
  writers holding that lock at that moment to end, and only then reads: every number up
  to it has committed or never will, and nothing is skipped.
- **Wake-ups across machines**: a transaction that makes an item claimable sends
  NOTIFY orch_claimable; daemons LISTEN (see ``Listener``).

A lost connection is never retried silently: the request fails with ``Unavailable``
(the write's outcome may be unknown), and the next transaction gets a new connection.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
import tenacity
from psycopg import errors as pgerr
from psycopg.rows import dict_row

from . import defaults
from .errors import InvalidInput, NotFound, OrchError, OutcomeUnknown, SchemaTooNew, Unavailable
from .events import GENESIS
from .store import SQL_DIR, Params, Store, TypedReads, attempt_write, load_queries

T = TypeVar("T")

QUERIES = load_queries((SQL_DIR / "postgres" / "queries.sql").read_text())
MIGRATIONS: list[tuple[int, str, str]] = sorted(
    (int(p.name.split("_", 1)[0]), p.name, p.read_text())
    for p in (SQL_DIR / "postgres" / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
#: Queries that run only after the event horizon is known (see ``PgTx._horizon``).
_HORIZON_QUERIES = frozenset({"events_since", "log_head"})
CHANNEL = "orch_claimable"

# Connection settings orch applies unless the URL gives its own: a link that stalls
# (a partition: packets held, no reset) fails the request in about 10 s instead of
# hanging. And on the server: a transaction whose client went quiet mid-way (orch's
# never wait for a person) ends after 5 s, releasing its row locks and the followers'
# lock; a lock wait longer than 5 s fails the request (exit 7) instead of hanging.
_CONNECT_DEFAULTS = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
    "application_name": "orch",
}
_SERVER_DEFAULTS = {
    "idle_in_transaction_session_timeout": "5s",
    "lock_timeout": "5s",
}


def masked(url: str) -> str:
    """The URL as orch prints it: a password, if any, replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://***"
    if parts.password is not None:
        netloc = parts.netloc.rsplit("@", 1)
        user = netloc[0].split(":", 1)[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))
    return re.sub(r"(password=)[^&]*", r"\1***", url)


class Busy(Exception):
    """A conflict the server resolved by failing one side: the transaction is retried."""


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, pgerr.UniqueViolation):
        # Two transactions created one key at once: the loser, retried, finds the item.
        return exc.diag.constraint_name == "items_key"
    return isinstance(exc, (pgerr.DeadlockDetected, pgerr.LockNotAvailable,
                            pgerr.SerializationFailure))


def unavailable(exc: BaseException, where: str) -> OrchError:
    """A psycopg error as orch reports it: one line, the password never shown."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, pgerr.InsufficientPrivilege):
        return Unavailable(f"database {where}: permission denied ({first}); grant the role "
                           "orch's rights (see the README)")
    if isinstance(exc, pgerr.InvalidCatalogName):
        return Unavailable(f"database {where} does not exist ({first}); create it first "
                           "(createdb)")
    return Unavailable(f"database {where} unavailable: {first}")


def _redacted(text: str, url: str) -> str:
    """``text`` with ``url``'s password, wherever it appears, replaced by ``***``.

    libpq quotes the URL, or the part it could not decode, in its messages; the URL
    may not parse, so its password is found by hand.
    """
    text = text.replace(url, masked(url))
    netloc = re.split(r"[/?#]", url.split("://", 1)[-1], maxsplit=1)[0]
    userinfo = netloc.rsplit("@", 1)[0] if "@" in netloc else ""
    secrets = re.findall(r"[?&]password=([^&#]*)", url)
    if ":" in userinfo:
        secrets.append(userinfo.split(":", 1)[1])
    for secret in sorted({s for raw in secrets for s in (raw, unquote(raw)) if s},
                         key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _conninfo(url: str) -> str:
    """The connection string orch connects with; a URL libpq cannot read is the user's
    input to fix (exit 2), not a server that is away."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise InvalidInput(f"database URL {masked(url)} is not valid: "
                           f"{_redacted(str(exc).strip(), url)}") from None
    port = str(params.get("port", ""))
    if not all(p.isdigit() or not p for p in port.split(",")):
        raise InvalidInput(f"database URL {masked(url)} is not valid: the port must be a "
                           "number")
    extra: dict[str, Any] = {k: v for k, v in _CONNECT_DEFAULTS.items() if k not in params}
    # Server settings go first in ``options``: a -c of the URL's own comes later and wins.
    ours = " ".join(f"-c {k}={v}" for k, v in _SERVER_DEFAULTS.items())
    extra["options"] = f"{ours} {params['options']}" if params.get("options") else ours
    return psycopg.conninfo.make_conninfo(url, **extra)


def schema_tables(url: str) -> list[str]:
    """The tables, views and sequences already in the schema ``url`` works in; looked at
    without creating anything (orch copy fills only an empty schema)."""
    try:
        with psycopg.connect(_conninfo(url), autocommit=True, row_factory=dict_row) as conn:
            return [r["name"] for r in conn.execute(QUERIES["schema_tables"]).fetchall()]
    except psycopg.Error as exc:
        raise unavailable(exc, masked(url)) from exc


class PgTx(TypedReads):
    """One transaction on PostgreSQL, with the methods of ``store.Tx``."""

    def __init__(self, conn: Any, store: PostgresStore, *, write: bool):
        self.conn = conn
        self.store = store
        self.write = write
        self.begun = False
        self.notify = False
        self.last_seq = 0
        self._now: int | None = None
        self._reserved: int | None = None
        self._heads: dict[int | None, str] = {}
        self._savepoints = 0
        self.registering: dict[str, int] = {}  # known to the store once committed
        self.schema_version = SCHEMA_VERSION
        if write:
            # One round trip: BEGIN and the transaction's lock and clock together.
            row = self._exec("BEGIN; " + QUERIES["begin_write"], None)[0]
            self.begun = True
            self._now = row["now"] if store.clock is None else store.clock()

    def _begin(self, statement: str) -> None:
        self.conn.execute(statement)
        self.begun = True

    def _exec(self, sql: str, params: Params | None) -> list[dict[str, Any]]:
        try:
            cur = self.conn.execute(sql, params)
            if params is None:  # several statements in one round trip: the last answers
                while cur.nextset():
                    pass
            return cur.fetchall() if cur.description is not None else []
        except psycopg.Error as exc:
            if _retryable(exc):
                raise Busy(str(exc)) from exc
            raise

    def now(self) -> int:
        """Epoch ms of this transaction: the server's clock when it began."""
        if self._now is None:
            if self.store.clock is not None:
                self._now = self.store.clock()
            else:
                # Not a query of the transaction: a read's snapshot is taken later.
                self._now = self._exec(QUERIES["server_now"], {})[0]["now"]
        assert self._now is not None
        return self._now

    def all(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        if name in _HORIZON_QUERIES:
            assert isinstance(params, dict)
            params = {**params, "horizon": self._horizon()}
        elif not self.begun:
            self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        if name == "link_event":
            return []  # insert_event, just before, linked it in its own statement
        if name == "register_worker" and self._registered(params):
            return []
        sql = QUERIES.get(f"{name}__locked") if self.write else None
        rows = self._exec(sql or QUERIES[name], params)
        if sql is not None and rows and "orch_head" in rows[0]:
            for row in rows:
                head = row.pop("orch_head")
                # None also when the latest event committed after this statement's
                # snapshot (the row was waited for): then link() asks again.
                if head is not None or row["last_event"] == 0:
                    self._heads[row["id"]] = head or GENESIS
        if self.write and (name in ("insert_item", "requeue_item")
                           or (name in ("settle", "settle_linked")
                               and dict(params).get("status") == "pending")):
            self.notify = True  # a claimable item: wake parked claims on every machine
        return rows

    def _registered(self, params: Params) -> bool:
        """Whether the worker's registration would change nothing: the query refreshes
        it at most once a second, and this store committed one recently enough."""
        assert isinstance(params, dict)
        worker, expires = params["worker_id"], params["expires"]
        known = self.store.registered.get(worker)
        if known is not None and expires <= known + 1000:
            return True
        self.registering[worker] = expires
        return False

    def _horizon(self) -> int:
        """The last event number below which every event has committed or never will.

        Read before this transaction's snapshot, so the snapshot sees those commits.
        """
        if self.begun:
            raise RuntimeError("events_since must be a read transaction's first query")
        horizon = self._exec(QUERIES["event_horizon"], {})[0]["horizon"]
        writers = self._exec(QUERIES["event_writers"], {})[0]["writers"]
        deadline = time.monotonic() + self.store.busy_budget_s
        pause = 0.0005
        while writers and self._exec(QUERIES["event_writers_left"],
                                     {"writers": writers})[0]["n"]:
            if time.monotonic() > deadline:
                raise Unavailable("event log: a writer's transaction stayed open past "
                                  f"{self.store.busy_budget_s:g} s; following waits for it")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        self._begin("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return int(horizon)

    def run(self, name: str, params: Params = ()) -> None:
        self.all(name, params)

    def run_many(self, name: str, seq_of_params: Iterable[Params]) -> None:
        seq = list(seq_of_params)
        if not seq:
            return
        if name in ("insert_item_with_id",):
            self.notify = True
        with self.conn.cursor() as cur:
            cur.executemany(QUERIES[name], seq)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        self._savepoints += 1
        name = f"orch_{self._savepoints}"
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            self._heads.clear()  # events appended inside were rolled back too
            self._reserved = None
            self.registering.clear()  # and maybe a registration: let it be made again
            if not self.conn.closed:
                self.conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            raise
        self.conn.execute(f"RELEASE SAVEPOINT {name}")

    # The event chain (see events.py): numbers from the sequence, one chain per item.

    def next_seq(self) -> int:
        if self._reserved is None:
            self._reserved = self.all("next_seq")[0]["seq"]
        assert self._reserved is not None
        return self._reserved

    def link(self, item_id: int | None) -> tuple[int, str]:
        prev = self._heads.get(item_id)
        if prev is None and self._reserved is None and item_id is not None:
            # Both in one round trip: this item's head was not read with its row.
            both = self.all("next_seq_and_head", {"item_id": item_id})[0]
            return both["seq"], both["hash"] or GENESIS
        seq = self.next_seq()
        self._reserved = None
        if prev is None:
            row = None if item_id is None else self.one("item_head", {"item_id": item_id})
            prev = row["hash"] if row is not None else GENESIS
        return seq, prev

    def linked(self, item_id: int | None, seq: int, hash_: str) -> None:
        self._heads[item_id] = hash_
        self.last_seq = seq

    def new_item_ids(self, n: int) -> list[int]:
        return [r["id"] for r in self.all("new_item_ids", {"n": n})]

    def global_chain_until(self) -> int | None:
        """The last event copied from a SQLite file (orch copy): up to it, the events
        keep the chain over the whole log they were written with."""
        row = self.one("meta", {"key": "chain_global_until"})
        return int(row["value"]) if row else None


class PostgresStore(Store):
    """orch on a PostgreSQL database (a ``postgresql://`` URL).

    ``pool``: 0 for one connection used by one thread (the CLI, embedded agents), or
    the size of a psycopg-pool shared by threads (the daemon). ``clock``: where the time
    comes from; None (always, outside tests that move time) is the server's clock.
    """

    kind = "postgresql"
    chain = "item"
    path: str
    BUSY: tuple[type[BaseException], ...] = (Busy,)

    def __init__(self, url: str, *, create: bool = True, init: bool = False, pool: int = 0,
                 busy_budget_s: float = defaults.BUSY_BUDGET_S,
                 clock: Callable[[], int] | None = None):
        self.url = url
        self.path = masked(url)
        self.busy_budget_s = busy_budget_s
        self.clock = clock
        self._lock = threading.Lock()
        self._conn: Any = None
        self._pool: Any = None
        self.conninfo = _conninfo(url)
        self.commit_count = 0  # write transactions committed (tests count them)
        # worker -> the registration expiry this store last committed (saves a
        # statement on most claims and heartbeats)
        self.registered: dict[str, int] = {}
        self._registered_lock = threading.Lock()
        try:
            with self._connection() as conn:
                self._prepare(conn, create=create, init=init)
            if pool:
                from psycopg_pool import ConnectionPool

                self._pool = ConnectionPool(self.conninfo, min_size=1, max_size=pool,
                                            configure=self._configure, open=True,
                                            check=ConnectionPool.check_connection,
                                            name="orch")
        except OrchError:
            self.close()
            raise
        except psycopg.Error as exc:
            self.close()
            raise unavailable(exc, self.path) from exc

    # -- connections --

    def connect(self) -> Any:
        """A new connection, set up as orch uses it (the listener's, say)."""
        conn = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
        self._configure(conn)
        return conn

    @staticmethod
    def _configure(conn: Any) -> None:
        conn.autocommit = True
        conn.row_factory = dict_row

    @contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._pool is not None:
            with self._pool.connection() as conn:
                yield conn
            return
        with self._lock:
            if self._conn is None or self._conn.closed or self._conn.broken:
                self._conn = self.connect()
            yield self._conn

    def _prepare(self, conn: Any, *, create: bool, init: bool) -> None:
        present = conn.execute(QUERIES["has_migrations_table"]).fetchone()
        assert present is not None
        if present["schema"] is None:
            raise Unavailable(f"database {self.path}: role {present['role']} can use no schema "
                              f"of its search_path ({present['search_path']}): each is "
                              "missing or the role lacks USAGE on it; create the schema, "
                              "or grant the role USAGE on it (and CREATE, for orch init)")
        if not present["present"]:
            if present["items"]:
                raise NotFound(f"{self.path} holds tables that are not orch's (an items "
                               "table without orch_migrations); use another database or "
                               "schema", data={"db": self.path})
            if not (create or init):
                raise NotFound(f"{self.path} has no orch schema (orch init creates it)",
                               data={"db": self.path})
        version = 0 if not present["present"] else \
            conn.execute(QUERIES["schema_version"]).fetchone()["version"]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(f"database schema version {version} is newer than this orch "
                               f"knows ({SCHEMA_VERSION}); upgrade orch to open it")
        if version < SCHEMA_VERSION:
            self._migrate(conn)

    def _migrate(self, conn: Any) -> None:
        with conn.transaction():
            conn.execute(QUERIES["migrate_lock"])
            conn.execute(QUERIES["migrations_table"])
            current = conn.execute(QUERIES["schema_version"]).fetchone()["version"]
            for number, name, script in MIGRATIONS:
                if number > current:
                    conn.execute(script)
                    conn.execute(QUERIES["record_migration"],
                                 {"version": number, "name": name})

    # -- transactions --

    @contextmanager
    def transaction(self) -> Iterator[PgTx]:
        """One write transaction; commits when the block ends without an exception."""
        with self._connection() as conn:
            try:
                tx = PgTx(conn, self, write=True)
                try:
                    yield tx
                except BaseException:
                    if not conn.closed:
                        conn.execute("ROLLBACK")
                    raise
            except psycopg.Error as exc:
                raise self._map(exc) from exc
            if conn.broken or conn.closed \
                    or conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                # COMMIT was not sent (or would only roll back): nothing of it stands.
                if not conn.closed and not conn.broken:
                    conn.execute("ROLLBACK")
                raise Unavailable(f"database {self.path}: the connection was lost before "
                                  "COMMIT; nothing was written")
            try:
                conn.execute(QUERIES["notify_claimable"] + "; COMMIT" if tx.notify else "COMMIT")
                self.commit_count += 1
                with self._registered_lock:
                    for worker, expires in tx.registering.items():
                        self.registered[worker] = max(expires, self.registered.get(worker, 0))
            except psycopg.Error as exc:
                if _retryable(exc):
                    raise Busy(str(exc)) from exc
                raise OutcomeUnknown(f"database {self.path}: the connection failed while "
                                     f"committing, so the outcome is unknown ({exc})") from exc

    def _map(self, exc: psycopg.Error) -> BaseException:
        if _retryable(exc):
            return Busy(str(exc))
        return unavailable(exc, self.path)

    def write(self, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        def attempt() -> T:
            try:
                return attempt_write(self, fn)
            except psycopg.Error as exc:
                raise self._map(exc) from exc

        if not retry:
            return attempt()
        return self.retry(attempt)

    def retry(self, fn: Callable[[], T]) -> T:
        """``fn``, tried again while the server fails it for a conflict, up to the budget."""
        try:
            for attempt in tenacity.Retrying(
                retry=tenacity.retry_if_exception_type(Busy),
                stop=tenacity.stop_after_delay(self.busy_budget_s),
                wait=tenacity.wait_random_exponential(multiplier=0.002, max=0.1),
                reraise=True,
            ):
                with attempt:
                    return fn()
        except Busy as exc:
            raise Unavailable(f"database is busy (gave up after {self.busy_budget_s:g} s): "
                              f"{exc}") from exc
        raise AssertionError("unreachable")

    def read(self, fn: Callable[[Any], T]) -> T:
        def attempt() -> T:
            with self._connection() as conn:
                tx = PgTx(conn, self, write=False)
                try:
                    result = fn(tx)
                except BaseException:
                    if tx.begun and not conn.closed:
                        try:
                            conn.execute("ROLLBACK")
                        except psycopg.Error:
                            pass  # the caller's error says what went wrong
                    raise
                if tx.begun:
                    conn.execute("COMMIT")
                return result

        try:
            return self.retry(attempt)
        except psycopg.Error as exc:
            raise self._map(exc) from exc

    def db_error(self, exc: BaseException) -> OrchError | None:
        """A database error raised inside an operation, as orch reports it."""
        if isinstance(exc, psycopg.Error):
            mapped = self._map(exc)
            return mapped if isinstance(mapped, OrchError) else None
        return None

    def backup(self, dest: Any) -> None:
        raise InvalidInput("orch backup copies a SQLite file; back up a PostgreSQL "
                           "database with pg_dump", data={"field": "db"})

    def integrity_problems(self) -> list[str]:
        return []  # the server keeps its own files whole; doctor checks the log

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Listener(threading.Thread):
    """LISTENs for ``orch_claimable`` on its own connection and calls ``wake`` for each
    notification; a dropped connection is made again (tenacity, backing off), and
    ``wake`` is called after each reconnection too, since notifications sent while it
    was away are lost."""

    def __init__(self, store: PostgresStore, wake: Callable[[], object]):
        super().__init__(name="orch-listener", daemon=True)
        self.store = store
        self.wake = wake
        self.stopped = threading.Event()
        self.conn: Any = None

    def run(self) -> None:
        from loguru import logger

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(psycopg.Error),
            wait=tenacity.wait_exponential(multiplier=0.1, max=5),
            before_sleep=lambda rs: logger.warning(
                "LISTEN connection lost ({}); reconnecting", rs.outcome.exception()
                if rs.outcome else "?"),
            stop=lambda _rs: self.stopped.is_set(),
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._listen()
        except psycopg.Error:
            pass  # stopped while reconnecting

    def _listen(self) -> None:
        conn = self.conn = self.store.connect()
        try:
            conn.execute(f"LISTEN {CHANNEL}")
            self.wake()  # what was notified while no one listened
            while not self.stopped.is_set():
                for _ in conn.notifies(timeout=0.25, stop_after=1):
                    self.wake()
        finally:
            conn.close()

    def stop(self) -> None:
        self.stopped.set()
        self.join(timeout=5)
