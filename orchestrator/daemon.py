"""``orch daemon``: the per-machine owner of the database, serving JSON-RPC on a Unix socket.

Shape: an asyncio loop owns the socket, every client connection and the write
connection. The writes read in one turn of the loop are committed together at the
start of the next (one IMMEDIATE transaction, one savepoint per request, one COMMIT,
then every reply); a small pool of reader threads answers reads from their own
connections (WAL), and a checkpointer thread copies the WAL back into the database.
Parked ``claimTask(wait=…)`` callers are woken by the commits that make items
claimable, never by polling.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import os
import resource
import signal
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apsw
from loguru import logger

from . import clock, livestate, paths, protocol, rules, validate
from .api import WAITS
from .errors import (
    RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND,
    RPC_PARSE_ERROR,
    InvalidInput,
    LimitExceeded,
    OrchError,
    Unavailable,
    rpc_code,
)
from .operations import OPERATIONS
from .store import CommitAndRaise, Rollback, SQLiteStore, retry_busy

MAX_GROUP = 512  # requests committed together at most
RECOVER_EVERY_S = 2.0
# What one client may hold of the daemon (each a ``orch daemon`` option):
LINE_TIMEOUT_S = 10.0  # a line must be complete this long after its first byte
IDLE_TIMEOUT_S = 300.0  # a connection with no request this long is closed
MAX_CONNECTIONS = 1024
MAX_BUFFERED = 256 << 20  # bytes of unread input, all connections together
BACKLOG = 100  # connections waiting to be accepted
OWN_FDS = 64  # descriptors the daemon needs besides its connections (files, threads)
LOG_EVERY_S = 10.0  # at most one line this often for events that come in floods
#: Operations after which an item may have become claimable.
FEEDS = {"submit_task", "submit_many", "release_task", "release_and_claim", "stale_recovery",
         "resolve_task"}


class StartupError(OrchError):
    """The daemon cannot start (another one runs, a path is unusable)."""


# --- the writer: one connection, group commit --------------------------------------------


Done = Callable[[tuple[bool, Any]], None]


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
    """

    def __init__(self, store: SQLiteStore, loop: asyncio.AbstractEventLoop,
                 clients: Callable[[], int] = lambda: 0):
        self.store = store
        self.loop = loop
        self.clients = clients
        self.waited = False
        self.offloaded = False  # a group waits for the lock in self.pool
        self.pending: list[tuple[str, dict, Done]] = []
        self.commits = 0
        self.committed_requests = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="orch-writer-wait")
        self.busy_timeout_ms = max(1, int(store.busy_budget_s * 250))
        store.conn.set_busy_timeout(0)

    def submit(self, op: str, kwargs: dict, done: Done) -> None:
        """Queue a write; ``done((ok, value))`` is called once its group has committed."""
        if not self.pending and not self.offloaded:
            self.loop.call_soon(self.flush)
        self.pending.append((op, kwargs, done))

    def submit_future(self, op: str, kwargs: dict) -> asyncio.Future:
        fut = self.loop.create_future()
        self.submit(op, kwargs, lambda outcome: fut.done() or fut.set_result(outcome))
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
        try:
            outcomes = self._commit(group)
        except apsw.BusyError:  # another process writes: wait for it off the loop
            self.offloaded = True
            fut = self.loop.run_in_executor(self.pool, self._commit_waiting, group)
            fut.add_done_callback(lambda f: self._waited(group, f))
            return
        self._deliver(group, outcomes)

    def _commit_waiting(self, group: list[tuple[str, dict, Done]]) -> list[tuple[bool, Any]]:
        # In the pool: the loop does not touch the connection while self.offloaded.
        self.store.conn.set_busy_timeout(self.busy_timeout_ms)
        try:
            return retry_busy(lambda: self._commit(group), self.store.busy_budget_s)
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
            outcomes = [(False, OrchError(f"internal error: {type(exc).__name__}"))] \
                * len(group)
        self._deliver(group, outcomes)
        if self.pending:
            self.loop.call_soon(self.flush)

    def _deliver(self, group: list[tuple[str, dict, Done]],
                 outcomes: list[tuple[bool, Any]]) -> None:
        for (_, _, done), outcome in zip(group, outcomes, strict=True):
            try:
                done(outcome)
            except Exception:  # noqa: BLE001 -- one reply's failure is not the group's
                logger.exception("delivering a reply failed")

    def _commit(self, group: list[tuple[str, dict, Done]]) -> list[tuple[bool, Any]]:
        """One attempt; BusyError (the file is locked) is the caller's to retry."""
        try:
            if len(group) == 1:  # alone: its own transaction, no savepoint needed
                op, kwargs, _ = group[0]
                fn, _ = OPERATIONS[op]
                try:
                    outcomes = [(True, self.store.write(
                        lambda tx: fn(tx, clock.now_ms(), **kwargs), retry=False))]
                except apsw.BusyError:
                    raise
                except Exception as exc:  # noqa: BLE001 -- mapped, never raised here
                    outcomes = [_failure(op, exc)]
            else:
                outcomes = self._commit_group(group)
        except apsw.BusyError:
            raise
        except Exception as exc:  # noqa: BLE001 -- keep serving: the next group may pass
            logger.exception("group commit failed")
            outcomes = [(False, OrchError(f"internal error: {type(exc).__name__}"))] \
                * len(group)
        self.commits += 1
        self.committed_requests += len(group)
        return outcomes

    def _commit_group(self, group: list[tuple[str, dict, Done]]) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.store.transaction() as tx:
                for op, kwargs, _ in group:
                    fn, _ = OPERATIONS[op]
                    try:
                        with tx.savepoint():
                            try:
                                outcome = (True, fn(tx, clock.now_ms(), **kwargs))
                            except CommitAndRaise as refusal:  # its writes stand
                                outcome = (False, refusal.error)
                        outcomes.append(outcome)
                    except Rollback as rb:
                        outcomes.append((True, rb.result))
                    except apsw.BusyError:
                        raise  # the whole group is tried again
                    except Exception as exc:  # noqa: BLE001 -- this request fails alone
                        outcomes.append(_failure(op, exc))
        except apsw.BusyError:
            raise
        except OrchError as exc:
            return [(False, exc)] * len(group)
        except apsw.Error as exc:  # the COMMIT itself failed: nothing of the group stands
            logger.exception("group commit failed")
            return [(False, Unavailable(f"commit failed: {exc}"))] * len(group)
        return outcomes

    def close(self) -> None:
        self.pool.shutdown(wait=True)


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


