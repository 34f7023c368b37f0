"""The daemon's writer: the one write connection, its group commit, and the thread that
checkpoints the WAL."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import apsw
from loguru import logger

from ..errors import OrchError, Unavailable, internal_error
from ..operations import OPERATIONS
from ..store import CommitAndRaise, Rollback, SQLiteStore, Store

MAX_GROUP = 512  # requests committed together at most

Done = Callable[[tuple[bool, Any]], None]
#: A request's outcome, or None: a locked row held it up and it goes round again.
Outcome = tuple[bool, Any] | None


class GroupCommit:
    """Owns the write connection; commits the writes of one loop turn together.

    It runs in the event loop's thread. Every request read in one turn of the loop
    joins the group, which commits at the start of the next turn: one IMMEDIATE
    transaction, a savepoint per request when there are several, one COMMIT. While a
    group commits, the next one gathers in the clients' sockets. No thread hands work
    to another: on this path every handoff (a lock, a wake-up, the GIL passed back and
    forth at each SQLite call) cost more than the SQL itself.

    The loop never waits for the file's write lock, though: the connection's busy
    timeout is zero, and a group that finds the file locked by another process is
    retried in a thread (with the usual timeout and retries) while the loop goes on
    serving everyone else; later groups queue until it is done.

    On PostgreSQL every group commits in that thread: each statement is a round trip
    to a server that may be on another machine, which the loop must not wait for.
    """

    def __init__(self, store: Store, loop: asyncio.AbstractEventLoop,
                 clients: Callable[[], int] = lambda: 0,
                 committed: Callable[[int, float], None] = lambda requests, seconds: None):
        self.store = store
        self.loop = loop
        self.clients = clients
        self.committed = committed  # told each group's size and seconds, once it is done
        self.waited = False
        self.offloaded = False  # a group waits for the lock in self.pool
        self.pending: list[tuple[str, dict, Done]] = []
        # requests a locked row held up: when each gives up, and how often it went round
        self.deadlines: dict[Done, tuple[float, int]] = {}
        self.again = 0  # of them, waiting to join a later group
        self.commits = 0
        self.committed_requests = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="orch-writer-wait")
        self.busy_timeout_ms = max(1, int(store.busy_budget_s * 250))
        self.inline = isinstance(store, SQLiteStore)
        if isinstance(store, SQLiteStore):
            store.conn.set_busy_timeout(0)

    def submit(self, op: str, kwargs: dict, done: Done) -> None:
        """Queue a write; ``done((ok, value))`` is called once its group has committed."""
        if not self.pending and not self.offloaded:
            self.loop.call_soon(self.flush)
        self.pending.append((op, kwargs, done))

    def submit_future(self, op: str, kwargs: dict) -> asyncio.Future:
        fut = self.loop.create_future()

        def done(outcome: tuple[bool, Any]) -> None:
            if not fut.done():
                fut.set_result(outcome)

        self.submit(op, kwargs, done)
        return fut

    def flush(self) -> None:
        if self.offloaded or not self.pending:
            return  # flushed already, or a group holds the connection in the pool
        if not self.waited and len(self.pending) < self.clients():
            # Other clients may be about to send: one more turn of the loop reads
            # whatever has arrived since, so it shares this commit.
            self.waited = True
            self.loop.call_soon(self.flush)
            return
        self.waited = False
        group, self.pending = self.pending[:MAX_GROUP], self.pending[MAX_GROUP:]
        if self.pending:
            self.loop.call_soon(self.flush)
        if self.inline:
            try:
                outcomes = self._commit(group)
            except self.store.BUSY:
                pass  # another process writes: wait for it off the loop
            else:
                self._deliver(group, outcomes)
                return
        self.offloaded = True
        fut = self.loop.run_in_executor(self.pool, self._commit_waiting, group)
        fut.add_done_callback(lambda f: self._waited(group, f))

    def _commit_waiting(self, group: list[tuple[str, dict, Done]]) -> list[Outcome]:
        # In the pool: the loop does not touch the connection while self.offloaded.
        if not isinstance(self.store, SQLiteStore):
            return self.store.retry(lambda: self._commit(group))
        self.store.conn.set_busy_timeout(self.busy_timeout_ms)
        try:
            return self.store.retry(lambda: self._commit(group))
        finally:
            self.store.conn.set_busy_timeout(0)

    def _waited(self, group: list[tuple[str, dict, Done]], fut: asyncio.Future) -> None:
        self.offloaded = False
        try:
            outcomes = fut.result()
        except OrchError as exc:  # busy past the budget
            outcomes = [(False, exc)] * len(group)
        except Exception as exc:  # noqa: BLE001 -- keep serving: the next group may pass
            logger.exception("group commit failed")
            outcomes = [(False, internal_error(exc))] * len(group)
        self._deliver(group, outcomes)
        if self.pending:
            self.loop.call_soon(self.flush)

    def _deliver(self, group: list[tuple[str, dict, Done]],
                 outcomes: list[Outcome]) -> None:
        for (op, kwargs, done), outcome in zip(group, outcomes, strict=True):
            if outcome is None:
                self._again(op, kwargs, done)
                continue
            self.deadlines.pop(done, None)
            try:
                done(outcome)
            except Exception:  # noqa: BLE001 -- one reply's failure is not the group's
                logger.exception("delivering a reply failed")

    def _again(self, op: str, kwargs: dict, done: Done) -> None:
        """A request a locked row held up (PostgreSQL): the rest of its group committed
        without it; it joins a later group, backing off, until the busy budget ends."""
        now = time.monotonic()
        deadline, tries = self.deadlines.get(done, (now + self.store.busy_budget_s, 0))
        if now >= deadline:
            del self.deadlines[done]
            done((False, Unavailable(f"database is busy (gave up after "
                                     f"{self.store.busy_budget_s:g} s): a row this request "
                                     "needs stayed locked")))
            return
        self.deadlines[done] = (deadline, tries + 1)
        self.again += 1

        def resubmit() -> None:
            self.again -= 1
            self.submit(op, kwargs, done)
        self.loop.call_later(min(0.002 * 2 ** tries, 0.1) * (0.5 + random.random()), resubmit)

    def _commit(self, group: list[tuple[str, dict, Done]]) -> list[Outcome]:
        """One attempt; BusyError (the file is locked) is the caller's to retry."""
        started = time.perf_counter()
        try:
            if len(group) == 1:  # alone: its own transaction, no savepoint needed
                op, kwargs, _ = group[0]
                fn, _ = OPERATIONS[op]
                outcomes: list[Outcome]
                try:
                    outcomes = [(True, self.store.write(
                        lambda tx: fn(tx, tx.now(), **kwargs), retry=False))]
                except self.store.BUSY:
                    if self.inline:
                        raise
                    outcomes = [None]  # a row in its way: it goes round again (_deliver)
                except Exception as exc:  # noqa: BLE001 -- mapped, never raised here
                    outcomes = [self._failure(op, exc)]
            else:
                outcomes = self._commit_group(group)
        except self.store.BUSY:
            raise
        except Exception as exc:  # noqa: BLE001 -- keep serving: the next group may pass
            logger.exception("group commit failed")
            outcomes = [(False, internal_error(exc))] * len(group)
        self.commits += 1
        self.committed_requests += len(group)
        self.committed(len(group), time.perf_counter() - started)
        return outcomes

    def _commit_group(self, group: list[tuple[str, dict, Done]]
                      ) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            with self.store.transaction() as tx:
                for op, kwargs, _ in group:
                    fn, _ = OPERATIONS[op]
                    try:
                        with tx.savepoint():
                            try:
                                outcome = (True, fn(tx, tx.now(), **kwargs))
                            except CommitAndRaise as refusal:  # its writes stand
                                outcome = (False, refusal.error)
                        outcomes.append(outcome)
                    except Rollback as rb:
                        outcomes.append((True, rb.result))
                    except self.store.BUSY:
                        if self.inline:
                            raise  # SQLite: the file is locked; the whole group waits
                        # PostgreSQL: one row is in the way of this request alone; its
                        # savepoint is undone, the others commit and are answered, and
                        # it joins a later group (_deliver).
                        outcomes.append(None)
                    except Exception as exc:  # noqa: BLE001 -- this request fails alone
                        outcomes.append(self._failure(op, exc))
        except self.store.BUSY:
            raise
        except OrchError as exc:
            return [(False, exc)] * len(group)
        except apsw.Error as exc:  # the COMMIT itself failed: nothing of the group stands
            logger.exception("group commit failed")
            return [(False, Unavailable(f"commit failed: {exc}"))] * len(group)
        return outcomes

    def _failure(self, op: str, exc: Exception) -> tuple[bool, OrchError]:
        return _failure(self.store, op, exc)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


