"""The one clock. Every time orch stores or compares is epoch milliseconds from here.

Tests freeze and move it with freezegun, which patches ``time.time``.
"""

import time
from datetime import UTC, datetime


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int | None) -> str:
    """An epoch-ms time as people read it (UTC, milliseconds); "-" for none."""
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")