def _failure(op: str, exc: Exception) -> tuple[bool, OrchError]:
    """What a request that raised gets back; unexpected errors are logged, never raised."""
    if isinstance(exc, OrchError):
        return False, exc
    if isinstance(exc, apsw.Error):
        logger.bind(method=op).opt(exception=exc).error("request failed in the database")
        return False, Unavailable(f"database error: {exc}")
    logger.bind(method=op).opt(exception=exc).error("internal error")
    return False, OrchError(f"internal error: {type(exc).__name__}")


# --- parked claims ---------------------------------------------------------------------------


@dataclass(eq=False)
class _Waiter:
    kinds: frozenset[str]
    queues: frozenset[str]
    woken: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop()
                                  .create_future())


class Waiters:
    """Claims parked until an item they could take appears."""

    def __init__(self) -> None:
        self.parked: list[_Waiter] = []

    def add(self, kinds: list[str], queues: list[str]) -> _Waiter:
        w = _Waiter(frozenset(kinds), frozenset(queues))
        self.parked.append(w)
        return w

    def remove(self, w: _Waiter) -> None:
        try:
            self.parked.remove(w)
        except ValueError:
            pass

    def wake(self, kind: str, queue: str, n: int = 1) -> None:
        """Wake up to ``n`` waiters (oldest first) that could take a (kind, queue) item."""
        for w in list(self.parked):
            if n <= 0:
                break
            if kind in w.kinds and queue in w.queues:
                self.parked.remove(w)
                if not w.woken.done():
                    w.woken.set_result(True)
                n -= 1

    def any_for(self, kind: str, queue: str) -> bool:
        return any(kind in w.kinds and queue in w.queues for w in self.parked)

    def pass_on(self, w: _Waiter) -> None:
        """A woken claim whose client has gone hands its wake-up to another."""
        for kind in w.kinds:
            for name in w.queues:
                self.wake(kind, name)

    def wake_all(self) -> None:
        for w in self.parked:
            if not w.woken.done():
                w.woken.set_result(True)
        self.parked.clear()


# --- the server --------------------------------------------------------------------------------


class _Throttled:
    """A log line for an event that may come in floods: at most one every ``every_s``,
    counting the events since the last (``{n}`` in the message)."""

    def __init__(self, level: str, message: str, every_s: float = LOG_EVERY_S):
        self.level, self.message, self.every_s = level, message, every_s
        self.count = 0
        self.next_at = 0.0
        self.fields: dict[str, Any] = {}

    def __call__(self, **fields: Any) -> None:
        self.count += 1
        self.fields = fields
        self.flush()

    def flush(self) -> None:
        """Write the line for the events counted so far, once its time has come."""
        now = time.monotonic()
        if self.count and now >= self.next_at:
            logger.bind(count=self.count).log(self.level, self.message, n=self.count,
                                               **self.fields)
            self.count = 0
            self.next_at = now + self.every_s


