"""Every default a user can change, stated once.

The library runs with these when nothing is given, and the CLI's help shows them from
here. This module imports nothing: the CLI reads it without loading the engine.
"""

#: The queue an item goes to, and a claim takes from, when none is named.
QUEUE = "default"
#: The kind an item is submitted as, and a claim takes, when none is named.
KIND = "task"
#: A lease's length when a claim gives none; a heartbeat without one renews by the claim's.
TTL_S = 30.0
#: Claims an item may have before it is dead (tasks; sessions and goals have no limit).
MAX_ATTEMPTS = 3
#: Items ``ls`` (``list_tasks``) returns when no limit is given; 0 means all.
LIST_LIMIT = 100
#: Events ``list_events`` returns when no limit is given: one page of ``orch events``.
EVENTS_LIMIT = 1000
#: How long a transaction retries a database that another process keeps locked.
BUSY_BUDGET_S = 10.0

# the socket client (orchestrator.client.Client)
CLIENT_TIMEOUT_S = 60.0  # for an answer, beyond the request's own wait
CONNECT_WITHIN_S = 2.0  # resending a request that provably never reached the daemon

# orch daemon
RECOVER_EVERY_S = 2.0  # between the daemon's own recovery passes
LINE_TIMEOUT_S = 10.0  # a request line, from its first byte to its newline
IDLE_TIMEOUT_S = 300.0  # a connection without a request
MAX_CONNECTIONS = 1024
MAX_BUFFERED_MIB = 256.0  # unread input, all connections together

# orch work
WORK_CONCURRENCY = 1
WORK_GRACE_S = 30.0  # after SIGTERM/SIGINT, before running commands are stopped
WORK_KILL_AFTER_S = 5.0  # between SIGTERM and SIGKILL to a stopped command
WORK_RETRY_IN_S = 10.0  # before an item whose command exited 75 is claimable again
# PostgreSQL: group commits a daemon runs side by side, each on its own connection.
WRITER_LANES = 4
