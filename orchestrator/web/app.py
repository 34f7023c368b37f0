"""The web view's routes, and its server inside the daemon's event loop.

Every page and JSON endpoint is one or a few operations run through ``Daemon.call``,
as a socket request would be: reads on the daemon's reader threads, the actions
(cancel, retry, resolve) through its group commit, so events, fencing and the wake-ups
of parked claims apply to them as to any request. Nothing here touches a database.
"""

from __future__ import annotations

import asyncio
import functools
import getpass
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web
from loguru import logger

from .. import clock, defaults, paths, validate
from ..errors import InvalidInput, OrchError, http_status
from . import access, guard, pages
from .pages import Ctx, Page

if TYPE_CHECKING:
    from ..daemon.server import Daemon

#: How long the daemon's stop waits for the view's requests in flight: a browser that
#: stalls must not hold it up.
SHUTDOWN_TIMEOUT_S = 3.0
MAX_POST_BYTES = 64 * 1024
EVENTS_PAGE = 100  # events the events page opens with
#: An overview at most this old is handed out again: however many tabs are open on it
#: (and scripts polling its JSON), it is read at most once a second.
OVERVIEW_FRESH_S = 1.0
#: Counting the items is a pass over all of them: done again no sooner than this many
#: times the last count took, so an open overview keeps a reader thread busy with it
#: for at most 1/50 of the time, however many items there are (at 10,000 items a count
#: takes a few ms: counted every second).
COUNT_SPACING = 50
EVENTS_POLL_LIMIT = 1000  # events one poll of the JSON endpoint may return
STATIC = {"app.css": "text/css", "app.js": "text/javascript"}
ACTIONS = {"cancel": "cancel_task", "retry": "retry_task", "resolve": "resolve_task"}
VIEW: web.AppKey[WebView] = web.AppKey("view")


