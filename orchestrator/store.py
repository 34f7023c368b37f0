"""Storage: the only module that talks to the database.

The service layer (``rules``) names queries and builds their parameters; a store runs
them inside transactions it owns. ``Store`` is the seam a PostgreSQL backend will
implement beside :class:`SQLiteStore`, with its own ``queries.sql`` of the same names.
"""

from __future__ import annotations

import abc
import os
import re
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast

import apsw
import tenacity

from . import clock, defaults, paths
from .errors import Corrupt, NotFound, OrchError, SchemaTooNew, Unavailable
from .model import EventRow, ExpiredRow, ItemRow

T = TypeVar("T")
Params = Mapping[str, Any] | tuple[Any, ...]


def _sql_dir() -> Path:
    # Installed: orchestrator/sql. From a source checkout: <repo>/sql.
    here = Path(__file__).resolve().parent
    for candidate in (here / "sql", here.parent / "sql"):
        if (candidate / "queries.sql").is_file():
            return candidate
    raise RuntimeError(f"orch's SQL files are missing (looked in {here / 'sql'})")


SQL_DIR = _sql_dir()
_QUERY_HEADER = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def load_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``; each query starts with ``-- name: x``."""
    parts = _QUERY_HEADER.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in queries:
            raise RuntimeError(f"query {name!r} is defined twice")
        # A comment after a query introduces what follows, not the query: dropped, so a
        # query's text can be joined with another statement.
        lines = body.strip().splitlines()
        while lines and lines[-1].lstrip().startswith("--"):
            lines.pop()
        queries[name] = "\n".join(lines).strip()
    return queries


QUERIES = load_queries((SQL_DIR / "queries.sql").read_text())
MIGRATIONS: list[tuple[int, str, str]] = sorted(
    (int(p.name.split("_", 1)[0]), p.name, p.read_text())
    for p in (SQL_DIR / "migrations").glob("[0-9][0-9][0-9][0-9]_*.sql")
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
GENESIS = "0" * 64  # what the first event chains over


_COLUMNS: dict[str, tuple[str, ...]] = {}


class Rollback(Exception):
    """Raised by an operation to undo its writes but still return ``result`` (dry runs)."""

    def __init__(self, result: Any):
        super().__init__("rollback")
        self.result = result


class CommitAndRaise(Exception):
    """Raised by an operation to commit what it wrote, then fail with ``error``.

    For a refusal whose cause must still be recorded: claiming by id an expired item
    that recovery makes ``unknown`` commits that recovery and refuses the claim.
    """

    def __init__(self, error: OrchError):
        super().__init__(str(error))
        self.error = error


def attempt_write(store: Store, fn: Callable[[Any], T]) -> T:
    """One attempt of ``fn`` in one write transaction of ``store``: ``Rollback`` undoes
    its writes and returns its result, ``CommitAndRaise`` commits them, then raises."""
    try:
        with store.transaction() as tx:
            try:
                return fn(tx)
            except CommitAndRaise as refusal:
                error = refusal.error
        raise error  # committed
    except Rollback as rb:
        return rb.result


class TypedReads:
    """The reads every backend's transaction answers on top of its own ``all``."""

    __slots__ = ()
    all: Callable[..., list[dict[str, Any]]]

    def one(self, name: str, params: Params = ()) -> dict[str, Any] | None:
        # Read to the end so no statement is left half-run inside the transaction.
        rows = self.all(name, params)
        return rows[0] if rows else None

    # Typed reads, for the queries that answer whole rows of a table
    # (SELECT *, RETURNING *) or, for ``expired``, the columns of ExpiredRow.

    def item(self, name: str, params: Params = ()) -> ItemRow | None:
        return cast("ItemRow | None", self.one(name, params))

    def items(self, name: str, params: Params = ()) -> list[ItemRow]:
        return cast("list[ItemRow]", self.all(name, params))

    def expired(self, name: str, params: Params = ()) -> list[ExpiredRow]:
        return cast("list[ExpiredRow]", self.all(name, params))

    def events(self, name: str, params: Params = ()) -> list[EventRow]:
        return cast("list[EventRow]", self.all(name, params))

    def scalar(self, name: str, params: Params = ()) -> int | None:
        """The integer (or NULL) of a query that answers one row of one column."""
        row = self.one(name, params)
        value = None if row is None else next(iter(row.values()))
        assert value is None or isinstance(value, int), value
        return value


