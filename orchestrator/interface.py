"""``Operations``: every public orch method, defined once.

``orchestrator.api.Orchestrator`` runs them against the database file (embedded mode);
``orchestrator.client.Client`` sends them to the daemon. Both subclass this, so they
have the same names, parameters, results and errors by construction. This module
imports nothing of the engine: the CLI and the socket client start without it.
"""

from __future__ import annotations

import abc
from typing import TYPE_CHECKING, Any

from .model import Claim, Event, Item

if TYPE_CHECKING:
    from .lease import Lease


def _given(args: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "self" and v is not None}


class Operations(abc.ABC):
    """Every orch operation. Times are seconds in, epoch milliseconds out."""

    @abc.abstractmethod
    def _call(self, op: str, params: dict[str, Any]) -> Any:
        """Carry out operation ``op`` with raw ``params``."""

    def submit_task(self, payload: Any = None, *, queue: str | None = None,
                    priority: int | None = None, key: str | None = None,
                    max_attempts: int | None = None, delay: float | None = None,
                    kind: str | None = None, parent_id: int | None = None,
                    effect: str | None = None) -> dict[str, Any]:
        """Add a work item; with ``key``, return the existing one (``created: False``)."""
        return self._call("submit_task", _given(locals()))

    def submit_many(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit many items (each a dict of ``submit_task`` parameters) in one transaction."""
        return self._call("submit_many", {"items": items})

    def claim_task(self, worker_id: str, queues: list[str] | str | None = None, *,
                   ttl: float | None = None, kinds: list[str] | str | None = None,
                   item_id: int | None = None, wait: float | None = None) -> Claim | None:
        """Claim the best claimable item (or ``item_id``) for ``worker_id``.

        Returns the claim (the item plus ``token``, ``fence``, ``attempt``) or None.
        ``wait`` seconds: block until something is claimable or the time is up.
        """
        return self._call("claim_task", _given(locals()))

    def heartbeat(self, item_id: int | None = None, token: str | None = None, *,
                  ttl: float | None = None,
                  leases: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Extend one lease (``item_id`` and ``token``), or several in one transaction.

        One lease: returns ``{id, fence, lease_expires_at, cancel_requested}``, or
        raises (``LeaseLost`` for a stale or expired token). Several,
        ``leases=[{"item_id": …, "token": …}, …]`` (at most 1000, each item once):
        returns ``{"leases": [...]}`` in the order given, each entry either as above or
        ``{id, error: {code, reason, message}}``; a refused lease changes nothing and
        does not undo the others. ``ttl``: each lease ends that many seconds from now
        (default: the ttl of its claim).
        """
        return self._call("heartbeat", _given(locals()))

    def release_task(self, item_id: int, token: str, outcome: str, *, result: Any = None,
                     error: str | None = None, retry_in: float | None = None,
                     no_retry: bool | None = None) -> Item:
        """End a claim: ``succeeded``, ``failed`` (retried with backoff), ``cancelled``,
        or ``requeue``."""
        return self._call("release_task", _given(locals()))

    def release_and_claim(self, item_id: int, token: str, outcome: str, *, result: Any = None,
                          error: str | None = None, retry_in: float | None = None,
                          no_retry: bool | None = None, worker_id: str | None = None,
                          queues: list[str] | str | None = None,
                          kinds: list[str] | str | None = None, ttl: float | None = None,
                          wait: float | None = None) -> dict[str, Any]:
        """``release_task``, then claim the next item, in one transaction (one commit).

        Returns ``{"released": item, "next": claim or None}``. The next claim is like
        the released one (its worker, queue, kind and lease length) unless given.
        ``wait`` applies to the claim only: the release is committed first.
        """
        return self._call("release_and_claim", _given(locals()))

    def stale_recovery(self, dry_run: bool | None = None) -> dict[str, Any]:
        """Fence out every expired lease and move its item on; safe to run any time."""
        return self._call("stale_recovery", _given(locals()))

    def cancel_task(self, item_id: int, *, by: str | None = None) -> Item:
        """Cancel a pending item, or ask the holder of a running one to stop. ``by``:
        who asked, recorded in the event."""
        return self._call("cancel_task", _given(locals()))

    def checkpoint(self, item_id: int, token: str, data: Any) -> dict[str, Any]:
        """Store the holder's progress; the next holder gets it with its claim."""
        return self._call("checkpoint", {"item_id": item_id, "token": token, "data": data})

    def resolve_task(self, item_id: int, outcome: str, *, by: str | None = None) -> Item:
        """Settle an ``unknown`` item: succeeded, failed, retry or cancelled. ``by``: who
        settled it, recorded in the event."""
        return self._call("resolve_task", _given(locals()))

    def retry_task(self, item_id: int, *, by: str | None = None) -> Item:
        """Make a dead, failed or cancelled task or session pending again, claimable at
        once, with as many more attempts as it was submitted with. ``by``: who asked."""
        return self._call("retry_task", _given(locals()))

    def get_task(self, item_id: int) -> Item:
        """One item."""
        return self._call("get_task", {"item_id": item_id})

    def list_tasks(self, status: str | None = None, queue: str | None = None,
                   kind: str | None = None, limit: int | None = None) -> list[Item]:
        """Items, newest first (at most ``limit``, ``defaults.LIST_LIMIT`` unless given;
        0 for all)."""
        return self._call("list_tasks", _given(locals()))

    def list_events(self, item_id: int | None = None, since: int | None = None,
                    limit: int | None = None) -> list[Event]:
        """Events after sequence number ``since``, oldest first."""
        return self._call("list_events", _given(locals()))

    def verify(self, item_id: int, token: str) -> dict[str, Any]:
        """Whether ``token`` is the item's live claim: ``{valid, fence, status}``."""
        return self._call("verify", {"item_id": item_id, "token": token})

    def status(self) -> dict[str, Any]:
        """Counts by status, live workers and what they hold, unrecovered expired leases."""
        return self._call("status", {})

    def start_session(self, worker_id: str, *, key: str | None = None, payload: Any = None,
                      ttl: float | None = None) -> dict[str, Any]:
        """Create a session and claim it for ``worker_id``; an existing ``key`` resumes it."""
        return self._call("start_session", _given(locals()))

    def resume_session(self, session_id: int, worker_id: str, *,
                       ttl: float | None = None) -> dict[str, Any]:
        """Claim a session again once its old lease is gone; returns its last checkpoint."""
        return self._call("resume_session", _given(locals()))

    def create_goal(self, session_id: int, token: str, *, payload: Any = None,
                    key: str | None = None, ttl: float | None = None) -> dict[str, Any]:
        """A goal under the session, claimed for the session's holder (the session's
        token is required)."""
        return self._call("create_goal", _given(locals()))

    def execute_tool_idempotent(self, goal_id: int, token: str, tool: str, input: Any = None,
                                *, key: str | None = None, effect: str | None = None,
                                ttl: float | None = None,
                                wait: float | None = None) -> dict[str, Any]:
        """The one execution of ``tool`` for ``key`` (default: derived from the input)
        under the goal: created and claimed (with ``token``) the first time, else as it
        stands (``created: False``). ``wait``: wait for a running one to finish."""
        return self._call("execute_tool_idempotent", _given(locals()))

    def replay_session(self, session_id: int) -> dict[str, Any]:
        """The session, its goals and their tool executions, with their events."""
        return self._call("replay_session", {"session_id": session_id})

    def overview(self, since: int | None = None,
                 counts: bool | None = None) -> dict[str, Any]:
        """Items by queue and status, each worker's leases, and the last hour's claims,
        releases and failures per minute (only events after ``since``, a previous
        answer's ``last_seq``, are counted). ``counts=False`` skips counting the items
        (a pass over all of them): ``counts``, ``queues`` and ``children`` are None."""
        return self._call("overview", _given(locals()))

    def explain_task(self, item_id: int) -> dict[str, Any]:
        """Why the item is where it is, in a sentence or two."""
        return self._call("explain_task", {"item_id": item_id})

    def hold(self, claim: Claim, **kw: Any) -> Lease:
        """Hold ``claim`` in a ``with`` block: heartbeats, release on exit (see Lease)."""
        from .lease import Lease

        return Lease(self, claim, **kw)

    def clone(self) -> Operations:
        """Another handle on the same backend, for use from another thread."""
        raise TypeError(f"{type(self).__name__} cannot be cloned")

    def ping(self) -> dict[str, Any]:
        """Liveness, and which database is served."""
        return self._call("ping", {})

    def close(self) -> None:  # noqa: B027 -- a backend without a connection has none to release
        """Release the connection."""