class WebView:
    """``orch daemon --http HOST:PORT``: bound when the daemon starts (so a port in use
    stops it at once), serving once the daemon is ready, gone when it stops."""

    def __init__(self, daemon: Daemon, host: str, port: int):
        from ..daemon.server import StartupError

        self.daemon = daemon
        self.host = host
        try:
            self.sock = bind(host, port)
        except OSError as exc:
            raise StartupError(f"cannot serve the web view on {host}:{port}: "
                               f"{exc.strerror or exc}") from None
        self.port: int = self.sock.getsockname()[1]
        self.guard = guard.Guard(host, self.port)
        self.access_file = paths.web_access_file(daemon.sock)
        self.user = acting_user()
        self.shown_db = paths.shown(daemon.db)
        self.activity = Activity()
        self.fresh: tuple[float, dict[str, Any]] | None = None  # (monotonic, overview)
        self.counted: dict[str, Any] = {}  # the last count: counts, queues, children, at
        self.count_due = 0.0  # monotonic
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    async def start(self) -> None:
        self.runner = web.AppRunner(build(self), access_log=None,
                                    shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        await self.runner.setup()
        await web.SockSite(self.runner, self.sock).start()
        access.write(self.access_file, self.url, self.guard.token)
        if not guard.is_loopback(self.host):
            logger.warning("the web view listens on {} ({}), not only on loopback: anyone "
                           "who can reach this machine can try it (each request still needs "
                           "the access token)", self.host, self.url)
        logger.bind(url=self.url).info("web view on {} (orch web prints its URL with the "
                                       "access token)", self.url)

    async def stop(self) -> None:
        access.remove(self.access_file)
        if self.runner is not None:
            await self.runner.cleanup()
        self.sock.close()

    def ctx(self) -> Ctx:
        # A PostgreSQL URL is shown with its password masked.
        return Ctx(clock.now_ms(), self.guard.csrf, self.shown_db, self.user)

    async def run(self, op: str, **params: Any) -> Any:
        """One operation, as the socket would run it: checked, then on a reader thread
        or through the group commit."""
        ok, value = await self.daemon.call(op, validate.check(op, params))
        if not ok:
            raise value
        return value

    async def overview(self) -> dict[str, Any]:
        """The overview, its hour of activity kept here and brought up to date with only
        the events written since the last look."""
        async with self.activity.lock:
            if self.fresh is not None and time.monotonic() - self.fresh[0] < OVERVIEW_FRESH_S:
                return self.fresh[1]
            counts = time.monotonic() >= self.count_due
            started = time.monotonic()
            ov = await self.run("overview", since=self.activity.last_seq, counts=counts)
            if ov["last_seq"] < self.activity.last_seq:  # not the log counted so far
                self.activity.clear()
                ov = await self.run("overview", since=0, counts=counts)
            ov["activity"] = self.activity.add(ov["activity"], ov["last_seq"])
            if counts:
                took = time.monotonic() - started
                self.count_due = time.monotonic() + max(OVERVIEW_FRESH_S, took * COUNT_SPACING)
                self.counted = {k: ov[k] for k in ("counts", "queues", "children")}
                self.counted["counted_at"] = ov["now"]
            ov.update(self.counted)
            self.fresh = (time.monotonic(), ov)
            return ov


class Activity:
    """Claims, releases and failures per minute of the last hour, as counted so far."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.clear()

    def clear(self) -> None:
        self.last_seq = 0
        self.slots: dict[int, dict[str, int]] = {}

    def add(self, new: dict[str, Any], last_seq: int) -> dict[str, Any]:
        for b in new["buckets"]:
            slot = self.slots.setdefault(b["at"], {"at": b["at"], "claims": 0, "releases": 0,
                                                   "failures": 0})
            for k in ("claims", "releases", "failures"):
                slot[k] += b[k]
        for at in [at for at in self.slots if at < new["start"]]:
            del self.slots[at]
        self.last_seq = last_seq
        return {**new, "since": 0,
                "buckets": [dict(self.slots[at]) for at in sorted(self.slots)]}


def bind(host: str, port: int) -> socket.socket:
    family, type_, proto, _, addr = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def acting_user() -> str:
    """Who the view's actions are recorded as: ``web:`` and the daemon owner's name (only
    its owner can read the token)."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):
        name = ""
    name = "".join(ch for ch in name if ch.isprintable())[:100] or f"uid{os.getuid()}"
    return f"web:{name}"


# --- handlers ---------------------------------------------------------------------------

PageFn = Callable[[web.Request, WebView, Ctx], Awaitable[Page]]
ApiFn = Callable[[web.Request, WebView], Awaitable[Any]]


def page(fn: PageFn) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A page handler: its ``Page``, whole or its live part only (``X-Orch-Live: 1``);
    an error as a page with the error's HTTP status."""
    @functools.wraps(fn)
    async def handler(request: web.Request) -> web.Response:
        view = request.app[VIEW]
        ctx = view.ctx()
        try:
            p = await fn(request, view, ctx)
        except web.HTTPException:  # a redirect, say: aiohttp answers it
            raise
        except OrchError as exc:
            p = pages.error_page(http_status(exc), str(exc))
        except Exception:  # noqa: BLE001 -- one page's bug must not reach the daemon
            logger.exception("web view: {} failed", request.path)
            p = pages.error_page(500, "internal error: the daemon's log has the details")
        live = request.headers.get("X-Orch-Live") == "1"
        body = p.live if live else pages.layout(p, ctx)
        return web.Response(text=body, content_type="text/html", status=p.status)
    return handler


def api(fn: ApiFn) -> Callable[[web.Request], Awaitable[web.Response]]:
    """A JSON endpoint: the same data its page shows; errors as ``{"error": …}``."""
    @functools.wraps(fn)
    async def handler(request: web.Request) -> web.Response:
        try:
            return _json(await fn(request, request.app[VIEW]))
        except OrchError as exc:
            return _json({"error": {"reason": exc.reason, "message": str(exc)}},
                         http_status(exc))
        except Exception:  # noqa: BLE001 -- as for pages
            logger.exception("web view: {} failed", request.path)
            return _json({"error": {"reason": "error", "message": "internal error"}}, 500)
    return handler


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(value, ensure_ascii=False), status=status,
                        content_type="application/json")