class Tx(TypedReads):
    """One transaction's access to the named queries."""

    __slots__ = ("conn", "last_hash", "last_seq")
    schema_version = SCHEMA_VERSION

    def __init__(self, conn: apsw.Connection):
        self.conn = conn
        # The event chain's head, cached for the transaction (see events.append).
        self.last_hash: str | None = None
        self.last_seq = 0

    def all(self, name: str, params: Params = ()) -> list[dict[str, Any]]:
        # Rows come back as dicts; a query's column names are read once and kept.
        cur = self.conn.execute(QUERIES[name], params)
        names = _COLUMNS.get(name)
        if names is None:
            try:
                names = _COLUMNS[name] = tuple(d[0] for d in cur.get_description())
            except apsw.ExecutionCompleteError:
                return []  # no row: there was nothing to describe
        return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def run(self, name: str, params: Params = ()) -> None:
        self.conn.execute(QUERIES[name], params).fetchall()

    def run_many(self, name: str, seq_of_params: Iterable[Params]) -> None:
        self.conn.executemany(QUERIES[name], seq_of_params)

    def now(self) -> int:
        """Epoch ms, for this transaction's decisions: this machine's clock."""
        return clock.now_ms()

    # The event chain (see events.py): one chain over the whole log, numbered 1, 2, ...

    def next_seq(self) -> int:
        """The number the next event appended in this transaction gets."""
        if self.last_hash is None:
            head = self.one("last_event")
            self.last_seq, self.last_hash = (head["seq"], head["hash"]) if head \
                else (0, GENESIS)
        return self.last_seq + 1

    def link(self, item_id: int | None) -> tuple[int, str]:
        """The next event's number and the hash it chains over."""
        seq = self.next_seq()
        assert self.last_hash is not None
        return seq, self.last_hash

    def linked(self, item_id: int | None, seq: int, hash_: str) -> None:
        self.last_seq, self.last_hash = seq, hash_

    def new_item_ids(self, n: int) -> list[int]:
        """Ids for ``n`` new items: what SQLite would pick, since items are never deleted."""
        first = (self.scalar("max_item_id") or 0) + 1
        return list(range(first, first + n))

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        """Nested transaction: an exception rolls back only what ran inside it."""
        try:
            with self.conn:
                yield
        except BaseException:
            self.last_hash = None  # events appended inside were rolled back too
            raise


class Store(abc.ABC):
    """A transactional home for items, workers, fences and the event log."""

    path: Path | str  # where it lives, as errors name it (a URL: its password masked)
    kind: str  # "sqlite" or "postgresql"
    #: "log": each event chains over the log's previous event; "item": over its item's.
    chain: str
    #: Errors that mean "another writer is in the way": the transaction is tried again.
    BUSY: tuple[type[BaseException], ...]
    busy_budget_s: float

    @abc.abstractmethod
    def transaction(self) -> Any:
        """A context manager: one write transaction (a ``Tx``), committed at its end."""

    @abc.abstractmethod
    def retry(self, fn: Callable[[], T]) -> T:
        """``fn`` (one whole attempt), tried again while BUSY, up to the busy budget."""

    @abc.abstractmethod
    def db_error(self, exc: BaseException) -> OrchError | None:
        """A database error raised inside an operation, as orch reports it (else None)."""

    @abc.abstractmethod
    def write(self, fn: Callable[[Any], T], *, retry: bool = True) -> T:
        """Run ``fn`` in one write transaction, retried whole while the database is busy."""

    @abc.abstractmethod
    def read(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn`` against one consistent snapshot."""

    @abc.abstractmethod
    def backup(self, dest: Path) -> None:
        """Write a consistent copy to ``dest`` while writers keep going."""

    @abc.abstractmethod
    def integrity_problems(self) -> list[str]:
        """What the database's own integrity check reports (empty when healthy)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""


DEFAULT_BUSY_BUDGET_S = defaults.BUSY_BUDGET_S


def open_connection(path: Path, *, synchronous: str = "full",
                    busy_budget_s: float = DEFAULT_BUSY_BUDGET_S, create: bool = True,
                    init: bool = False) -> apsw.Connection:
    """Open (migrating if needed) the database: the one place that does.

    A missing file is made only when ``create`` is set, and appears whole (see
    ``create_database``). A file without orch's schema, an empty one included (a
    truncated file looks exactly like that), is refused unless ``init`` is set.

    apsw.bestpractice's hooks are not used: they switch to WAL with a 100 ms busy
    timeout before ours is set, which fails when many processes open a new file at once.
    The same settings are applied here explicitly instead.
    """
    if synchronous not in ("full", "normal"):
        raise ValueError(f"synchronous must be full or normal, not {synchronous!r}")
    path = Path(path)
    if not path.exists():
        if not create:
            raise NotFound(f"database {path} does not exist (orch init creates it)",
                           data={"db": str(path)})
        create_database(path, busy_budget_s)
    else:
        paths.make_private(path)
    # No SQLITE_OPEN_CREATE: a file removed since is not silently made again, empty.
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READWRITE)
    try:
        _configure(conn, busy_budget_s)
        retry_busy(lambda: _prepare(conn, path, synchronous, init), busy_budget_s)
    except BaseException:
        conn.close()
        raise
    return conn


