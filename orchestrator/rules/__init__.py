"""The lease rules. Every operation is a function ``op(tx, now, **params)``.

Parameters arrive checked and normalised by ``validate.check``; times are epoch ms.
Each function runs inside one transaction that its caller owns (the embedded API opens
one per call, the daemon one per group of requests with a savepoint each) and appends
its events in it, so a state change and its event are never apart.

By concern:

- ``tokens``: claim tokens and their hashes.
- ``transitions``: reading an item, settling it, recording the event; retry backoff.
- ``leases``: claim, heartbeat, release (and release-and-claim), ``held``.
- ``recovery``: lost leases, one at a time and in bulk; takeover; cascade fencing.
- ``submit``: making items, one at a time and in bulk.
- ``lifecycle``: cancel, checkpoint, resolve, retry.
- ``reads``: get, list, events, verify, status.
- ``agents``: sessions, goals and tool executions.
- ``explain``: why an item is where it is.
- ``views``: how rows are shown to callers (token hashes hidden, JSON decoded).

``registry`` names the function of each operation. The names below are the package's
surface for the rest of orch.
"""

from ..clock import iso
from ..model import HOLDER_KINDS, JSON_COLUMNS, PARENT_KIND
from .agents import (
    canonical_key,
    create_goal,
    execute_tool_idempotent,
    replay_session,
    resume_session,
    start_session,
)
from .explain import explain_task
from .leases import (
    beat,
    beat_one,
    claim_row,
    claim_task,
    extend,
    heartbeat,
    held,
    lost_ancestor,
    next_claim,
    release_and_claim,
    release_task,
)
from .lifecycle import cancel_task, checkpoint, resolve_task, retry_task
from .reads import (
    get_task,
    item_counts,
    list_events,
    list_tasks,
    next_due,
    ping,
    status,
    verify,
)
from .recovery import (
    after_lost_lease,
    expire,
    expire_many,
    expired_detail,
    fence_children,
    recover_to_claim,
    stale_recovery,
    take_over,
)
from .submit import NEW_ITEM, insert_plain, submit_many, submit_task, submitted_detail
from .tokens import hash_token, new_token, same_token
from .transitions import (
    BACKOFF_BASE_MS,
    BACKOFF_CAP_MS,
    attempts_left,
    backoff_ms,
    emit,
    get_row,
    register_worker,
    settle,
    settled,
)
from .views import event_view, lease_view, public

__all__ = [
    "BACKOFF_BASE_MS", "BACKOFF_CAP_MS", "HOLDER_KINDS", "JSON_COLUMNS", "NEW_ITEM",
    "PARENT_KIND", "after_lost_lease", "attempts_left", "backoff_ms", "beat", "beat_one",
    "cancel_task", "canonical_key", "checkpoint", "claim_row", "claim_task",
    "create_goal", "emit", "event_view", "execute_tool_idempotent", "expire",
    "expire_many", "expired_detail", "explain_task", "extend", "fence_children",
    "get_row", "get_task", "hash_token", "heartbeat", "held", "insert_plain", "iso",
    "item_counts", "lease_view", "list_events", "list_tasks", "lost_ancestor", "new_token",
    "next_claim", "next_due", "ping", "public", "recover_to_claim", "register_worker",
    "release_and_claim", "release_task", "replay_session", "resolve_task",
    "resume_session", "retry_task", "same_token", "settle", "settled", "stale_recovery",
    "start_session", "status", "submit_many", "submit_task", "submitted_detail",
    "take_over", "verify",
]