class WriterLanes:
    """Several group commits side by side, each with its own connection (PostgreSQL).

    SQLite takes one writer at a time; PostgreSQL takes many, and one writer thread
    running its statements one round trip after another leaves the server idle. Each
    client connection keeps to one lane, so its requests commit in the order it sent
    them; requests of different clients may commit in either order, as they could
    through two daemons.
    """

    def __init__(self, lanes: list[GroupCommit]):
        self.lanes = lanes
        self._turn = 0

    def lane(self) -> int:
        """The lane for a new client connection: each in turn."""
        self._turn = (self._turn + 1) % len(self.lanes)
        return self._turn

    def submit(self, op: str, kwargs: dict, done: Done, lane: int = 0) -> None:
        self.lanes[lane].submit(op, kwargs, done)

    def submit_future(self, op: str, kwargs: dict, lane: int = 0) -> asyncio.Future:
        return self.lanes[lane].submit_future(op, kwargs)

    @property
    def pending(self) -> bool:
        return any(w.pending for w in self.lanes)

    @property
    def offloaded(self) -> bool:
        return any(w.offloaded for w in self.lanes)

    @property
    def again(self) -> int:
        return sum(w.again for w in self.lanes)

    def flush(self) -> None:
        for w in self.lanes:
            w.flush()

    @property
    def commits(self) -> int:
        return sum(w.commits for w in self.lanes)

    @property
    def committed_requests(self) -> int:
        return sum(w.committed_requests for w in self.lanes)

    def close(self) -> None:
        for w in self.lanes:
            w.close()


