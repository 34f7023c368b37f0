"""The daemon's server: start and stop, accepting clients, the periodic work, and the
routing of each request to the writer, a reader thread or a parked claim."""

from __future__ import annotations

import asyncio
import errno
import fcntl
import functools
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw
from loguru import logger

from .. import clock, defaults, livestate, paths, protocol, rules
from ..api import WAITS
from ..errors import LimitExceeded, OrchError, internal_error
from ..operations import OPERATIONS
from ..registry import FEEDS, WAITED
from ..store import SQLiteStore, Store, is_url, open_store
from . import wire
from .connection import Connection
from .logs import Throttled, setup_logging
from .metrics import Metrics
from .waiters import Waiters
from .wire import Request, error_reply
from .writer import Checkpointer, GroupCommit, WriterLanes, serialized

if TYPE_CHECKING:
    from ..web.app import WebView

RECOVER_EVERY_S = defaults.RECOVER_EVERY_S
# What one client may hold of the daemon (each a ``orch daemon`` option, see defaults):
LINE_TIMEOUT_S = defaults.LINE_TIMEOUT_S
IDLE_TIMEOUT_S = defaults.IDLE_TIMEOUT_S
MAX_CONNECTIONS = defaults.MAX_CONNECTIONS
MAX_BUFFERED = int(defaults.MAX_BUFFERED_MIB * (1 << 20))
BACKLOG = 100  # connections waiting to be accepted
OWN_FDS = 64  # descriptors the daemon needs besides its connections (files, threads)


class StartupError(OrchError):
    """The daemon cannot start (another one runs, a path is unusable)."""