class Daemon:
    def __init__(self, db: Path, sock: Path, *, synchronous: str = "full",
                 recover_every_s: float = RECOVER_EVERY_S,
                 line_timeout_s: float = LINE_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, max_buffered: int = MAX_BUFFERED,
                 readers: int = 4, debug: bool = False):
        self.db = Path(db).resolve()
        self.sock = Path(sock)
        self.synchronous = synchronous
        self.recover_every_s = recover_every_s
        self.line_timeout_s = line_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.reader_count = readers
        self.debug = debug
        self.waiters = Waiters()
        self.inflight = 0
        self.idle = asyncio.Event()
        self.stopping = asyncio.Event()
        self.connections: set[_Connection] = set()
        self.buffered = 0  # bytes read from clients and not yet taken as lines
        self.accept_pause_s = 0.0  # grows while descriptors are short
        self.accept_resume: asyncio.TimerHandle | None = None
        self.log_idle = _Throttled(
            "INFO", "closed {n} idle connection(s): no request for {limit:g} s")
        self.log_slow_line = _Throttled(
            "WARNING", "dropped {n} client(s) whose line was not complete {limit:g} s after "
            "its first byte")
        self.log_refused = _Throttled(
            "WARNING", "refused {n} connection(s): {limit} open, the most allowed "
            "(--max-connections)")
        self.log_shed = _Throttled(
            "WARNING", "dropped {n} client(s) holding the most unread input ({size} bytes): "
            "input buffered over all connections passed {limit} bytes (--max-buffered-mib)")
        self.log_no_fds = _Throttled(
            "WARNING", "out of descriptors ({error}): stopped accepting {n} time(s), now for "
            "{pause:g} s; {open} connection(s) open")
        self.throttled = [self.log_idle, self.log_slow_line, self.log_refused, self.log_shed,
                          self.log_no_fds]
        self._locks: list[int] = []
        self._local = threading.local()
        self._readers: list[SQLiteStore] = []
        self._readers_lock = threading.Lock()

    # -- start and stop --

    def _lock(self, path: Path, what: str) -> None:
        paths.ensure_private_dir(path.parent)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, paths.FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise StartupError(f"another orch daemon (pid {holder}) is already serving "
                               f"this {what}") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._locks.append(fd)

    def _claim_socket_path(self) -> None:
        if len(os.fsencode(self.sock)) >= 104:
            raise StartupError(f"socket path is too long for a Unix socket: {self.sock}")
        self._lock(self.sock.with_name(self.sock.name + ".lock"), f"socket {self.sock}")
        self._lock(livestate.daemon_lock_path(self.db), f"database {self.db}")
        if self.sock.exists() or self.sock.is_symlink():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(self.sock))
            except (ConnectionRefusedError, FileNotFoundError):
                logger.info("removing stale socket {}", self.sock)
                self.sock.unlink(missing_ok=True)
            except OSError as exc:
                raise StartupError(f"cannot use socket path {self.sock}: {exc}") from None
            else:
                probe.close()
                raise StartupError(f"a daemon is already answering on {self.sock}")
            finally:
                probe.close()

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._claim_socket_path()
        self.writer_store = SQLiteStore(self.db, synchronous=self.synchronous)
        self.writer_store.conn.execute("PRAGMA wal_autocheckpoint = 0")
        self.writer = GroupCommit(self.writer_store, loop, lambda: len(self.connections))
        self.checkpointer = Checkpointer(SQLiteStore(self.db, synchronous=self.synchronous))
        self.checkpointer.start()
        self.pool = ThreadPoolExecutor(self.reader_count, thread_name_prefix="orch-reader")
        self.watch = SQLiteStore(self.db)  # loop thread: notices other processes' commits
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self._recover()
        self._raise_fd_limit()
        self.loop = loop
        self.listener = self._listen()
        loop.add_reader(self.listener.fileno(), self._accept)
        logger.bind(db=str(self.db), socket=str(self.sock), pid=os.getpid()).info(
            "orch daemon serving {} on {}", self.db, self.sock)
        ticker = asyncio.create_task(self._tick())
        sweeper = asyncio.create_task(self._sweep())
        await self.stopping.wait()
        logger.info("stopping: no new connections, finishing requests in flight")
        self._stop_accepting()
        ticker.cancel()
        sweeper.cancel()
        self.waiters.wake_all()
        await self._drain()
        for conn in list(self.connections):
            conn.close()
        for throttled in self.throttled:
            throttled.next_at = 0.0
            throttled.flush()
        while self.writer.pending or self.writer.offloaded:  # nothing is left uncommitted
            if self.writer.offloaded:
                await asyncio.sleep(0.01)
            else:
                self.writer.flush()
        self.writer.close()
        self.checkpointer.stop()
        self.checkpointer.store.close()
        self.pool.shutdown(wait=True)
        try:
            self.writer_store.checkpoint_wal()
        except apsw.Error as exc:
            logger.warning("WAL checkpoint at exit failed: {}", exc)
        for store in [self.writer_store, self.watch, *self._readers]:
            store.close()
        self.sock.unlink(missing_ok=True)
        logger.bind(commits=self.writer.commits, requests=self.writer.committed_requests).info(
            "orch daemon stopped")

    # -- connections --

    def _listen(self) -> socket.socket:
        paths.ensure_private_dir(self.sock.parent)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            listener.bind(str(self.sock))
            os.chmod(self.sock, paths.FILE_MODE)
            listener.listen(BACKLOG)
            listener.setblocking(False)
        except BaseException:
            listener.close()
            raise
        finally:
            os.umask(old_umask)
        return listener

    def _raise_fd_limit(self) -> None:
        """Let the connection cap, not the descriptor limit, be what new clients meet."""
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = self.max_connections + OWN_FDS
        if soft == resource.RLIM_INFINITY or soft >= want:
            return
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        if new > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            logger.warning("the descriptor limit ({}) leaves room for fewer connections than "
                           "--max-connections {}: past it, new clients wait to be accepted",
                           new, self.max_connections)

    def _accept(self) -> None:
        """Take the connections waiting in the listen queue."""
        for _ in range(BACKLOG):
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._pause_accepting(exc)
                else:
                    logger.warning("accepting a connection failed: {}", exc)
                return
            self.accept_pause_s = 0.0
            if len(self.connections) >= self.max_connections:
                self._refuse(sock)
                continue
            conn = _Connection(self)
            self.connections.add(conn)  # counted at once, so a burst cannot pass the cap
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(lambda conn=conn: conn, sock))
            task.add_done_callback(lambda t, conn=conn, sock=sock: t.cancelled()
                                   or t.exception() is None or self._lost(conn, sock, t))

    def _lost(self, conn: _Connection, sock: socket.socket, task: asyncio.Task) -> None:
        logger.opt(exception=task.exception()).warning("setting up a connection failed")
        self.connections.discard(conn)
        sock.close()

    def _refuse(self, sock: socket.socket) -> None:
        """Over the connection cap: one error line (the client may try again later), closed."""
        try:
            sock.setblocking(False)
            sock.send(protocol.encode(_error_reply(None, LimitExceeded(
                f"too many connections: the daemon serves at most {self.max_connections} at "
                f"once; the request was not read, try again later",
                data={"limit": self.max_connections, "delivered": False}))))
        except OSError:
            pass  # gone already
        finally:
            sock.close()
        self.log_refused(limit=self.max_connections)

    def _pause_accepting(self, exc: OSError) -> None:
        """Out of descriptors: accepting again at once would only fail again, as fast as
        the loop turns. Leave new clients in the listen queue for a short, growing while."""
        self.loop.remove_reader(self.listener.fileno())
        self.accept_pause_s = min(max(0.05, self.accept_pause_s * 2), 2.0)
        self.accept_resume = self.loop.call_later(self.accept_pause_s, self._resume_accepting)
        self.log_no_fds(error=errno.errorcode.get(exc.errno, exc.errno),
                        pause=self.accept_pause_s, open=len(self.connections))

    def _resume_accepting(self) -> None:
        self.accept_resume = None
        if not self.stopping.is_set():
            self.loop.add_reader(self.listener.fileno(), self._accept)

    def _stop_accepting(self) -> None:
        if self.accept_resume is not None:
            self.accept_resume.cancel()
        else:
            self.loop.remove_reader(self.listener.fileno())
        self.listener.close()

    def shed(self) -> None:
        """Over the cap on buffered input: drop the clients holding the most of it."""
        while self.buffered > self.max_buffered:
            victim = max(self.connections, key=lambda c: len(c.buf))
            size = len(victim.buf)
            if not size:
                return
            victim.refuse(LimitExceeded(
                f"the daemon holds too much unread input (over {self.max_buffered} bytes from "
                f"all clients); this connection held the most ({size} bytes)",
                data={"limit": self.max_buffered}))
            self.log_shed(size=size, limit=self.max_buffered)

    async def _sweep(self) -> None:
        """Close connections past their line deadline or idle timeout."""
        every = min(1.0, self.line_timeout_s / 4, self.idle_timeout_s / 4)
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            for conn in list(self.connections):
                conn.check_time(now)
            for throttled in self.throttled:
                throttled.flush()

    async def _drain(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.inflight and time.monotonic() < deadline:
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), deadline - time.monotonic())
            except TimeoutError:
                break

    async def _tick(self) -> None:
        """Recovery every few seconds; notice commits made by other processes."""
        last_version = None
        next_recovery = time.monotonic() + self.recover_every_s
        while True:
            await asyncio.sleep(min(1.0, self.recover_every_s))
            try:
                version = self.watch.read(lambda tx: tx.one("data_version")["data_version"])
                if last_version is not None and version != last_version and self.waiters.parked:
                    # Someone else committed (an embedded CLI, say): let each parked
                    # claim look once.
                    self.waiters.wake_all()
                last_version = version
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + self.recover_every_s
                    await self._recover()
            except OrchError as exc:
                logger.warning("periodic work failed: {}", exc)

    async def _recover(self) -> None:
        ok, r = await self._write("stale_recovery", {"dry_run": False})
        if ok and r["count"]:
            logger.bind(count=r["count"]).info("recovered {} expired lease(s)", r["count"])

    # -- running operations --

    def _reader(self) -> SQLiteStore:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = SQLiteStore(self.db)
            with self._readers_lock:
                self._readers.append(store)
        return store

    async def _write(self, op: str, kwargs: dict) -> tuple[bool, Any]:
        ok, value = await self.writer.submit_future(op, kwargs)
        if ok and op in FEEDS:
            self._feed(op, value)
        return ok, value

    def _feed(self, op: str, value: Any) -> None:
        """Wake parked claims for the items this write made claimable."""
        now = clock.now_ms()
        items = (value if op == "submit_many" else value["recovered"]
                 if op == "stale_recovery" else [value["released"]]
                 if op == "release_and_claim" else [value])
        for item in items:
            if item.get("status") != "pending":
                continue
            if item["run_after"] <= now:
                self.waiters.wake(item["kind"], item["queue"])
            elif self.waiters.any_for(item["kind"], item["queue"]):
                # Claims parked before this delayed item existed: wake one when it is due.
                # (A claim parking later finds it through its own next-due timer.)
                asyncio.get_running_loop().call_later(
                    (item["run_after"] - now) / 1000, self.waiters.wake, item["kind"],
                    item["queue"])

    async def _read(self, op: str, kwargs: dict) -> tuple[bool, Any]:
        def run() -> tuple[bool, Any]:
            fn, _ = OPERATIONS[op]
            try:
                return True, self._reader().read(lambda tx: fn(tx, clock.now_ms(), **kwargs))
            except OrchError as exc:
                return False, exc
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    async def call(self, op: str, kwargs: dict,
                   gone: Callable[[], bool] = lambda: False) -> tuple[bool, Any]:
        if op == "ping":
            return True, {"pong": True, "now": clock.now_ms(), "db": str(self.db),
                          "pid": os.getpid(), "mode": "daemon"}
        if op == "claim_task" and kwargs["wait"] and kwargs["item_id"] is None:
            return await self._claim_waiting(kwargs, gone)
        if op == "execute_tool_idempotent" and kwargs["wait"]:
            return await self._execution_waiting(kwargs)
        if op == "release_and_claim" and kwargs["wait"]:
            ok, out = await self._write(op, kwargs)
            if ok and out["next"] is None:
                # Released (committed); only the claim waits. A claim that fails now
                # is reported as nothing claimed: the release stands either way.
                got, claim = await self._claim_waiting(
                    rules.next_claim(out["released"], **kwargs), gone)
                out["next"] = claim if got else None
            return ok, out
        _, writes = OPERATIONS[op]
        return await (self._write(op, kwargs) if writes else self._read(op, kwargs))

    async def _claim_waiting(self, kwargs: dict, gone: Callable[[], bool]) -> tuple[bool, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + kwargs["wait"] / 1000
        while True:
            # Park before trying, so a submit that commits between the try and the
            # park still wakes this claim.
            waiter = self.waiters.add(kwargs["kinds"], kwargs["queues"])
            try:
                if gone():  # nobody to hand a claim to: let another waiter have it
                    if waiter.woken.done():
                        self.waiters.pass_on(waiter)
                    return True, None
                ok, claim = await self._write("claim_task", kwargs)
                left = deadline - loop.time()
                if not ok or claim is not None or left <= 0 or self.stopping.is_set():
                    return ok, claim
                ok, due = await self._read_due(kwargs)
                if ok and due is not None:
                    left = min(left, max(0.0, (due - clock.now_ms()) / 1000) + 0.001)
                try:
                    await asyncio.wait_for(asyncio.shield(waiter.woken), left)
                except TimeoutError:
                    pass
            finally:
                self.waiters.remove(waiter)

    async def _execution_waiting(self, kwargs: dict) -> tuple[bool, Any]:
        # Someone else runs this execution: look again, backing off, until it settles.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + kwargs["wait"] / 1000
        pause = 0.05
        while True:
            ok, out = await self._write("execute_tool_idempotent", kwargs)
            left = deadline - loop.time()
            if not ok or WAITS["execute_tool_idempotent"](out) or left <= 0 \
                    or self.stopping.is_set():
                return ok, out
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.5)

    async def _read_due(self, kwargs: dict) -> tuple[bool, Any]:
        def run() -> tuple[bool, Any]:
            try:
                return True, self._reader().read(lambda tx: rules.next_due(
                    tx, clock.now_ms(), kinds=kwargs["kinds"], queues=kwargs["queues"]))
            except OrchError as exc:
                return False, exc
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    # -- the wire --

    def dispatch(self, conn: _Connection, line: bytes) -> None:
        """Answer one line of ``conn`` (through ``conn.reply``).

        The common case, one request for a write that does not wait, goes straight to
        the group commit with a callback; everything else (batches, reads, waits,
        errors, debug logging) runs as a task through ``_handle_line``.
        """
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None  # the task below says what is wrong
        op = None
        if isinstance(message, dict) and not self.debug:
            method = message.get("method")
            op = protocol.METHODS.get(method) if isinstance(method, str) else None
        if op is not None and "id" in message and message.get("jsonrpc") == "2.0" \
                and isinstance(message.get("params", {}), dict) and OPERATIONS[op][1] \
                and not (op in WAITED and message.get("params", {}).get("wait")) \
                and _plain_id(message["id"]) and line.count(b"[") + line.count(b"{") \
                <= protocol.MAX_MESSAGE_DEPTH:
            id_ = message["id"]
            try:
                kwargs = validate.check(op, message.get("params", {}))
            except OrchError as exc:
                conn.reply(_error_reply(id_, exc))
                return
            except Exception as exc:  # noqa: BLE001 -- never let one request take the daemon down
                logger.exception("internal error")
                conn.reply(_error_reply(id_, OrchError(f"internal error: {type(exc).__name__}")))
                return

            def done(outcome: tuple[bool, Any]) -> None:
                ok, value = outcome
                if ok and op in FEEDS:
                    try:
                        self._feed(op, value)
                    except Exception:  # noqa: BLE001 -- committed: the answer must still go
                        logger.exception("waking parked claims failed")
                conn.reply(protocol.result(id_, value) if ok else _error_reply(id_, value))
            self.writer.submit(op, kwargs, done)
            return
        task = asyncio.get_running_loop().create_task(self._handle_line(line, conn.gone))
        task.add_done_callback(lambda t: conn.reply(
            None if t.cancelled() else _task_reply(t)))

    async def _handle_line(self, line: bytes, gone: Callable[[], bool]) -> Any:
        try:
            message = json.loads(line)
        except RecursionError:
            return protocol.error(None, 1004, f"JSON nested deeper than "
                                  f"{protocol.MAX_MESSAGE_DEPTH} levels", {"reason": "limit"})
        except ValueError as exc:
            return protocol.error(None, RPC_PARSE_ERROR, f"parse error: {exc}",
                                  {"reason": "parse"})
        if line.count(b"[") + line.count(b"{") > protocol.MAX_MESSAGE_DEPTH and \
                validate.json_depth(message, protocol.MAX_MESSAGE_DEPTH) > \
                protocol.MAX_MESSAGE_DEPTH:  # counting brackets first is far cheaper
            return protocol.error(None, 1004, f"JSON nested deeper than "
                                  f"{protocol.MAX_MESSAGE_DEPTH} levels", {"reason": "limit"})
        if isinstance(message, list):
            if not message:
                return protocol.error(None, RPC_INVALID_REQUEST, "empty batch",
                                      {"reason": "invalid_request"})
            replies = await asyncio.gather(*(self._handle(m, gone) for m in message))
            replies = [r for r in replies if r is not None]
            return replies or None
        return await self._handle(message, gone)

    async def _handle(self, msg: Any, gone: Callable[[], bool]) -> dict | None:
        if not isinstance(msg, dict):
            return protocol.error(None, RPC_INVALID_REQUEST, "a request must be an object",
                                  {"reason": "invalid_request"})
        id_ = msg.get("id")
        if msg.get("jsonrpc") != "2.0" or not isinstance(msg.get("method"), str) \
                or not isinstance(id_, str | int | None) or isinstance(id_, bool):
            return protocol.error(id_ if isinstance(id_, str | int) else None,
                                  RPC_INVALID_REQUEST,
                                  'invalid request: needs "jsonrpc": "2.0", a method and an id',
                                  {"reason": "invalid_request"})
        notification = "id" not in msg
        method = msg["method"]
        op = protocol.METHODS.get(method)
        started = time.perf_counter()
        log = logger.bind(method=method) if self.debug else logger
        if op is None:
            reply = protocol.error(id_, RPC_METHOD_NOT_FOUND, f"unknown method {method[:64]!r}",
                                   {"reason": "method_not_found"})
        else:
            params = msg.get("params", {})
            try:
                if not isinstance(params, dict):
                    raise InvalidInput("params must be an object with named parameters",
                                       data={"field": "params"})
                ok, value = await self.call(op, validate.check(op, params), gone)
            except OrchError as exc:
                ok, value = False, exc
            except Exception as exc:  # never let one request take the daemon down
                log.exception("internal error")
                ok, value = False, OrchError(f"internal error: {type(exc).__name__}")
            reply = protocol.result(id_, value) if ok else _error_reply(id_, value)
        if self.debug:  # binding costs even when the line is not written
            value = reply.get("result")
            item = value.get("id") if isinstance(value, dict) else None
            log.bind(item=item, worker=value.get("worker_id") if item else None,
                     duration_ms=round((time.perf_counter() - started) * 1000, 3),
                     ok="error" not in reply).debug("request")
        return None if notification else reply