def _configure(conn: apsw.Connection, busy_budget_s: float) -> None:
    # A single attempt waits up to a quarter of the budget; tenacity retries the
    # whole transaction for the rest.
    conn.set_busy_timeout(max(1, int(busy_budget_s * 250)))
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA temp_store = MEMORY")  # RETURNING collects rows in a temp table
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DML, 0)
    conn.config(apsw.SQLITE_DBCONFIG_DQS_DDL, 0)


def create_database(path: Path, busy_budget_s: float = DEFAULT_BUSY_BUDGET_S) -> None:
    """Make a new, migrated database at ``path``, unless another process does first.

    It is built under a temporary name that no one else opens, then linked into place
    in one step. So a file at ``path`` is always a whole orch database, never a
    half-made one that a racing process could mistake for a foreign or truncated file.
    """
    tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
    paths.create_private_file(tmp)
    try:
        conn = apsw.Connection(str(tmp), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            _configure(conn, busy_budget_s)
            _prepare(conn, tmp, "full", init=True)
        finally:
            conn.close()  # the last connection: SQLite folds the WAL in and removes it
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)


def _prepare(conn: apsw.Connection, path: Path, synchronous: str, init: bool) -> None:
    version = _int_of(conn, "PRAGMA user_version")
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"database schema version {version} is newer than this orch knows "
            f"({SCHEMA_VERSION}); upgrade orch to open it"
        )
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_schema").fetchall()[0][0]
        if not init or tables:
            what = ("is empty" if not tables and path.stat().st_size == 0
                    else "has no orch schema")
            raise NotFound(f"{path} {what}: it is not an orch database (a truncated file "
                           "looks like this; restore a backup"
                           + (", or run orch init to start a new one)" if not tables
                              else ")"),
                           data={"db": str(path)})
    mode = conn.execute("PRAGMA journal_mode").fetchall()[0][0]
    if mode != "wal":
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
    conn.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    if version < SCHEMA_VERSION:
        migrate(conn)


def _int_of(conn: apsw.Connection, sql: str) -> int:
    """The integer a one-value statement (a PRAGMA, a count) answers."""
    value = conn.execute(sql).fetchall()[0][0]
    assert isinstance(value, int), value
    return value


