"""Who may ask the web view, and the headers every answer carries.

Every request needs the access token: in the query string once (it is swapped for a
cookie, and the browser sent on to the same URL without it, so the token leaves the
address bar and the history), then the cookie, or ``Authorization: Bearer TOKEN`` for
scripts (which may also give ``?token=`` to a JSON endpoint or ``/metrics``). The Host
header must name this view (an IP address, ``localhost`` or the name given to
``--http``, with its port), so a page whose DNS name was rebound to 127.0.0.1 is
refused. A request that changes something is a POST carrying the CSRF token of the
page it came from, and, when the browser says where it came from (``Origin``,
``Sec-Fetch-Site``), from this view itself.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

#: Headers on every answer: no framing, no script but our own file, no sniffing, no
#: referrer (a URL may hold a filter or, once, the token), nothing cached.
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

NEEDS_TOKEN = ("401 Unauthorized: this is orch's web view; open the URL that `orch web` "
               "prints (it carries the access token)\n")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """The secrets of one daemon's view (made at start, never written but the token,
    to the 0600 access file) and the checks made with them."""

    def __init__(self, host: str, port: int):
        self.token = secrets.token_urlsafe(32)
        secret = secrets.token_bytes(32)
        self.cookie_name = f"orch_web_{port}"  # cookies are per host, not per port
        self.cookie_value = _derive(secret, "cookie")
        #: Embedded in each page's forms; not the token, and tells nothing of it.
        self.csrf = _derive(secret, "csrf")
        self.host, self.port = host.lower(), port

    def host_ok(self, header: str | None) -> bool:
        """Does the Host header name this view? An IP address (which no one can rebind),
        ``localhost`` or the name given to ``--http``; and this view's port."""
        if not header:
            return False
        header = header.lower()
        if header.startswith("["):
            name, _, rest = header[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        else:
            name, sep, port = header.rpartition(":")
            if not sep:
                name, port = header, ""
        if (port or "80") != str(self.port):
            return False
        if name in ("localhost", self.host.strip("[]")):
            return True
        try:
            ipaddress.ip_address(name)
            return True
        except ValueError:
            return False

    def authenticated(self, request: web.Request) -> bool:
        cookie = request.cookies.get(self.cookie_name)
        if cookie is not None and hmac.compare_digest(cookie, self.cookie_value):
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.is_token(given.strip())

    def is_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def csrf_ok(self, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given.encode(),
                                                              self.csrf.encode())

    @staticmethod
    def same_origin(request: web.Request) -> bool:
        """The browser's word on where a POST came from, when it gives one.

        ``Sec-Fetch-Site`` is set by the browser alone (no page can forge it). Under our
        ``Referrer-Policy: no-referrer`` a browser sends ``Origin: null`` with its own
        form posts, so "null" passes only where ``Sec-Fetch-Site`` vouches for it.
        """
        site = request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            return False
        origin = request.headers.get("Origin")
        if origin is None or origin == f"http://{request.host}":
            return True
        return origin == "null" and site == "same-origin"

    def log_in(self, request: web.Request) -> web.StreamResponse:
        """The token came in the query string: set the cookie, and send the browser to
        the same URL without the token."""
        url = request.rel_url
        rest = [(k, v) for k, v in url.query.items() if k != "token"]
        response = web.HTTPSeeOther(str(url.with_query(rest)))
        response.set_cookie(self.cookie_name, self.cookie_value, path="/", httponly=True,
                            samesite="Strict")
        return response


def for_programs(path: str) -> bool:
    """JSON and metrics: a script or a scraper given ``?token=`` is answered at once (it
    keeps no cookie to come back with)."""
    return path.startswith("/api/") or path == "/metrics"


def _derive(secret: bytes, purpose: str) -> str:
    return hmac.new(secret, purpose.encode(), hashlib.sha256).hexdigest()


def middleware(guard: Guard) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not guard.host_ok(request.headers.get("Host")):
            return web.Response(status=403, text="403 Forbidden: the Host header does not "
                                "name this web view (use the URL that orch web prints)\n")
        given = request.query.get("token") if request.method in ("GET", "HEAD") else None
        if given is not None and guard.is_token(given):
            if not for_programs(request.path):
                return guard.log_in(request)
        elif given is not None or not guard.authenticated(request):
            return web.Response(status=401, text=NEEDS_TOKEN,
                                headers={"WWW-Authenticate": 'Bearer realm="orch"'})
        if request.method not in ("GET", "HEAD"):
            if not guard.same_origin(request):
                return web.Response(status=403, text="403 Forbidden: a request from another "
                                    "site\n")
            form = await request.post()
            if not guard.csrf_ok(form.get("csrf")):
                return web.Response(status=403, text="403 Forbidden: the form's CSRF token "
                                    "is missing or wrong (reload the page)\n")
            request["form"] = form
        return await handler(request)
    return check


async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.update(HEADERS)
    response.headers["Server"] = "orch"  # not aiohttp's and Python's versions
