"""``orch daemon``: the per-machine owner of the database, serving JSON-RPC on a Unix socket.

Shape: an asyncio loop owns the socket, every client connection and the write
connection. The writes read in one turn of the loop are committed together at the
start of the next (one IMMEDIATE transaction, one savepoint per request, one COMMIT,
then every reply); a small pool of reader threads answers reads from their own
connections (WAL), and a checkpointer thread copies the WAL back into the database.
Parked ``claimTask(wait=…)`` callers are woken by the commits that make items
claimable, never by polling.

- ``server``: start and stop, accepting clients, periodic recovery, routing requests;
- ``connection``: one client's lines in and answers out, and its limits;
- ``wire``: a line read once into checked requests; replies;
- ``writer``: the write connection's group commit, and the WAL checkpointer;
- ``waiters``: parked claims, and the writes that wake them;
- ``logs``: the log file, and throttled lines for events that come in floods.
"""

from .logs import LOG_EVERY_S, setup_logging
from .server import (
    BACKLOG,
    IDLE_TIMEOUT_S,
    LINE_TIMEOUT_S,
    MAX_BUFFERED,
    MAX_CONNECTIONS,
    OWN_FDS,
    RECOVER_EVERY_S,
    Daemon,
    StartupError,
    run,
)
from .writer import MAX_GROUP

__all__ = ["BACKLOG", "IDLE_TIMEOUT_S", "LINE_TIMEOUT_S", "LOG_EVERY_S", "MAX_BUFFERED",
           "MAX_CONNECTIONS", "MAX_GROUP", "OWN_FDS", "RECOVER_EVERY_S", "Daemon",
           "StartupError", "run", "setup_logging"]
