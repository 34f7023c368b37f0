"""One client connection: lines in, one answered at a time, answers out."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any

from loguru import logger

from .. import protocol
from ..errors import RPC_INVALID_REQUEST, LimitExceeded, OrchError, Unavailable
from .wire import error_reply, id_of

if TYPE_CHECKING:
    from .server import Daemon


class Connection(asyncio.Protocol):
    """One client: reads lines, answers them one at a time, in order.

    What it may hold of the daemon is bounded: a line must be complete within the line
    timeout of its first byte, a connection without a request in progress (a parked
    claim is one) is closed after the idle timeout, and its unread input counts
    towards the daemon's cap on buffered input.
    """

    def __init__(self, daemon: Daemon):
        self.daemon = daemon
        # The writer lane its writes commit in, one lane per client (PostgreSQL).
        self.lane = daemon.writer.lane() if hasattr(daemon.writer, "lane") else 0
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a request of this client is being answered
        self.pumping = False
        self.eof = False
        self.paused = False  # reading paused (see _flow)
        self.write_paused = False  # the client is not taking its answers fast enough
        self.partial_since: float | None = None  # when the incomplete line in buf began
        self.last_active = time.monotonic()  # connected, or last answered

    @property
    def out(self) -> asyncio.Transport:
        """The client's transport, for what runs once asyncio has connected it."""
        assert self.transport is not None, "used before connection_made"
        return self.transport

    # -- asyncio's callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport), "a stream socket's transport"
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        except OSError:
            uid = -1
        if uid != os.getuid():
            logger.bind(peer_uid=uid).warning("refused a client of another uid")
            self.daemon.connections.discard(self)
            transport.write(protocol.encode(protocol.error(
                None, RPC_INVALID_REQUEST, "only the daemon's owner may connect",
                {"reason": "forbidden"})))
            transport.close()
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
        return self.eof or self.out.is_closing()

    def pump(self) -> None:
        """Start on the next complete line, unless one is being answered already."""
        if self.pumping:
            return  # reply() called from inside: the loop below goes on
        self.pumping = True
        try:
            while not self.busy and not self.write_paused and not self.out.is_closing():
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
        if self.out.is_closing() or stop == self.paused:
            return
        self.paused = stop
        if stop:
            self.out.pause_reading()
        else:
            self.out.resume_reading()

    def reply(self, message: Any) -> None:
        self.busy = False
        self.last_active = time.monotonic()
        self.daemon.inflight -= 1
        if not self.daemon.inflight:
            self.daemon.idle.set()
        if message is not None and not self.out.is_closing():
            try:
                data = protocol.encode(message)
            except Exception:  # noqa: BLE001 -- an answer that cannot be sent ends the connection
                logger.exception("cannot encode an answer")
                self.close()
                return
            self.out.write(data)
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
        if self.transport is not None and not self.out.is_closing():
            self.out.write(protocol.encode(error_reply(None, error)))
        self.close()

    def check_time(self, now: float) -> None:
        """Close the connection past its line deadline, or idle past the idle timeout."""
        if self.busy or self.transport is None or self.out.is_closing():
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
                self.out.write(protocol.encode(error_reply(id_of(line), Unavailable(
                    "the daemon is stopping; the request was not carried out",
                    data={"delivered": False}))))
        self.close()

    def _over_limit(self) -> None:
        self.refuse(LimitExceeded(f"line over {protocol.MAX_LINE} bytes",
                                  data={"limit": protocol.MAX_LINE}))
