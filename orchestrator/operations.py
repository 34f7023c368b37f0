"""Every operation by name: the one table the API, the CLI and the daemon dispatch on."""

from . import protocol, rules
from .rules import agents, explain

#: operation name -> (function, writes?). The protocol's method names are these in
#: camelCase; the Python API's methods are these names.
OPERATIONS = {
    "start_session": (agents.start_session, True),
    "resume_session": (agents.resume_session, True),
    "create_goal": (agents.create_goal, True),
    "execute_tool_idempotent": (agents.execute_tool_idempotent, True),
    "replay_session": (agents.replay_session, False),
    "explain_task": (explain.explain_task, False),
    "submit_task": (rules.submit_task, True),
    "submit_many": (rules.submit_many, True),
    "claim_task": (rules.claim_task, True),
    "heartbeat": (rules.heartbeat, True),
    "release_task": (rules.release_task, True),
    "release_and_claim": (rules.release_and_claim, True),
    "stale_recovery": (rules.stale_recovery, True),
    "cancel_task": (rules.cancel_task, True),
    "checkpoint": (rules.checkpoint, True),
    "resolve_task": (rules.resolve_task, True),
    "get_task": (rules.get_task, False),
    "list_tasks": (rules.list_tasks, False),
    "list_events": (rules.list_events, False),
    "verify": (rules.verify, False),
    "status": (rules.status, False),
    "ping": (rules.ping, False),
}

# Every operation is served on the wire, under the name protocol.METHODS gives it.
assert set(protocol.METHODS.values()) == set(OPERATIONS), "protocol.METHODS and OPERATIONS differ"