def _int(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(f"{name}: not an integer: {raw[:32]!r}",
                           data={"field": name}) from None


def _item_id(request: web.Request) -> int:
    return int(request.match_info["id"])


def _filters(request: web.Request) -> dict[str, Any]:
    q = request.query
    return {"status": q.get("status") or None, "queue": q.get("queue") or None,
            "kind": q.get("kind") or None,
            "limit": _int(request, "limit", defaults.LIST_LIMIT)}


async def _item_data(view: WebView, iid: int) -> tuple[Any, Any, Any]:
    it = await view.run("get_task", item_id=iid)
    events = await view.run("list_events", item_id=iid, limit=0)
    why = await view.run("explain_task", item_id=iid)
    return it, events, why


@page
async def overview_page(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    return pages.overview(await view.overview(), ctx)


@page
async def items_page(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    filters = _filters(request)
    return pages.items(await view.run("list_tasks", **filters), filters, ctx)


@page
async def item_page(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    done = request.query.get("done")
    return pages.item(*await _item_data(view, _item_id(request)), ctx, done=done)


@page
async def act(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    """Cancel, retry or resolve, once confirmed; then back to the item (a GET, so a
    reload does not post again)."""
    iid, action = _item_id(request), request.match_info["action"]
    form = request["form"]
    outcome = form.get("outcome") if action == "resolve" else None
    if form.get("confirm") != "yes":
        return pages.confirm(await view.run("get_task", item_id=iid), action,
                             outcome if isinstance(outcome, str) else None, ctx)
    params: dict[str, Any] = {"item_id": iid, "by": view.user}
    if action == "resolve":
        params["outcome"] = outcome
    try:
        await view.run(ACTIONS[action], **params)
    except OrchError as exc:
        return pages.item(*await _item_data(view, iid), ctx, error=str(exc),
                          status=http_status(exc))
    raise web.HTTPSeeOther(f"/items/{iid}?done={action}")


@page
async def sessions_page(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    found = await view.run("list_tasks", kind="session", status=request.query.get("status")
                           or None, limit=_int(request, "limit", defaults.LIST_LIMIT))
    return pages.sessions(found, ctx)


@page
async def session_page(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    return pages.session(await view.run("replay_session", session_id=_item_id(request)), ctx)


@page
async def events_page(request: web.Request, view: WebView, ctx: Ctx) -> Page:
    iid = _int(request, "item")
    if iid is None:
        head = (await view.overview())["last_seq"]
        found = await view.run("list_events", since=max(0, head - EVENTS_PAGE),
                               limit=EVENTS_PAGE)
    else:
        found = (await view.run("list_events", item_id=iid, limit=0))[-EVENTS_PAGE:]
        head = found[-1]["seq"] if found else 0
    return pages.events(found, iid, max([head, *(e["seq"] for e in found)]), ctx)


@api
async def overview_api(request: web.Request, view: WebView) -> Any:
    return await view.overview()


@api
async def items_api(request: web.Request, view: WebView) -> Any:
    return await view.run("list_tasks", **_filters(request))


@api
async def item_api(request: web.Request, view: WebView) -> Any:
    it, events, why = await _item_data(view, _item_id(request))
    return {"item": it, "events": events, "why": why}


@api
async def sessions_api(request: web.Request, view: WebView) -> Any:
    return await view.run("list_tasks", kind="session", status=request.query.get("status")
                          or None, limit=_int(request, "limit", defaults.LIST_LIMIT))


@api
async def session_api(request: web.Request, view: WebView) -> Any:
    return await view.run("replay_session", session_id=_item_id(request))


@api
async def events_api(request: web.Request, view: WebView) -> Any:
    limit = min(_int(request, "limit", EVENTS_POLL_LIMIT) or EVENTS_POLL_LIMIT,
                EVENTS_POLL_LIMIT)
    return await view.run("list_events", item_id=_int(request, "item"),
                          since=_int(request, "since", 0), limit=limit)


async def metrics(request: web.Request) -> web.Response:
    """The daemon's metrics in the Prometheus text format. A scrape counts the items on
    a read connection: on a reader thread, as the pages' reads."""
    daemon = request.app[VIEW].daemon
    body, content_type = await asyncio.get_running_loop().run_in_executor(
        daemon.pool, daemon.metrics.render)
    return web.Response(body=body, headers={"Content-Type": content_type})


def static_files() -> dict[str, bytes]:
    here = resources.files(__package__) / "static"
    return {name: (here / name).read_bytes() for name in STATIC}


def build(view: WebView) -> web.Application:
    app = web.Application(middlewares=[guard.middleware(view.guard)],
                          client_max_size=MAX_POST_BYTES)
    app[VIEW] = view
    app.on_response_prepare.append(guard.add_headers)
    files = static_files()

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in files:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], content_type=STATIC[name])

    add = app.router.add_get
    add("/", overview_page)
    add("/items", items_page)
    add(r"/items/{id:\d{1,19}}", item_page)
    app.router.add_post(r"/items/{id:\d{1,19}}/{action:cancel|retry|resolve}", act)
    add("/sessions", sessions_page)
    add(r"/sessions/{id:\d{1,19}}", session_page)
    add("/events", events_page)
    add("/api/overview", overview_api)
    add("/api/items", items_api)
    add(r"/api/items/{id:\d{1,19}}", item_api)
    add("/api/sessions", sessions_api)
    add(r"/api/sessions/{id:\d{1,19}}", session_api)
    add("/api/events", events_api)
    add("/static/{name}", static)
    add("/metrics", metrics)
    return app
