"""The one clock. Every time orch stores or compares is epoch milliseconds from here.

Tests freeze and move it with freezegun, which patches ``time.time``.
"""

import time


def now_ms() -> int:
    return int(time.time() * 1000)