@contextmanager
def immediate(conn: apsw.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on an exception.

    Not ``with conn:``: APSW keeps the GIL while its BEGIN waits for the write lock,
    so two threads of one process (a Lease's heartbeat and its holder, say) would
    stall each other until the busy timeout. ``execute`` lets the GIL go while SQLite
    waits. Nested ``with conn:`` blocks inside are savepoints.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        rollback(conn)
        raise
    conn.execute("COMMIT")


def rollback(conn: apsw.Connection) -> None:
    """End the open transaction, if any, without hiding the error that ends it."""
    if not conn.get_autocommit():
        try:
            conn.execute("ROLLBACK")
        except apsw.Error:
            pass  # the caller's error says what went wrong; SQLite rolls back regardless


def migrate(conn: apsw.Connection) -> None:
    """Apply every migration newer than ``user_version``, each in its own transaction."""
    for number, _name, script in MIGRATIONS:
        with immediate(conn):  # the version is re-read under the write lock
            current = _int_of(conn, "PRAGMA user_version")
            if current >= number:
                continue
            conn.execute(script)
            conn.execute(f"PRAGMA user_version = {number}")


def retry_busy(fn: Callable[[], T], budget_s: float) -> T:
    try:
        for attempt in tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(apsw.BusyError),
            stop=tenacity.stop_after_delay(budget_s),
            wait=tenacity.wait_random_exponential(multiplier=0.005, max=0.25),
            reraise=True,
        ):
            with attempt:
                return fn()
    except apsw.BusyError as exc:
        raise Unavailable(f"database is busy (gave up after {budget_s:g} s)") from exc
    raise AssertionError("unreachable")


class SQLiteStore(Store):
    """The SQLite backend: one APSW connection, used from one thread."""

    kind = "sqlite"
    chain = "log"
    path: Path
    BUSY: tuple[type[BaseException], ...] = (apsw.BusyError,)

    def __init__(self, path: Path, *, synchronous: str = "full",
                 busy_budget_s: float = DEFAULT_BUSY_BUDGET_S, create: bool = True,
                 init: bool = False):
        """Open ``path``; see ``open_connection`` for ``create`` and ``init``."""
        self.path = Path(path)
        self.busy_budget_s = busy_budget_s
        self._head: tuple[int, str] | None = None
        self._head_version = -1
        try:
            self.conn = open_connection(self.path, synchronous=synchronous,
                                        busy_budget_s=busy_budget_s, create=create, init=init)
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            raise Corrupt(f"database {self.path} is damaged or not a database ({exc}); "
                          "run orch doctor, then restore the last backup") from exc
        except apsw.Error as exc:
            raise Unavailable(f"cannot open database {self.path}: {exc}") from exc

    @contextmanager
    def transaction(self) -> Iterator[Tx]:
        """One IMMEDIATE transaction; commits when the block ends without an exception.

        The event chain's head is kept between transactions and trusted again only if
        no other connection has committed since (the file's data version is unchanged),
        which saves a read on every write.
        """
        with immediate(self.conn):
            tx = Tx(self.conn)
            if self._head is not None and self.conn.data_version() == self._head_version:
                tx.last_seq, tx.last_hash = self._head
            try:
                yield tx
            except BaseException:
                self._head = None
                raise
        self._head = (tx.last_seq, tx.last_hash) if tx.last_hash is not None else None
        self._head_version = self.conn.data_version()

    def write(self, fn: Callable[[Tx], T], *, retry: bool = True) -> T:
        """See Store.write; ``retry=False``: a locked file raises BusyError at once."""
        def attempt() -> T:
            return attempt_write(self, fn)

        try:
            return self._guard(attempt)  # the common case, without the retry machinery
        except apsw.BusyError:
            if not retry:
                raise
            return self._guard(lambda: retry_busy(attempt, self.busy_budget_s))

    def read(self, fn: Callable[[Tx], T]) -> T:
        def attempt() -> T:
            self.conn.execute("BEGIN DEFERRED")
            try:
                result = fn(Tx(self.conn))
            except BaseException:
                rollback(self.conn)  # a read commits nothing, least of all after an error
                raise
            self.conn.execute("COMMIT")
            return result

        try:
            return self._guard(attempt)
        except apsw.BusyError:
            return self._guard(lambda: retry_busy(attempt, self.busy_budget_s))

    def _guard(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (OrchError, apsw.BusyError):
            raise
        except (apsw.CorruptError, apsw.NotADBError) as exc:
            raise Corrupt(f"database {self.path} is damaged ({exc}); run orch doctor, "
                          "then restore the last backup") from exc
        except (apsw.FullError, apsw.IOError, apsw.CantOpenError, apsw.ReadOnlyError) as exc:
            raise Unavailable(f"database unavailable: {exc}") from exc
        except apsw.Error as exc:
            raise Unavailable(f"database error: {exc}") from exc

    def retry(self, fn: Callable[[], T]) -> T:
        return retry_busy(fn, self.busy_budget_s)

    def db_error(self, exc: BaseException) -> OrchError | None:
        return Unavailable(f"database error: {exc}") if isinstance(exc, apsw.Error) else None

    def backup(self, dest: Path) -> None:
        dest = Path(dest)
        paths.create_private_file(dest)
        target = apsw.Connection(str(dest), flags=apsw.SQLITE_OPEN_READWRITE)
        try:
            with target.backup("main", self.conn, "main") as b:
                while not b.done:
                    b.step(256)
        finally:
            target.close()

    def integrity_problems(self) -> list[str]:
        rows = self._guard(self.conn.execute("PRAGMA integrity_check").fetchall)
        problems = [str(r[0]) for r in rows]
        return [] if problems == ["ok"] else problems

    def checkpoint_wal(self) -> None:
        self.conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)

    def manual_checkpoints(self) -> None:
        """No automatic checkpoints on this connection's commits: another thread makes
        them (the daemon's writer, whose commits must not stop to copy pages)."""
        self.conn.execute("PRAGMA wal_autocheckpoint = 0")

    def close(self) -> None:
        self.conn.close()


def is_url(db: object) -> bool:
    """Whether ``db`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(db, str) and db.startswith(("postgresql://", "postgres://"))


def open_store(db: Path | str, **options: Any) -> Store:
    """The store ``db`` names: a ``postgresql://`` URL, or a SQLite file's path.

    Options a backend does not take are dropped (``synchronous`` is SQLite's, ``pool``
    and ``clock`` PostgreSQL's).
    """
    if is_url(db):
        assert isinstance(db, str)
        from .postgres import PostgresStore  # psycopg: loaded only for PostgreSQL

        options.pop("synchronous", None)
        return PostgresStore(db, **options)
    for option in ("pool", "clock"):
        options.pop(option, None)
    return SQLiteStore(Path(db), **options)
