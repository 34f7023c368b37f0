"""The web view's pages, rendered on the server from what the operations return.

Each page is a ``Page``: a part that stays (headings, filters, action forms) and a live
part that the page's script fetches again every few seconds (the same URL, asked for
with ``X-Orch-Live: 1``) and swaps in, so the page updates without a reload and there
is one renderer for both. Every value is escaped (``markup.h``); no token is ever
rendered, as no operation result shown here holds one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..model import PARENT_KIND, EventType, Kind, Status
from ..rules.lifecycle import RETRYABLE
from ..validate import KINDS, RESOLUTIONS, STATUSES
from .markup import HTML, h, join
from .parts import (
    EMPTY,
    badge,
    chart,
    full_time,
    item_link,
    json_block,
    json_cell,
    json_text,
    lease_left,
    muted_dash,
    node_link,
    seconds,
    table,
    url,
    when,
)

NAV = (("overview", "/", "Overview"), ("items", "/items", "Items"),
       ("sessions", "/sessions", "Sessions"), ("events", "/events", "Events"))
#: How often each page's live part is fetched again (ms).
REFRESH_MS = 2000


@dataclass(frozen=True, slots=True)
class Ctx:
    """What every page needs besides its data."""

    now: int
    csrf: str
    db: str
    user: str


@dataclass(frozen=True, slots=True)
class Page:
    title: str
    nav: str
    head: HTML
    live: HTML
    refresh_ms: int | None = REFRESH_MS
    status: int = 200


def layout(page: Page, ctx: Ctx) -> HTML:
    nav = join(h('<a href="{}"{}>{}</a>', href, HTML(' class="here"' if key == page.nav
                                                       else ""), label)
               for key, href, label in NAV)
    refresh = h(' data-refresh="{}"', page.refresh_ms) if page.refresh_ms else EMPTY
    return h('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
             '<meta name="viewport" content="width=device-width, initial-scale=1">'
             '<meta name="csrf-token" content="{7}"><title>{0} · orch</title>'
             '<link rel="stylesheet" href="/static/app.css">'
             '<script src="/static/app.js" defer></script></head>'
             '<body><header><a class="brand" href="/">orch</a><nav>{1}</nav>'
             '<span id="live-state" class="live-state" title="live updates"></span></header>'
             '<main>{2}<div id="live"{3}>{4}</div></main>'
             '<footer><span>{5}</span><span>acting as {6}</span></footer></body></html>\n',
             page.title, nav, page.head, refresh, page.live, ctx.db, ctx.user, ctx.csrf)


def error_page(status: int, message: str) -> Page:
    return Page(f"{status}", "", h('<h1>{}</h1><p class="error">{}</p>', status, message),
                EMPTY, refresh_ms=None, status=status)


# --- overview ---------------------------------------------------------------------------


def overview(ov: dict[str, Any], ctx: Ctx) -> Page:
    return Page("Overview", "overview", h("<h1>Overview</h1>"), overview_live(ov, ctx))


def overview_live(ov: dict[str, Any], ctx: Ctx) -> HTML:
    now, counts = ov["now"], ov["counts"]
    leases = [lease for w in ov["workers"] for lease in w["leases"]]
    lapsed = sum(1 for lease in leases if lease["lease_expires_at"] <= now)
    alerts = []
    if counts[Status.DEAD]:
        alerts.append(h('<a class="alert dead" href="{}"><b>{:,}</b> dead <small>out of '
                        'attempts: look, then retry or leave</small></a>',
                        url("/items", status="dead"), counts[Status.DEAD]))
    if counts[Status.UNKNOWN]:
        alerts.append(h('<a class="alert unknown" href="{}"><b>{:,}</b> outcome unknown '
                        '<small>an unsafe holder lost its lease: check, then resolve</small>'
                        '</a>', url("/items", status="unknown"), counts[Status.UNKNOWN]))
    if lapsed:
        alerts.append(h('<span class="alert lapsed"><b>{}</b> lease(s) expired, not yet '
                        'recovered</span>', lapsed))
    if not alerts:
        alerts.append(h('<span class="alert calm">nothing dead, nothing of unknown outcome'
                        '</span>'))
    cards = join(h('<a class="card s-{0}" href="{1}"><span>{0}</span><b>{2:,}</b></a>', s,
                   url("/items", status=s), counts[s]) for s in STATUSES)
    rows = []
    groups = [(h('<a href="{}">{}</a>', url("/items", queue=q), q), {"queue": q}, by_status)
              for q, by_status in ov["queues"].items()]
    groups += [(h('<a class="kind" href="{}">{}s <small>(under their parents)</small></a>',
                  url("/items", kind=k), k.replace("_", " ")), {"kind": k}, by_status)
               for k, by_status in ov["children"].items() if any(by_status.values())]
    for name, where, by_status in groups:
        cells: list[Any] = [name]
        for s in STATUSES:
            n = by_status[s]
            cells.append(h('<a class="n s-{}" href="{}">{:,}</a>', s,
                           url("/items", status=s, **where), n) if n
                         else h('<span class="zero">·</span>'))
        cells.append(h("<b>{:,}</b>", sum(by_status.values())))
        rows.append(cells)
    queues = table(["queue", *STATUSES, "total"], rows, cls="queues",
                   empty="no items yet: orch submit adds one")
    act = ov["activity"]
    charts = join([chart("Claims", "claims", act, "claims", now),
                   chart("Releases", "releases", act, "releases", now),
                   chart("Failures", "failures", act, "failures", now)])
    worker_rows = []
    for w in ov["workers"]:
        for i, lease in enumerate(w["leases"]):
            worker_rows.append([
                h("<b>{}</b>", w["worker_id"]) if i == 0 else EMPTY,
                node_link(lease["kind"], lease["id"]), lease["queue"], lease["fence"],
                lease_left(lease["lease_expires_at"], lease["lease_ttl_ms"], now),
                when(lease["heartbeat_at"], now),
                h('<span class="badge s-cancelled">cancel requested</span>')
                if lease["cancel_requested"] else EMPTY])
    workers = table(["worker", "holds", "queue", "fence", "lease left", "last heartbeat", ""],
                    worker_rows, cls="workers", empty="no live leases")
    return h('<section class="alerts">{}</section><section class="cards">{}</section>'
             '<section><h2>Queues <small>{}</small></h2>{}</section>'
             '<section><h2>Last hour <small>failures: failed releases and lost leases'
             '</small></h2><div class="charts">{}</div></section>'
             '<section><h2>Workers and their leases <small>{} held by {} worker(s)</small>'
             '</h2>{}</section>',
             join(alerts), cards, _counted(ov), queues, charts, len(leases), len(ov["workers"]),
             workers)


def _counted(ov: dict[str, Any]) -> str:
    # Items are counted less often than the rest is read when there are many of them.
    age = ov["now"] - ov.get("counted_at", ov["now"])
    return "counted just now" if age < 1500 else f"counted {seconds(age)} ago"


# --- items ------------------------------------------------------------------------------


def _options(values: tuple[str, ...], chosen: str | None, anything: str) -> HTML:
    opts = [h('<option value="">{}</option>', anything)]
    opts += [h('<option{}>{}</option>', HTML(" selected") if v == chosen else EMPTY, v)
             for v in values]
    return join(opts)


def items(found: list[dict[str, Any]], filters: dict[str, Any], ctx: Ctx) -> Page:
    quick = join(h('<a class="chip{}" href="{}">{}</a>',
                   HTML(" here") if filters.get("status") == s else EMPTY,
                   url("/items", status=s or None), s or "all")
                 for s in ("", "dead", "unknown", "running", "pending", "failed"))
    form = h('<form class="filters" method="get" action="/items">'
             '<label>queue <input name="queue" value="{}" placeholder="any" size="14"></label>'
             '<label>status <select name="status">{}</select></label>'
             '<label>kind <select name="kind">{}</select></label>'
             '<label>limit <input name="limit" value="{}" size="5" inputmode="numeric"></label>'
             '<button>Filter</button></form>',
             filters.get("queue") or "", _options(STATUSES, filters.get("status"), "any"),
             _options(KINDS, filters.get("kind"), "any"), filters.get("limit") or "")
    head = h("<h1>Items</h1><nav class=\"chips\">{}</nav>{}", quick, form)
    return Page("Items", "items", head, items_live(found, filters, ctx))


def items_live(found: list[dict[str, Any]], filters: dict[str, Any], ctx: Ctx) -> HTML:
    rows = [[item_link(i["id"]), i["kind"].replace("_", " "), i["queue"], badge(i["status"]),
             i["priority"], _attempts(i), muted_dash(i["worker_id"]), muted_dash(i["fence"]),
             muted_dash(i["key"]), when(i["updated_at"], ctx.now),
             h('<span class="err">{}</span>', json_text(i["error"], 80)) if i["error"]
             else EMPTY]
            for i in found]
    shown = h('<p class="muted">{} item(s), newest first{}</p>', len(found),
              f" (at most {filters['limit']})" if len(found) == filters["limit"] else "")
    return join([shown, table(["id", "kind", "queue", "status", "prio", "attempts", "worker",
                               "fence", "key", "updated", "error"], rows, cls="items",
                              empty="no items match")])


def _attempts(item: dict[str, Any]) -> str:
    return f"{item['attempts']}/{item['max_attempts'] or '∞'}"


# --- one item ---------------------------------------------------------------------------

DONE = {"cancel": "Cancel recorded", "retry": "Requeued", "resolve": "Resolved"}


def item(it: dict[str, Any], events: list[dict[str, Any]], why: dict[str, Any], ctx: Ctx,
         *, done: str | None = None, error: str | None = None, status: int = 200) -> Page:
    kind = it["kind"].replace("_", " ")
    links = []
    if it["parent_id"] is not None:
        links.append(h('<a href="/items/{0}">parent #{0}</a>', it["parent_id"]))
    if it["kind"] == Kind.SESSION:
        links.append(h('<a href="/sessions/{}">session tree</a>', it["id"]))
    links.append(h('<a href="{}">events only</a>', url("/events", item=it["id"])))
    note = EMPTY
    if error:
        note = h('<p class="error" role="alert">{}</p>', error)
    elif done in DONE:
        note = h('<p class="done" role="status">{} by {}.</p>', DONE[done], ctx.user)
    head = h('<h1>{} {} {}</h1><p class="links">{}</p>{}{}', kind, it["id"],
             badge(it["status"]), join(links, " · "), note, actions(it, ctx))
    return Page(f"{kind} {it['id']}", "items", head, item_live(it, events, why, ctx),
                status=status)


def actions(it: dict[str, Any], ctx: Ctx) -> HTML:
    """The forms for what may be done to the item now. Each asks to confirm (the script's
    confirm(); without the script, a page that asks), and the server acts only on a POST
    that says confirm=yes."""
    iid, st = it["id"], it["status"]
    forms = []
    if st == Status.PENDING or (st == Status.RUNNING and not it["cancel_requested"]):
        what = "cancel it" if st == Status.PENDING else "ask its holder to stop"
        forms.append(_form(iid, "cancel", "Cancel", f"Cancel item {iid}: {what}?", ctx))
    if st in RETRYABLE and it["kind"] not in PARENT_KIND:
        forms.append(_form(iid, "retry", "Requeue",
                           f"Requeue item {iid}: make it pending now, with a fresh "
                           "attempt budget?", ctx))
    if st == Status.UNKNOWN:
        forms.append(_form(iid, "resolve", "Resolve",
                           f"Resolve item {iid} with the outcome chosen? Be sure what its "
                           "holder did first.", ctx,
                           extra=h('<select name="outcome" aria-label="outcome" required>'
                                   '<option value="" selected disabled>outcome…</option>{}'
                                   '</select>',
                                   join(h("<option>{}</option>", r) for r in RESOLUTIONS))))
    if not forms:
        return EMPTY
    return h('<div class="actions">{}</div>', join(forms))


def _form(iid: int, action: str, label: str, question: str, ctx: Ctx, *,
          extra: HTML = EMPTY, confirmed: bool = False) -> HTML:
    return h('<form method="post" action="/items/{0}/{1}" data-confirm="{2}" class="action">'
             '<input type="hidden" name="csrf" value="{3}">'
             '<input type="hidden" name="confirm" value="{4}">{5}'
             '<button class="{1}">{6}</button></form>',
             iid, action, question, ctx.csrf, "yes" if confirmed else "", extra, label)


def confirm(it: dict[str, Any], action: str, outcome: str | None, ctx: Ctx) -> Page:
    """The question a POST without confirm=yes gets (the page's script was off)."""
    extra = h('<input type="hidden" name="outcome" value="{}">', outcome) if outcome \
        else EMPTY
    what = {"cancel": "Cancel", "retry": "Requeue", "resolve": f"Resolve as {outcome}"}[action]
    head = h('<h1>{} item {}?</h1><p>It is {} now ({}). Nothing happens until you confirm.</p>'
             '<div class="actions">{}<a class="button" href="/items/{}">No, go back</a></div>',
             what, it["id"], badge(it["status"]), it["kind"], _form(
                 it["id"], action, f"Yes, {what.lower()}", "", ctx, extra=extra,
                 confirmed=True), it["id"])
    return Page("Confirm", "items", head, EMPTY, refresh_ms=None)


FIELDS = ("id", "kind", "queue", "parent_id", "key", "priority", "status", "attempts",
          "max_attempts", "run_after", "effect", "worker_id", "fence", "lease_expires_at",
          "heartbeat_at", "cancel_requested", "error", "created_at", "updated_at")
TIMES = {"run_after", "lease_expires_at", "heartbeat_at", "created_at", "updated_at"}


def item_live(it: dict[str, Any], events: list[dict[str, Any]], why: dict[str, Any],
              ctx: Ctx) -> HTML:
    rows = []
    for f in FIELDS:
        v = it[f]
        if f in TIMES:
            cell = h("{} {}", full_time(v), when(v, ctx.now)) if v is not None \
                else muted_dash(None)
        elif f == "status":
            cell = badge(v)
        elif f == "parent_id":
            cell = item_link(v)
        elif f == "max_attempts" and v == 0:
            cell = h("0 (no limit)")
        elif isinstance(v, bool):
            cell = h("{}", "yes" if v else "no")
        else:
            cell = muted_dash(v)
        rows.append(h("<tr><th>{}</th><td>{}</td></tr>", f, cell))
    blocks = join(h("<h3>{}</h3>{}", name, json_block(it[name]))
                  for name in ("payload", "checkpoint", "result"))
    return h('<section class="why"><h2>Why it is {}</h2><p>{}</p></section>'
             '<div class="split"><section><h2>Fields</h2><table class="fields">{}</table>'
             '</section><section class="values">{}</section></div>'
             '<section><h2>Events <small>{} in all, oldest first</small></h2>{}</section>',
             it["status"], why["text"], join(rows), blocks, len(events),
             events_table(events, ctx, item_column=False))


def events_table(events: list[dict[str, Any]], ctx: Ctx, *, item_column: bool = True,
                 body_id: str = "") -> HTML:
    head = ["seq", "time", *(["item"] if item_column else []), "type", "worker", "fence",
            "detail"]
    rows = [[e["seq"], full_time(e["at"]), *([item_link(e["item_id"])] if item_column else []),
             h('<span class="ev ev-{0}">{0}</span>', e["type"]), muted_dash(e["worker_id"]),
             muted_dash(e["fence"]), json_cell(e["detail"])] for e in events]
    body = join(h("<tr>{}</tr>", join(h("<td>{}</td>", c) for c in r)) for r in rows)
    return h('<table class="events"><thead><tr>{}</tr></thead><tbody{}>{}</tbody></table>',
             join(h("<th>{}</th>", c) for c in head),
             h(' id="{}"', body_id) if body_id else EMPTY, body)


# --- sessions ---------------------------------------------------------------------------


def sessions(found: list[dict[str, Any]], ctx: Ctx) -> Page:
    return Page("Sessions", "sessions", h("<h1>Sessions <small>newest first</small></h1>"),
                sessions_live(found, ctx))


def sessions_live(found: list[dict[str, Any]], ctx: Ctx) -> HTML:
    rows = [[h('<a href="/sessions/{0}">session {0}</a>', s["id"]), badge(s["status"]),
             muted_dash(s["worker_id"]), muted_dash(s["fence"]), muted_dash(s["key"]),
             lease_left(s["lease_expires_at"], s["lease_ttl_ms"], ctx.now)
             if s["status"] == Status.RUNNING else muted_dash(None),
             json_cell(s["checkpoint"]), when(s["created_at"], ctx.now),
             when(s["updated_at"], ctx.now)] for s in found]
    return table(["session", "status", "holder", "fence", "key", "lease left",
                  "last checkpoint", "started", "updated"], rows, cls="sessions",
                 empty="no sessions: orch session start makes one")


def session(tree: dict[str, Any], ctx: Ctx) -> Page:
    head = h('<h1>Session {0} {1}</h1><p class="links"><a href="/items/{0}">item page</a> · '
             'the tree of its goals and tool executions, then every event behind them</p>',
             tree["id"], badge(tree["status"]))
    return Page(f"session {tree['id']}", "sessions", head, session_live(tree, ctx))


def _nodes(tree: dict[str, Any]) -> list[dict[str, Any]]:
    out = [tree]
    for child in tree.get("goals", []) + tree.get("tool_executions", []):
        out += _nodes(child)
    return out


def _node(n: dict[str, Any], ctx: Ctx) -> HTML:
    kind = n["kind"]
    checkpoints = [e for e in n["events"] if e["type"] == EventType.CHECKPOINT]
    facts = [h('<span class="fact"><i>holder</i> {}</span>', muted_dash(n["worker_id"])),
             h('<span class="fact"><i>fence</i> {}</span>', muted_dash(n["fence"])),
             h('<span class="fact"><i>attempts</i> {}</span>', _attempts(n))]
    if n["status"] == Status.RUNNING:
        facts.append(h('<span class="fact"><i>lease</i> {}</span>',
                       lease_left(n["lease_expires_at"], n["lease_ttl_ms"], ctx.now)))
    if n["key"]:
        facts.append(h('<span class="fact"><i>key</i> <code>{}</code></span>',
                       json_text(n["key"], 48).strip('"')))
    detail = []
    if kind == Kind.TOOL_EXECUTION and isinstance(n["payload"], dict):
        detail.append(h('<div class="line"><i>tool</i> <b>{}</b> <i>input</i> {}</div>',
                        n["payload"].get("tool"), json_cell(n["payload"].get("input"))))
    if n["checkpoint"] is not None:
        at = when(checkpoints[-1]["at"], ctx.now) if checkpoints else EMPTY
        detail.append(h('<div class="line"><i>last checkpoint</i> {} {}</div>', at,
                        json_cell(n["checkpoint"])))
    if n["result"] is not None:
        detail.append(h('<div class="line"><i>result</i> {}</div>', json_cell(n["result"])))
    if n["error"]:
        detail.append(h('<div class="line err"><i>error</i> {}</div>',
                        json_text(n["error"], 200)))
    children = n.get("goals", []) + n.get("tool_executions", [])
    kids = h('<ul>{}</ul>', join(_node(c, ctx) for c in children)) if children else EMPTY
    return h('<li class="node k-{0}"><div class="box"><div class="title">{1} {2}{3}</div>'
             '<div class="facts">{4}</div>{5}</div>{6}</li>', kind, node_link(kind, n["id"]),
             badge(n["status"]), h(' <span class="badge s-cancelled">cancel requested</span>')
             if n["cancel_requested"] else EMPTY, join(facts), join(detail), kids)


def session_live(tree: dict[str, Any], ctx: Ctx) -> HTML:
    nodes = _nodes(tree)
    names = {n["id"]: n["kind"] for n in nodes}
    timeline = sorted((e for n in nodes for e in n["events"]), key=lambda e: e["seq"])
    rows = []
    for e in timeline:
        d = e["detail"]
        change = ""
        if "status" in d and e["type"] != EventType.SUBMITTED:
            outcome = d.get("outcome")
            change = f"{outcome} → {d['status']}" if outcome and outcome != d["status"] \
                else f"→ {d['status']}"
        rows.append([e["seq"], full_time(e["at"]), node_link(names[e["item_id"]], e["item_id"]),
                     h('<span class="ev ev-{0}">{0}</span>', e["type"]),
                     muted_dash(e["worker_id"]), muted_dash(e["fence"]), change,
                     muted_dash(d.get("reason") or d.get("by") or d.get("error"))])
    goals = len(tree.get("goals", []))
    tools = sum(len(g.get("tool_executions", [])) for g in tree.get("goals", []))
    return h('<section><h2>Tree <small>{} goal(s), {} tool execution(s)</small></h2>'
             '<ul class="tree">{}</ul></section>'
             '<section><h2>Replay timeline <small>{} events</small></h2>{}</section>',
             goals, tools, _node(tree, ctx), len(rows),
             table(["seq", "time", "node", "event", "worker", "fence", "change", "why / by"],
                   rows, cls="timeline"))


# --- the event log ----------------------------------------------------------------------


def events(found: list[dict[str, Any]], item_id: int | None, last_seq: int, ctx: Ctx) -> Page:
    scope = h(' of <a href="/items/{0}">item {0}</a>', item_id) if item_id else EMPTY
    head = h('<h1>Events{}</h1><p class="muted">Following the log as <code>orch events '
             '--follow</code> does: new events appear at the top as they are written.</p>',
             scope)
    live = h('<div class="tail" data-since="{}" data-item="{}">{}</div>', last_seq,
             item_id or "", events_table(list(reversed(found)), ctx, body_id="events"))
    # the script appends to the table itself, from the JSON endpoint: no region swap
    return Page("Events", "events", head, live, refresh_ms=None)
