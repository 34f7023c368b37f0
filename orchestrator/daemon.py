"""``orch daemon``: the per-machine owner of the database, serving JSON-RPC on a Unix socket.

Shape: an asyncio loop owns the socket and every client connection; one writer thread
owns the write connection and commits whatever requests are queued together (one
IMMEDIATE transaction, one savepoint per request, one COMMIT, then every reply); a
small pool of reader threads answers reads from their own connections (WAL), so reads
never wait behind the writer. Parked ``claimTask(wait=…)`` callers are woken by the
commits that make items claimable, never by polling.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import queue
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

from . import clock, paths, protocol, rules, validate
from .api import WAITS
from .errors import (
    RPC_INVALID_REQUEST,
    RPC_METHOD_NOT_FOUND,
    RPC_PARSE_ERROR,
    InvalidInput,
    OrchError,
    Unavailable,
    rpc_code,
)
from .operations import OPERATIONS
from .store import Rollback, SQLiteStore, retry_busy

MAX_GROUP = 512  # requests committed together at most
LINE_TIMEOUT_S = 10.0  # a client that stops mid-line is dropped after this
RECOVER_EVERY_S = 2.0
#: Operations after which an item may have become claimable.
FEEDS = {"submit_task", "submit_many", "release_task", "release_and_claim", "stale_recovery",
         "resolve_task"}


class StartupError(OrchError):
    """The daemon cannot start (another one runs, a path is unusable)."""


# --- the writer: one connection, group commit --------------------------------------------


@dataclass
class _Job:
    op: str
    kwargs: dict
    future: asyncio.Future


class Writer(threading.Thread):
    """Owns the write connection; commits queued requests together."""

    def __init__(self, store: SQLiteStore, loop: asyncio.AbstractEventLoop):
        super().__init__(name="orch-writer", daemon=True)
        self.store = store
        self.loop = loop
        self.jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self.commits = 0
        self.committed_requests = 0

    def submit(self, op: str, kwargs: dict) -> asyncio.Future:
        """Queue a write; the future gets (ok, value) once its group has committed."""
        fut = self.loop.create_future()
        self.jobs.put(_Job(op, kwargs, fut))
        return fut

    def stop(self) -> None:
        self.jobs.put(None)

    def run(self) -> None:
        stopping = False
        while not stopping:
            job = self.jobs.get()
            if job is None:
                break
            group = [job]
            while len(group) < MAX_GROUP:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                group.append(nxt)
            try:
                outcomes = self._commit(group)
            except Exception as exc:  # noqa: BLE001 -- keep serving: the next group may pass
                logger.exception("group commit failed")
                outcomes = [(False, OrchError(f"internal error: {type(exc).__name__}"))] \
                    * len(group)
            # One wake-up of the event loop for the whole group.
            self.loop.call_soon_threadsafe(_settle_all, group, outcomes)

    def _commit(self, group: list[_Job]) -> list[tuple[bool, Any]]:
        if len(group) == 1:  # alone: its own transaction, no savepoint needed
            job = group[0]
            fn, _ = OPERATIONS[job.op]
            try:
                outcomes = [(True, self.store.write(
                    lambda tx: fn(tx, clock.now_ms(), **job.kwargs)))]
            except Exception as exc:  # noqa: BLE001 -- mapped, never raised in the writer
                outcomes = [_failure(job, exc)]
        else:
            outcomes = self._commit_group(group)
        self.commits += 1
        self.committed_requests += len(group)
        return outcomes

    def _commit_group(self, group: list[_Job]) -> list[tuple[bool, Any]]:
        def attempt() -> list[tuple[bool, Any]]:
            outcomes: list[tuple[bool, Any]] = []
            with self.store.transaction() as tx:
                for j in group:
                    fn, _ = OPERATIONS[j.op]
                    try:
                        with tx.savepoint():
                            outcomes.append((True, fn(tx, clock.now_ms(), **j.kwargs)))
                    except Rollback as rb:
                        outcomes.append((True, rb.result))
                    except apsw.BusyError:
                        raise  # retry the whole group
                    except Exception as exc:  # noqa: BLE001 -- this request fails alone
                        outcomes.append(_failure(j, exc))
            return outcomes

        try:
            try:
                return attempt()
            except apsw.BusyError:
                return retry_busy(attempt, self.store.busy_budget_s)
        except OrchError as exc:
            return [(False, exc)] * len(group)
        except apsw.Error as exc:  # the COMMIT itself failed: nothing of the group stands
            logger.exception("group commit failed")
            return [(False, Unavailable(f"commit failed: {exc}"))] * len(group)



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


def _failure(job: _Job, exc: Exception) -> tuple[bool, OrchError]:
    """What a request that raised gets back; unexpected errors are logged, never raised."""
    if isinstance(exc, OrchError):
        return False, exc
    if isinstance(exc, apsw.Error):
        logger.bind(method=job.op).opt(exception=exc).error("request failed in the database")
        return False, Unavailable(f"database error: {exc}")
    logger.bind(method=job.op).opt(exception=exc).error("internal error")
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


class Daemon:
    def __init__(self, db: Path, sock: Path, *, synchronous: str = "full",
                 recover_every_s: float = RECOVER_EVERY_S,
                 line_timeout_s: float = LINE_TIMEOUT_S, readers: int = 4,
                 debug: bool = False):
        self.db = Path(db).resolve()
        self.sock = Path(sock)
        self.synchronous = synchronous
        self.recover_every_s = recover_every_s
        self.line_timeout_s = line_timeout_s
        self.reader_count = readers
        self.debug = debug
        self.waiters = Waiters()
        self.inflight = 0
        self.idle = asyncio.Event()
        self.stopping = asyncio.Event()
        self.connections: set[asyncio.StreamWriter] = set()
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
        self._lock(self.db.with_name(self.db.name + ".daemon.lock"), f"database {self.db}")
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
        self.writer = Writer(self.writer_store, loop)
        self.writer.start()
        self.checkpointer = Checkpointer(SQLiteStore(self.db, synchronous=self.synchronous))
        self.checkpointer.start()
        self.pool = ThreadPoolExecutor(self.reader_count, thread_name_prefix="orch-reader")
        self.watch = SQLiteStore(self.db)  # loop thread: notices other processes' commits
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        await self._recover()
        paths.ensure_private_dir(self.sock.parent)
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(self._client, path=str(self.sock),
                                                     limit=protocol.MAX_LINE + 2)
        finally:
            os.umask(old_umask)
        os.chmod(self.sock, paths.FILE_MODE)
        logger.bind(db=str(self.db), socket=str(self.sock), pid=os.getpid()).info(
            "orch daemon serving {} on {}", self.db, self.sock)
        ticker = asyncio.create_task(self._tick())
        await self.stopping.wait()
        logger.info("stopping: no new connections, finishing requests in flight")
        server.close()
        ticker.cancel()
        self.waiters.wake_all()
        await self._drain()
        for w in list(self.connections):
            w.close()
        await server.wait_closed()
        self.writer.stop()
        await loop.run_in_executor(None, self.writer.join)
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
        ok, value = await self.writer.submit(op, kwargs)
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

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        except OSError:
            uid = -1
        if uid != os.getuid():
            logger.bind(peer_uid=uid).warning("refused a client of another uid")
            writer.write(protocol.encode(protocol.error(
                None, RPC_INVALID_REQUEST, "only the daemon's owner may connect",
                {"reason": "forbidden"})))
            await _close(writer)
            return
        self.connections.add(writer)
        buf = bytearray()
        try:
            while not self.stopping.is_set():
                nl = buf.find(b"\n")
                if nl < 0:
                    if len(buf) > protocol.MAX_LINE:
                        await self._send(writer, protocol.error(
                            None, 1004, f"line over {protocol.MAX_LINE} bytes",
                            {"reason": "limit", "limit": protocol.MAX_LINE}))
                        return
                    try:
                        chunk = await (asyncio.wait_for(reader.read(1 << 16), self.line_timeout_s)
                                       if buf else reader.read(1 << 16))
                    except TimeoutError:
                        logger.info("dropped a client that stalled mid-line")
                        return
                    if not chunk:
                        return
                    buf += chunk
                    continue
                line = bytes(buf[:nl])
                del buf[:nl + 1]
                if len(line) > protocol.MAX_LINE:
                    await self._send(writer, protocol.error(
                        None, 1004, f"line over {protocol.MAX_LINE} bytes",
                        {"reason": "limit", "limit": protocol.MAX_LINE}))
                    return
                if not line.strip():
                    continue
                self.inflight += 1
                try:
                    reply = await self._handle_line(
                        line, lambda: reader.at_eof() or writer.is_closing())
                finally:
                    self.inflight -= 1
                    if not self.inflight:
                        self.idle.set()
                if reply is not None:
                    await self._send(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client vanished; anything it asked for has been answered or dropped
        finally:
            self.connections.discard(writer)
            await _close(writer)

    async def _send(self, writer: asyncio.StreamWriter, message: Any) -> None:
        writer.write(protocol.encode(message))
        await writer.drain()

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
            if ok:
                reply = protocol.result(id_, value)
            else:
                data = {"reason": value.reason, **value.data}
                reply = protocol.error(id_, rpc_code(value), str(value), data)
        if self.debug:  # binding costs even when the line is not written
            value = reply.get("result")
            item = value.get("id") if isinstance(value, dict) else None
            log.bind(item=item, worker=value.get("worker_id") if item else None,
                     duration_ms=round((time.perf_counter() - started) * 1000, 3),
                     ok="error" not in reply).debug("request")
        return None if notification else reply


def _settle_all(group: list[_Job], outcomes: list[tuple[bool, Any]]) -> None:
    for job, outcome in zip(group, outcomes, strict=True):
        if not job.future.done():
            job.future.set_result(outcome)


async def _close(writer: asyncio.StreamWriter) -> None:
    try:
        writer.close()
        await writer.wait_closed()
    except (ConnectionError, OSError):
        pass


def setup_logging(log_file: Path | None, level: str = "INFO") -> None:
    logger.remove()
    fmt = "{time:YYYY-MM-DD HH:mm:ss.SSS} {level} {message} {extra}"
    logger.add(sys.stderr, level=level, format=fmt)
    if log_file is not None:
        paths.ensure_private_dir(log_file.parent)
        logger.add(log_file, level=level, format=fmt, rotation="10 MB", retention=5)


def run(db: Path, sock: Path, *, synchronous: str = "full", log_file: Path | None = None,
        log_level: str = "INFO", recover_every_s: float = RECOVER_EVERY_S,
        line_timeout_s: float = LINE_TIMEOUT_S) -> int:
    setup_logging(log_file, log_level)
    daemon = Daemon(db, sock, synchronous=synchronous, recover_every_s=recover_every_s,
                    line_timeout_s=line_timeout_s, debug=log_level == "DEBUG")
    asyncio.run(daemon.serve())
    return 0