#: Operations whose ``wait`` makes them park: never on the direct path.
WAITED = frozenset(("claim_task", "execute_tool_idempotent", "release_and_claim"))


def _plain_id(id_: Any) -> bool:
    return (isinstance(id_, str | int) and not isinstance(id_, bool)) or id_ is None


def _error_reply(id_: Any, exc: OrchError) -> dict:
    return protocol.error(id_, rpc_code(exc), str(exc), {"reason": exc.reason, **exc.data})


def _task_reply(task: asyncio.Task) -> Any:
    exc = task.exception()
    if exc is None:
        return task.result()
    logger.opt(exception=exc).error("internal error")
    return protocol.error(None, -32603, f"internal error: {type(exc).__name__}",
                          {"reason": "internal"})


class _Connection(asyncio.Protocol):
    """One client: reads lines, answers them one at a time, in order.

    What it may hold of the daemon is bounded: a line must be complete within the line
    timeout of its first byte, a connection without a request in progress (a parked
    claim is one) is closed after the idle timeout, and its unread input counts
    towards the daemon's cap on buffered input.
    """

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this client is being answered
        self.pumping = False
        self.eof = False
        self.paused = False  # reading paused (see _flow)
        self.write_paused = False  # the client is not taking its answers fast enough
        self.partial_since: float | None = None  # when the incomplete line in buf began
        self.last_active = time.monotonic()  # connected, or last answered

    # -- asyncio's callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        except OSError:
            uid = -1
        if uid != os.getuid():
            logger.bind(peer_uid=uid).warning("refused a client of another uid")
            self.daemon.connections.discard(self)
            self.transport.write(protocol.encode(protocol.error(
                None, RPC_INVALID_REQUEST, "only the daemon's owner may connect",
                {"reason": "forbidden"})))
            self.transport.close()
            return
        self.last_active = time.monotonic()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.daemon.buffered += len(data)
        if self.daemon.buffered > self.daemon.max_buffered:
            self.daemon.shed()
        self.pump()

    def pause_writing(self) -> None:
        self.write_paused = True
        self._flow()

    def resume_writing(self) -> None:
        self.write_paused = False
        # Not from here: this runs inside the transport's write callback, and a close
        # from there (a line over the limit found next, say) makes asyncio report the
        # connection lost twice, the second time with a traceback.
        asyncio.get_running_loop().call_soon(self.pump)

    def eof_received(self) -> bool:
        self.eof = True
        self.pump()
        return True  # keep the socket open to write the answer in progress

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self._release()
        self.daemon.connections.discard(self)

    # -- lines in, answers out --

    def gone(self) -> bool:
        return self.eof or self.transport.is_closing()

    def pump(self) -> None:
        """Start on the next complete line, unless one is being answered already."""
        if self.pumping:
            return  # reply() called from inside: the loop below goes on
        self.pumping = True
        try:
            while not self.busy and not self.write_paused and not self.transport.is_closing():
                if self.daemon.stopping.is_set():
                    self._turn_away()  # no new requests once stopping
                    return
                nl = self.buf.find(b"\n")
                if nl < 0:
                    self._partial()
                    return
                if nl > protocol.MAX_LINE:
                    self._over_limit()
                    return
                line = self._take(nl)
                if not line.strip():
                    continue
                self.busy = True
                self.daemon.inflight += 1
                self.daemon.dispatch(self, line)
        finally:
            self.pumping = False
            self._flow()

    def _take(self, nl: int) -> bytes:
        """The line ending at ``nl``, out of the buffer."""
        line = bytes(self.buf[:nl])
        del self.buf[:nl + 1]
        self.daemon.buffered -= nl + 1
        self.partial_since = None
        return line

    def _flow(self) -> None:
        """Read from the client only while it keeps up: while its answers are being
        taken, and while what it sent ahead of them fits a line or two."""
        stop = self.write_paused or (self.busy and len(self.buf) > 2 * protocol.MAX_LINE)
        if self.transport.is_closing() or stop == self.paused:
            return
        self.paused = stop
        if stop:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def reply(self, message: Any) -> None:
        self.busy = False
        self.last_active = time.monotonic()
        self.daemon.inflight -= 1
        if not self.daemon.inflight:
            self.daemon.idle.set()
        if message is not None and not self.transport.is_closing():
            try:
                data = protocol.encode(message)
            except Exception:  # noqa: BLE001 -- an answer that cannot be sent ends the connection
                logger.exception("cannot encode an answer")
                self.close()
                return
            self.transport.write(data)
        self.pump()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._release()

    def _release(self) -> None:
        """Give back the unread input (nothing more will be read from a closing client)."""
        self.daemon.buffered -= len(self.buf)
        self.buf = bytearray()
        self.partial_since = None

    def refuse(self, error: OrchError) -> None:
        """One error line, then closed."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(protocol.encode(_error_reply(None, error)))
        self.close()

    def check_time(self, now: float) -> None:
        """Close the connection past its line deadline, or idle past the idle timeout."""
        if self.busy or self.transport is None or self.transport.is_closing():
            return  # a request is being answered (or parked): not waiting on the client
        if self.partial_since is not None and not self.write_paused:
            if now - self.partial_since >= self.daemon.line_timeout_s:
                self.daemon.log_slow_line(limit=self.daemon.line_timeout_s)
                self.close()
        elif now - self.last_active >= self.daemon.idle_timeout_s:
            # no request (or its answer not taken) for that long
            self.daemon.log_idle(limit=self.daemon.idle_timeout_s)
            self.close()

    def _partial(self) -> None:
        """No complete line buffered: close at EOF, refuse an endless line, start the
        line's clock."""
        if len(self.buf) > protocol.MAX_LINE:
            self._over_limit()
        elif self.eof or self.daemon.stopping.is_set():
            self.close()
        elif self.buf and self.partial_since is None:
            self.partial_since = time.monotonic()

    def _turn_away(self) -> None:
        """Stopping: answer each complete line without running it, so its sender knows
        it may send it again (to the next daemon, or to the file), then close."""
        while (nl := self.buf.find(b"\n")) >= 0:
            line = self._take(nl)
            if line.strip():
                self.transport.write(protocol.encode(_error_reply(_id_of(line), Unavailable(
                    "the daemon is stopping; the request was not carried out",
                    data={"delivered": False}))))
        self.close()

    def _over_limit(self) -> None:
        self.refuse(LimitExceeded(f"line over {protocol.MAX_LINE} bytes",
                                  data={"limit": protocol.MAX_LINE}))