class Daemon:
    """One daemon serving one database file on one socket, until SIGTERM or SIGINT."""

    def __init__(self, db: Path | str, sock: Path, *, synchronous: str = "full",
                 recover_every_s: float = RECOVER_EVERY_S,
                 line_timeout_s: float = LINE_TIMEOUT_S,
                 idle_timeout_s: float = IDLE_TIMEOUT_S,
                 max_connections: int = MAX_CONNECTIONS, max_buffered: int = MAX_BUFFERED,
                 readers: int = 4, debug: bool = False,
                 writer_lanes: int = defaults.WRITER_LANES,
                 http: tuple[str, int] | None = None):
        self.db: Path | str = db if is_url(db) else Path(db).resolve()
        self.sock = Path(sock)
        self.synchronous = synchronous
        self.recover_every_s = recover_every_s
        self.line_timeout_s = line_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_buffered = max_buffered
        self.reader_count = readers
        self.writer_lanes = writer_lanes  # PostgreSQL only: SQLite has one writer
        self.debug = debug
        self.waiters = Waiters()
        self.inflight = 0
        self.idle = asyncio.Event()
        self.stopping = asyncio.Event()
        self.connections: set[Connection] = set()
        self.buffered = 0  # bytes read from clients and not yet taken as lines
        self.accept_pause_s = 0.0  # grows while descriptors are short
        self.accept_resume: asyncio.TimerHandle | None = None
        self.log_idle = Throttled(
            "INFO", "closed {n} idle connection(s): no request for {limit:g} s")
        self.log_slow_line = Throttled(
            "WARNING", "dropped {n} client(s) whose line was not complete {limit:g} s after "
            "its first byte")
        self.log_refused = Throttled(
            "WARNING", "refused {n} connection(s): {limit} open, the most allowed "
            "(--max-connections)")
        self.log_shed = Throttled(
            "WARNING", "dropped {n} client(s) holding the most unread input ({size} bytes): "
            "input buffered over all connections passed {limit} bytes (--max-buffered-mib)")
        self.log_no_fds = Throttled(
            "WARNING", "out of descriptors ({error}): stopped accepting {n} time(s), now for "
            "{pause:g} s; {open} connection(s) open")
        self.throttled = [self.log_idle, self.log_slow_line, self.log_refused, self.log_shed,
                          self.log_no_fds]
        self._locks: list[int] = []
        self._local = threading.local()
        self._readers: list[Store] = []
        self.listener_thread: Any = None
        self._readers_lock = threading.Lock()
        self.metrics = Metrics(read=lambda fn: self._reader().read(fn),
                               parked=lambda: len(self.waiters.parked),
                               connections=lambda: len(self.connections))
        self.http = http
        self.web: WebView | None = None

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
        if isinstance(self.db, Path):  # on PostgreSQL, every machine runs its own daemon
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
        self._bind_web()
        self.writer_store: Store
        self.watch: Store
        if isinstance(self.db, Path):
            self.writer_store = SQLiteStore(self.db, synchronous=self.synchronous)
            self.writer_store.manual_checkpoints()
            self.checkpointer = Checkpointer(SQLiteStore(self.db, synchronous=self.synchronous))
            self.checkpointer.start()
            self.watch = SQLiteStore(self.db)  # loop thread: notices other processes' commits
        else:
            # One pool for the writer, the readers and the periodic look; a parked
            # claim is woken by NOTIFY from any machine (the Listener), and the
            # periodic look is the safety net under it.
            store = open_store(self.db, pool=self.reader_count + self.writer_lanes + 1)
            self.writer_store = self.watch = store
            from ..postgres import Listener

            self.listener_thread = Listener(
                self.writer_store,  # type: ignore[arg-type]
                lambda: loop.call_soon_threadsafe(self._woken_from_afar))
            self.listener_thread.start()
        if isinstance(self.writer_store, SQLiteStore):
            self.writer: GroupCommit | WriterLanes = GroupCommit(
                self.writer_store, loop, lambda: len(self.connections),
                committed=self.metrics.committed)
        else:
            committed = serialized(self.metrics.committed)
            self.writer = WriterLanes([
                GroupCommit(self.writer_store, loop,
                            lambda: -(-len(self.connections) // self.writer_lanes),
                            committed=committed)
                for _ in range(self.writer_lanes)])
        self.pool = ThreadPoolExecutor(self.reader_count, thread_name_prefix="orch-reader")
        if threading.current_thread() is threading.main_thread():
            # Only the main thread takes signals; a daemon run in another thread (in a
            # test) is stopped by setting ``stopping``.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
        await self._recover()
        self._raise_fd_limit()
        self.loop = loop
        self.listener = self._listen()
        loop.add_reader(self.listener.fileno(), self._accept)
        logger.bind(db=paths.shown(self.db), socket=str(self.sock), pid=os.getpid()).info(
            "orch daemon serving {} on {}", paths.shown(self.db), self.sock)
        await self._start_web()
        ticker = asyncio.create_task(self._tick())
        sweeper = asyncio.create_task(self._sweep())
        await self.stopping.wait()
        logger.info("stopping: no new connections, finishing requests in flight")
        self._stop_accepting()
        await self._stop_web()
        ticker.cancel()
        sweeper.cancel()
        self.waiters.wake_all()
        await self._drain()
        for conn in list(self.connections):
            conn.close()
        for throttled in self.throttled:
            throttled.next_at = 0.0
            throttled.flush()
        # nothing is left uncommitted, held-up requests included
        while self.writer.pending or self.writer.offloaded or self.writer.again:
            if self.writer.offloaded or self.writer.again:
                await asyncio.sleep(0.01)
            else:
                self.writer.flush()
        self.writer.close()
        self.pool.shutdown(wait=True)
        if self.listener_thread is not None:
            self.listener_thread.stop()
        if isinstance(self.writer_store, SQLiteStore):
            self.checkpointer.stop()
            self.checkpointer.store.close()
            try:
                self.writer_store.checkpoint_wal()
            except apsw.Error as exc:
                logger.warning("WAL checkpoint at exit failed: {}", exc)
        for store in {id(s): s for s in [self.writer_store, self.watch, *self._readers]}.values():
            store.close()
        self.sock.unlink(missing_ok=True)
        logger.bind(commits=self.writer.commits, requests=self.writer.committed_requests).info(
            "orch daemon stopped")

    # -- the web view (orch daemon --http) --

    def _bind_web(self) -> None:
        """Take the port before anything else starts, so one in use stops the daemon."""
        if self.http is not None:
            from ..web.app import WebView

            self.web = WebView(self, *self.http)

    async def _start_web(self) -> None:
        if self.web is not None:
            await self.web.start()

    async def _stop_web(self) -> None:
        if self.web is not None:
            await self.web.stop()

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
            conn = Connection(self)
            self.connections.add(conn)  # counted at once, so a burst cannot pass the cap
            task = self.loop.create_task(
                self.loop.connect_accepted_socket(_factory(conn), sock))
            task.add_done_callback(functools.partial(self._set_up, conn, sock))

    def _set_up(self, conn: Connection, sock: socket.socket, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._lost(conn, sock, task)

    def _lost(self, conn: Connection, sock: socket.socket, task: asyncio.Task) -> None:
        logger.opt(exception=task.exception()).warning("setting up a connection failed")
        self.connections.discard(conn)
        sock.close()

    def _refuse(self, sock: socket.socket) -> None:
        """Over the connection cap: one error line (the client may try again later), closed."""
        try:
            sock.setblocking(False)
            sock.send(protocol.encode(error_reply(None, LimitExceeded(
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
        self.log_no_fds(error=errno.errorcode.get(exc.errno or 0, exc.errno),
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
                version = await self._data_version()
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

    async def _data_version(self) -> int | None:
        def read() -> int | None:
            return self.watch.read(lambda tx: tx.scalar("data_version"))
        if isinstance(self.watch, SQLiteStore):
            return read()  # a local file, and a store of the loop's thread
        # A round trip to the server, which a stalled link can hold for as long as the
        # stall lasts: the loop must go on answering meanwhile.
        return await asyncio.get_running_loop().run_in_executor(self.pool, read)

    async def _recover(self) -> None:
        ok, r = await self._write("stale_recovery", {"dry_run": False})
        if ok:
            self.metrics.recovered(r)
        if ok and r["count"]:
            logger.bind(count=r["count"]).info("recovered {} expired lease(s)", r["count"])

    # -- running operations --

    def _woken_from_afar(self) -> None:
        if self.waiters.parked:
            self.waiters.wake_all()

    def _reader(self) -> Store:
        if not isinstance(self.db, Path):
            return self.writer_store  # its pool serves every thread
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = SQLiteStore(self.db)
            with self._readers_lock:
                self._readers.append(store)
        return store

    async def _write(self, op: str, kwargs: dict) -> tuple[bool, Any]:
        if isinstance(self.writer, WriterLanes):  # waits, batches, recovery: each in turn
            ok, value = await self.writer.submit_future(op, kwargs, self.writer.lane())
        else:
            ok, value = await self.writer.submit_future(op, kwargs)
        if ok and op in FEEDS:
            self.waiters.feed(op, value)
        return ok, value

    async def _read(self, op: str, kwargs: dict) -> tuple[bool, Any]:
        def run() -> tuple[bool, Any]:
            fn, _ = OPERATIONS[op]
            try:
                return True, self._reader().read(lambda tx: fn(tx, tx.now(), **kwargs))
            except OrchError as exc:
                return False, exc
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    async def call(self, op: str, kwargs: dict,
                   gone: Callable[[], bool] = lambda: False) -> tuple[bool, Any]:
        if op == "ping":
            return True, {"pong": True, "now": clock.now_ms(), "db": paths.shown(self.db),
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
                ok, due_in = await self._read_due(kwargs)
                if ok and due_in is not None:
                    left = min(left, max(0.0, due_in / 1000) + 0.001)
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
                # How long until then, by the store's clock (the server's, on PostgreSQL).
                def due_in(tx: Any) -> int | None:
                    now = tx.now()
                    due = rules.next_due(tx, now, kinds=kwargs["kinds"], queues=kwargs["queues"])
                    return None if due is None else due - now
                return True, self._reader().read(due_in)
            except OrchError as exc:
                return False, exc
        return await asyncio.get_running_loop().run_in_executor(self.pool, run)

    # -- the wire --

    def dispatch(self, conn: Connection, line: bytes) -> None:
        """Answer one line of ``conn`` (through ``conn.reply``).

        The common case, one request for a write that does not wait, goes straight to
        the group commit with a callback; everything else (batches, reads, waits,
        notifications, errors, debug logging) runs as a task through ``_answer``.
        """
        req = wire.parse(line)
        if type(req) is Request and req.refusal is None and not req.notification \
                and not self.debug and OPERATIONS[req.op][1] \
                and not (req.op in WAITED and req.kwargs["wait"]):
            self._write_direct(conn, req)
            return
        task = asyncio.get_running_loop().create_task(self._answer(req, conn.gone))
        task.add_done_callback(lambda t: conn.reply(
            None if t.cancelled() else wire.task_reply(t)))

    def _write_direct(self, conn: Connection, req: Request) -> None:
        op, id_ = req.op, req.id

        def done(outcome: tuple[bool, Any]) -> None:
            ok, value = outcome
            try:
                if ok and op in FEEDS:
                    self.waiters.feed(op, value)
                self.metrics.answered(op, req.kwargs, ok, value)  # before: a scrape
                # made once the client has its answer counts it
            except Exception:  # noqa: BLE001 -- committed: the answer must still go
                logger.exception("waking parked claims or counting the answer failed")
            conn.reply(wire.reply(id_, ok, value))
        if isinstance(self.writer, WriterLanes):
            self.writer.submit(op, req.kwargs, done, conn.lane)
        else:
            self.writer.submit(op, req.kwargs, done)

    async def _answer(self, parsed: Request | list[Request] | dict,
                      gone: Callable[[], bool]) -> Any:
        if isinstance(parsed, dict):  # the line holds no request
            self.metrics.refused("", parsed)
            return parsed
        if isinstance(parsed, list):
            replies = await asyncio.gather(*(self._answer_one(r, gone) for r in parsed))
            return [r for r in replies if r is not None] or None
        return await self._answer_one(parsed, gone)

    async def _answer_one(self, req: Request, gone: Callable[[], bool]) -> dict | None:
        if req.method is None:  # not a request: answered even without an id
            self.metrics.refused("", req.refusal)
            return req.refusal
        started = time.perf_counter()
        log = logger.bind(method=req.method) if self.debug else logger
        if req.refusal is not None:
            reply = req.refusal
            self.metrics.refused(req.op, reply)
        else:
            try:
                ok, value = await self.call(req.op, req.kwargs, gone)
            except OrchError as exc:
                ok, value = False, exc
            except Exception as exc:  # never let one request take the daemon down
                log.exception("internal error")
                ok, value = False, internal_error(exc)
            reply = wire.reply(req.id, ok, value)
            self.metrics.answered(req.op, req.kwargs, ok, value)
        if self.debug:  # binding costs even when the line is not written
            value = reply.get("result")
            item = worker = None
            if isinstance(value, dict):
                item = value.get("id")
                worker = value.get("worker_id") if item else None
            log.bind(item=item, worker=worker,
                     duration_ms=round((time.perf_counter() - started) * 1000, 3),
                     ok="error" not in reply).debug("request")
        return None if req.notification else reply


def run(db: paths.Database, sock: Path, *, synchronous: str = "full", log_file: Path | None = None,
        log_level: str = "INFO", recover_every_s: float = RECOVER_EVERY_S,
        line_timeout_s: float = LINE_TIMEOUT_S, idle_timeout_s: float = IDLE_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS, max_buffered: int = MAX_BUFFERED,
        http: tuple[str, int] | None = None,
        writer_lanes: int = defaults.WRITER_LANES) -> int:
    setup_logging(log_file, log_level)
    daemon = Daemon(db, sock, synchronous=synchronous, recover_every_s=recover_every_s,
                    line_timeout_s=line_timeout_s, idle_timeout_s=idle_timeout_s,
                    max_connections=max_connections, max_buffered=max_buffered,
                    debug=log_level == "DEBUG", http=http, writer_lanes=writer_lanes)
    asyncio.run(daemon.serve())
    return 0


def _factory(conn: Connection) -> Callable[[], Connection]:
    """asyncio's protocol factory for a connection made before its socket is handed over."""
    return lambda: conn
