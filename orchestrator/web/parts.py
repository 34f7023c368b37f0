"""The small pieces pages are made of: status badges, times, JSON values, links, charts.

Every value goes through ``markup.h``, which escapes it; nothing here builds HTML by
adding strings to values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import Any
from urllib.parse import urlencode

from ..clock import iso
from .markup import HTML, h, join

#: What a cell shows for no value.
DASH = HTML('<span class="muted">&ndash;</span>')
EMPTY = HTML("")

#: Longest JSON text shown inline in a table cell, and in a block on an item's page.
CELL_CHARS = 120
BLOCK_CHARS = 64 * 1024


def badge(status: str) -> HTML:
    return h('<span class="badge s-{0}">{0}</span>', status)


def seconds(ms: int) -> str:
    """A duration as people read it: 850 ms, 12 s, 4 min 10 s, 3 h 5 min."""
    ms = abs(ms)
    if ms < 1000:
        return f"{ms} ms"
    s = ms // 1000
    if s < 60:
        return f"{ms / 1000:.1f}".removesuffix(".0") + " s"
    if s < 3600:
        return f"{s // 60} min" + (f" {s % 60} s" if s % 60 else "")
    if s < 86400:
        return f"{s // 3600} h" + (f" {s % 3600 // 60} min" if s % 3600 // 60 else "")
    return f"{s // 86400} d" + (f" {s % 86400 // 3600} h" if s % 86400 // 3600 else "")


def when(ms: int | None, now: int) -> HTML:
    """A time, relative to now, with the exact UTC time on hover."""
    if ms is None:
        return DASH
    rel = f"in {seconds(ms - now)}" if ms > now else f"{seconds(now - ms)} ago"
    return h('<time datetime="{0}" title="{0}">{1}</time>', iso(ms), rel)


def clock_time(ms: int) -> str:
    """Local wall-clock time of day (the view runs on the machine it is looked at from)."""
    return time.strftime("%H:%M", time.localtime(ms / 1000))


def full_time(ms: int) -> HTML:
    local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000))
    return h('<time datetime="{0}" title="{0}">{1}.{2:03d}</time>', iso(ms), local, ms % 1000)


def lease_left(expires: int | None, ttl: int | None, now: int) -> HTML:
    """Time left on a lease, with a bar of the share of its ttl that is left."""
    if expires is None:
        return DASH
    left = expires - now
    if left <= 0:
        return h('<span class="lease expired" title="{}">expired {} ago, not yet '
                 'recovered</span>', iso(expires), seconds(-left))
    share = min(1.0, left / ttl) if ttl else 1.0
    level = "low" if share < 0.25 else "mid" if share < 0.5 else "ok"
    return h('<span class="lease {0}" title="{1}"><meter min="0" max="100" value="{2}">'
             '</meter> {3}</span>', level, iso(expires), round(share * 100), seconds(left))


def json_text(value: Any, limit: int = CELL_CHARS) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def json_cell(value: Any) -> HTML:
    if value is None:
        return DASH
    return h('<code class="json">{}</code>', json_text(value))


def json_block(value: Any) -> HTML:
    if value is None:
        return DASH
    text = json.dumps(value, ensure_ascii=False, indent=2)
    more = ""
    if len(text) > BLOCK_CHARS:
        more = f"… ({len(text) - BLOCK_CHARS:,} more characters: orch show --json has all)"
        text = text[:BLOCK_CHARS]
    return h('<pre class="json">{}{}</pre>', text, more)


def item_link(item_id: int | None, text: Any = None) -> HTML:
    if item_id is None:
        return DASH
    return h('<a href="/items/{0}">{1}</a>', item_id, f"#{item_id}" if text is None else text)


def node_link(kind: str, item_id: int) -> HTML:
    return item_link(item_id, f"{kind.replace('_', ' ')} {item_id}")


def url(path: str, **query: Any) -> str:
    given = {k: v for k, v in query.items() if v not in (None, "")}
    return path + ("?" + urlencode(given) if given else "")


def muted_dash(value: Any) -> HTML:
    return DASH if value in (None, "") else h("{}", value)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], *, cls: str = "",
          empty: str = "nothing here") -> HTML:
    body = [h("<tr>{}</tr>", join(h("<td>{}</td>", c) for c in row)) for row in rows]
    if not body:
        body = [h('<tr class="empty"><td colspan="{}">{}</td></tr>', len(head), empty)]
    return h('<table class="{}"><thead><tr>{}</tr></thead><tbody>{}</tbody></table>', cls,
             join(h("<th>{}</th>", c) for c in head), join(body))


# --- charts: inline SVG, drawn here (no script, no inline style) -------------------------

CHART_H = 56
BAR_W = 6


def chart(title: str, cls: str, activity: dict[str, Any], key: str, now: int) -> HTML:
    """One series of the last hour, a bar per minute, the current minute last."""
    start, step = activity["start"], activity["bucket_ms"]
    n = max(1, (now - start) // step + 1)
    counts = [0] * n
    for b in activity["buckets"]:
        i = (b["at"] - start) // step
        if 0 <= i < n:
            counts[i] += b[key]
    top = max(counts) or 1
    bars = []
    for i, c in enumerate(counts):
        if c:
            height = max(1, round(c / top * CHART_H))
            bars.append(h('<rect x="{}" y="{}" width="{}" height="{}"><title>{} · {} {}'
                          '</title></rect>', i * BAR_W, CHART_H - height, BAR_W - 1, height,
                          clock_time(start + i * step), c, title.lower()))
    width = n * BAR_W
    return h('<figure class="chart {0}"><figcaption><span>{1}</span> <b>{2:,}</b> '
             '<small>last hour · peak {3:,}/min</small></figcaption>'
             '<svg viewBox="0 0 {4} {5}" preserveAspectRatio="none" role="img" '
             'aria-label="{1} per minute, last hour">{6}'
             '<line x1="0" y1="{5}" x2="{4}" y2="{5}"></line></svg>'
             '<div class="axis"><span>{7}</span><span>now</span></div></figure>',
             cls, title, sum(counts), max(counts), width, CHART_H, join(bars),
             clock_time(start))