def _id_of(line: bytes) -> Any:
    """The request's id, where one can be read (an answer then names its request)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    id_ = message.get("id") if isinstance(message, dict) else None
    return id_ if _plain_id(id_) else None


def _private_file(path: str, flags: int) -> int:
    """open()'s opener for the log: created 0600 whatever the umask, like the database.

    A log left readable by an older version is made private too. Rotated files are
    the renamed earlier ones, so they keep the mode.
    """
    fd = os.open(path, flags, paths.FILE_MODE)
    st = os.fstat(fd)
    if st.st_mode & 0o777 != paths.FILE_MODE and st.st_uid == os.getuid():
        os.fchmod(fd, paths.FILE_MODE)
    return fd


def setup_logging(log_file: Path | None, level: str = "INFO") -> None:
    logger.remove()
    fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level} {message} {extra}"
    logger.add(sys.stderr, level=level, format=fmt)
    if log_file is not None:
        paths.ensure_private_dir(log_file.parent)
        logger.add(log_file, level=level, format=fmt, rotation="10 MB", retention=5,
                   opener=_private_file)


def run(db: Path, sock: Path, *, synchronous: str = "full", log_file: Path | None = None,
        log_level: str = "INFO", recover_every_s: float = RECOVER_EVERY_S,
        line_timeout_s: float = LINE_TIMEOUT_S, idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS, max_buffered: int = MAX_BUFFERED) -> int:
    setup_logging(log_file, log_level)
    daemon = Daemon(db, sock, synchronous=synchronous, recover_every_s=recover_every_s,
                    line_timeout_s=line_timeout_s, idle_timeout_s=idle_timeout_s,
                    max_connections=max_connections, max_buffered=max_buffered,
                    debug=log_level == "DEBUG")
    asyncio.run(daemon.serve())
    return 0
