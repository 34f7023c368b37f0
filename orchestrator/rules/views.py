"""How the engine's rows are shown to callers: the one place that hides token hashes
and decodes JSON columns. Times stay epoch milliseconds (``clock.iso`` is for people)."""

from __future__ import annotations

import json
from typing import Any, cast

from ..model import JSON_COLUMNS, Event, EventRow, Item, ItemRow


def public(row: ItemRow) -> Item:
    """An item as users see it: JSON values decoded, the token hash left out."""
    out: dict[str, Any] = dict(row)
    del out["token_hash"], out["last_event"]
    for col in JSON_COLUMNS:
        if out[col] is not None:
            out[col] = json.loads(out[col])
    out["cancel_requested"] = bool(out["cancel_requested"])
    return cast(Item, out)  # the row's columns less the two above


def lease_view(row: ItemRow) -> dict[str, Any]:
    """A renewed lease: what a heartbeat answers."""
    return {"id": row["id"], "fence": row["fence"], "lease_expires_at": row["lease_expires_at"],
            "cancel_requested": bool(row["cancel_requested"])}


def event_view(row: EventRow) -> Event:
    return {**row, "detail": json.loads(row["detail"])}