def serialized(fn: Callable[[int, float], None]) -> Callable[[int, float], None]:
    """``fn``, called by one lane's thread at a time."""
    lock = threading.Lock()

    def call(requests: int, seconds: float) -> None:
        with lock:
            fn(requests, seconds)
    return call


class Checkpointer(threading.Thread):
    """Copies the WAL back into the database off the writer's path.

    The writer's connection has automatic checkpoints off, so its commits never stop
    to copy pages; this thread runs a PASSIVE checkpoint (it never blocks the writer)
    every beat. Under steady writes a passive checkpoint never quite reaches the end
    of the log, and a WAL that is never restarted grows without end (and with it the
    shared-memory index every connection maps). So once the log is past
    ``restart_frames``, a RESTART checkpoint makes the writer wait a moment while
    the log is finished and started again from the beginning.
    """

    def __init__(self, store: SQLiteStore, every_s: float = 0.05,
                 restart_frames: int = 4096):
        super().__init__(name="orch-checkpointer", daemon=True)
        self.store, self.every_s, self.restart_frames = store, every_s, restart_frames
        self.stopped = threading.Event()

    def run(self) -> None:
        mode = apsw.SQLITE_CHECKPOINT_PASSIVE
        while not self.stopped.wait(self.every_s):
            try:
                frames, _ = self.store.conn.wal_checkpoint(mode=mode)
            except apsw.Error as exc:  # busy now: try again on the next beat
                logger.debug("background checkpoint skipped: {}", exc)
                continue
            mode = (apsw.SQLITE_CHECKPOINT_RESTART if frames > self.restart_frames
                    else apsw.SQLITE_CHECKPOINT_PASSIVE)

    def stop(self) -> None:
        self.stopped.set()
        self.join()


def _failure(store: Store, op: str, exc: Exception) -> tuple[bool, OrchError]:
    """What a request that raised gets back; unexpected errors are logged, never raised."""
    if isinstance(exc, OrchError):
        return False, exc
    mapped = store.db_error(exc)
    if isinstance(mapped, Unavailable):
        # The database went away (a restart, a dropped link): one line, not a traceback
        # for every request it caught.
        logger.bind(method=op).warning("request failed: {}", mapped)
        return False, mapped
    if mapped is not None:
        logger.bind(method=op).opt(exception=exc).error("request failed in the database")
        return False, mapped
    logger.bind(method=op).opt(exception=exc).error("internal error")
    return False, internal_error(exc)
