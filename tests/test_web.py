"""The web view over real HTTP against a real daemon: every page and JSON endpoint
answers with the operations' data, and nothing answers without the access token, from a
wrong Host, or to a cross-site POST; database values are escaped, and no token (the
view's or a lease's) is ever in an answer.
"""

from __future__ import annotations

import getpass
import re
import socket
import subprocess
import time

import pytest
from conftest import WebClient, file_mode, one_error_line, orch_process, snapshot

from orchestrator import paths
from orchestrator.web.app import OVERVIEW_FRESH_S

XSS = "<script>alert(1)</script>"
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def orch(web: WebClient, *args: str, **kw) -> subprocess.CompletedProcess:
    return orch_process("--socket", str(web.daemon.sock), *args, db=web.daemon.db, **kw)


def user() -> str:
    return f"web:{getpass.getuser()}"


@pytest.fixture
def scene(web: WebClient) -> dict:
    return make_scene(web)


def make_scene(web: WebClient) -> dict:
    """One of everything, values holding markup where a value can, every token kept."""
    with web.daemon.client() as c:
        held = c.submit_task({"note": XSS}, queue="alpha", key=f'k"><b>{XSS}')
        claim = c.claim_task("w<i>1</i>", "alpha", ttl=600)
        c.checkpoint(held["id"], claim["token"], {"half": XSS})
        dead = c.submit_task({"n": 1}, queue="alpha", max_attempts=1)
        got = c.claim_task("w2", "alpha", item_id=dead["id"])
        c.release_task(dead["id"], got["token"], "failed", error=f"boom {XSS}")
        unknown = c.submit_task({"charge": 5}, queue="pay", effect="unsafe")
        lost = c.claim_task("w3", "pay", ttl=0.05)
        pending = c.submit_task({"wait": True}, queue="beta")
        s = c.start_session("agent<1>", payload={"task": XSS}, ttl=600)
        c.checkpoint(s["id"], s["token"], {"ctx": XSS})
        g = c.create_goal(s["id"], s["token"], payload={"goal": XSS}, ttl=600)
        e = c.execute_tool_idempotent(g["id"], g["token"], "search", {"q": XSS}, ttl=600)
        time.sleep(0.1)
        c.stale_recovery()
        assert c.get_task(unknown["id"])["status"] == "unknown"
    tokens = [claim["token"], got["token"], lost["token"], s["token"], g["token"], e["token"]]
    return {"held": held["id"], "dead": dead["id"], "unknown": unknown["id"],
            "pending": pending["id"], "session": s["id"], "goal": g["id"], "tool": e["id"],
            "tokens": tokens}


def pages_of(scene: dict) -> list[str]:
    ids = [scene[k] for k in ("held", "dead", "unknown", "pending", "session", "goal", "tool")]
    return ["/", "/items", "/items?status=dead", "/items?queue=alpha&kind=task&limit=5",
            *(f"/items/{i}" for i in ids), "/sessions", f"/sessions/{scene['session']}",
            "/events", f"/events?item={scene['held']}"]


def apis_of(scene: dict) -> list[str]:
    return ["/api/overview", "/api/items", "/api/items?status=unknown",
            *(f"/api/items/{scene[k]}" for k in ("held", "dead", "session", "tool")),
            "/api/sessions", f"/api/sessions/{scene['session']}", "/api/events",
            f"/api/events?item={scene['held']}&since=0&limit=3"]


def test_every_page_and_endpoint_answers(web: WebClient, scene: dict):
    for path in pages_of(scene):
        r = web.get(path)
        assert r.status == 200, (path, r)
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        assert r.text.startswith("<!doctype html>")
        for name, value in SECURITY_HEADERS.items():
            assert r.headers[name] == value, (path, name)
        csp = r.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        live = web.get(path, headers={"X-Orch-Live": "1"})
        assert live.status == 200 and "<html" not in live.text, path
    for path in apis_of(scene):
        r = web.get(path)
        assert (r.status, r.headers["Content-Type"]) == (200, "application/json; charset=utf-8"), \
            (path, r)
    for name, kind in (("app.css", "text/css"), ("app.js", "text/javascript")):
        r = web.get(f"/static/{name}")
        assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
    assert web.get("/static/other.js").status == 404
    assert web.get("/nothing-here").status == 404
    assert web.get("/items/999999").status == 404
    assert web.get("/items?status=bogus").status == 400
    assert web.get("/api/items/999999").json["error"]["reason"] == "not_found"


def test_the_json_endpoints_return_what_the_operations_do(web: WebClient, scene: dict):
    import json

    def cli_json(*args: str):
        p = orch(web, "--json", *args)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    one = web.get(f"/api/items/{scene['dead']}").json
    assert one["item"] == cli_json("show", str(scene["dead"]))
    assert one["events"] == cli_json("events", "--item", str(scene["dead"]))
    assert one["why"] == cli_json("why", str(scene["dead"]))
    assert web.get("/api/items?queue=alpha").json == cli_json("ls", "--queue", "alpha")
    replay = web.get(f"/api/sessions/{scene['session']}").json
    assert replay == cli_json("replay", "--session", str(scene["session"]))
    ov = web.get("/api/overview").json
    assert ov["counts"] == cli_json("status")["counts"]
    assert ov["queues"]["alpha"]["running"] == 1 and ov["queues"]["alpha"]["dead"] == 1
    assert ov["children"]["goal"]["running"] == 1
    assert ov["children"]["tool_execution"]["running"] == 1
    holders = {w["worker_id"]: [x["id"] for x in w["leases"]] for w in ov["workers"]}
    assert holders["w<i>1</i>"] == [scene["held"]]
    assert sorted(holders["agent<1>"]) == sorted([scene["session"], scene["goal"],
                                                  scene["tool"]])
    claims = sum(b["claims"] for b in ov["activity"]["buckets"])
    assert claims == 6  # the held, the dead, the lost, the session, goal and execution
    # looked at again (once the shared overview is stale), only the events written since
    # are counted, and each once
    time.sleep(OVERVIEW_FRESH_S)
    assert web.get("/api/overview").json["activity"]["buckets"] == ov["activity"]["buckets"]
    with web.daemon.client() as c:
        c.claim_task("w9", "beta")
    time.sleep(OVERVIEW_FRESH_S)
    again = web.get("/api/overview").json["activity"]
    assert sum(b["claims"] for b in again["buckets"]) == claims + 1
    events = web.get("/api/events?since=0&limit=5").json
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("how", ["none", "wrong bearer", "wrong cookie", "wrong query"])
def test_nothing_answers_without_the_token(web: WebClient, scene: dict, how: str):
    headers = {"wrong bearer": {"Authorization": "Bearer nope"},
               "wrong cookie": {"Cookie": f"orch_web_{web.port}=00"}}.get(how, {})
    suffix = "?token=nope" if how == "wrong query" else ""
    paths_ = [*pages_of(scene), *apis_of(scene), "/static/app.js", "/metrics", "/nothing"]
    for path in paths_:
        sep = "&" if "?" in path and suffix else ""
        r = web.get(path + (suffix.replace("?", sep) if sep else suffix), headers=headers,
                    auth=False)
        assert r.status == 401, (path, r)
        assert r.headers["X-Frame-Options"] == "DENY"
        assert "orch web" in r.text
    before = snapshot(web.daemon.db)
    r = web.post(f"/items/{scene['dead']}/retry", {"confirm": "yes", "csrf": web.csrf()},
                 headers=headers, auth=False)
    assert r.status == 401
    assert snapshot(web.daemon.db) == before


def test_the_token_in_the_url_becomes_a_cookie_and_leaves_the_url(web: WebClient):
    r = web.get(f"/items?status=dead&token={web.token}", auth=False)
    assert r.status == 303
    assert r.headers["Location"] == "/items?status=dead"
    cookie = r.headers["Set-Cookie"]
    name, _, rest = cookie.partition("=")
    value = rest.split(";")[0]
    assert name == f"orch_web_{web.port}" and web.token not in cookie
    flags = {f.strip().lower() for f in cookie.split(";")[1:]}
    assert {"httponly", "path=/", "samesite=strict"} <= flags
    ok = web.get("/items?status=dead", headers={"Cookie": f"{name}={value}"}, auth=False)
    assert ok.status == 200
    # a second daemon's view on another port keeps its own cookie
    assert web.get("/", headers={"Cookie": f"orch_web_1={value}"}, auth=False).status == 401
    # a script keeps no cookie: JSON and metrics answer ?token= at once
    r = web.get(f"/api/overview?token={web.token}", auth=False)
    assert r.status == 200 and "Set-Cookie" not in r.headers and "counts" in r.json
    assert web.get(f"/metrics?token={web.token}", auth=False).status == 200
    assert r.headers["Server"] == "orch"


@pytest.mark.parametrize("host,status", [
    ("evil.example:{port}", 403), ("evil.example", 403), ("127.0.0.1:1", 403),
    ("localhost.evil.example:{port}", 403), ("127.0.0.1:{port}", 200),
    ("localhost:{port}", 200), ("[::1]:{port}", 200), ("LOCALHOST:{port}", 200)])
def test_the_host_header_must_name_the_view(web: WebClient, host: str, status: int):
    r = web.get("/", headers={"Host": host.format(port=web.port)})
    assert r.status == status, r
    if status == 403:
        assert "Host" in r.text and r.headers["X-Frame-Options"] == "DENY"
    r = web.get(f"/?token={web.token}", headers={"Host": host.format(port=web.port)},
                auth=False)
    assert r.status == (303 if status == 200 else 403)


def test_a_cross_site_post_is_refused_and_changes_nothing(web: WebClient, scene: dict):
    dead = scene["dead"]
    csrf = web.csrf()
    before = snapshot(web.daemon.db)
    tries = [
        ({"confirm": "yes"}, {}),
        ({"confirm": "yes", "csrf": "0" * 64}, {}),
        ({"confirm": "yes", "csrf": csrf}, {"Origin": "http://evil.example"}),
        ({"confirm": "yes", "csrf": csrf}, {"Origin": "null"}),
        ({"confirm": "yes", "csrf": csrf}, {"Origin": "null", "Sec-Fetch-Site": "same-site"}),
        ({"confirm": "yes", "csrf": csrf}, {"Sec-Fetch-Site": "cross-site"}),
        ({"confirm": "yes", "csrf": csrf}, {"Origin": f"http://127.0.0.1:{web.port + 1}"}),
    ]
    for form, headers in tries:
        r = web.post(f"/items/{dead}/retry", form, headers=headers)
        assert r.status == 403, (form, headers, r)
    assert web.get(f"/items/{dead}/retry").status == 405  # an action is never a GET
    assert snapshot(web.daemon.db) == before
    # the same POST from the view's own page goes through: as a browser sends it under
    # the view's Referrer-Policy: no-referrer (Origin: null), or with its origin
    r = web.post(f"/items/{dead}/retry", {"confirm": "yes", "csrf": csrf},
                 headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"})
    assert r.status == 303 and r.headers["Location"] == f"/items/{dead}?done=retry", r
    assert "Requeued by web:" in web.get(r.headers["Location"]).text
    r = web.post(f"/items/{dead}/cancel", {"confirm": "yes", "csrf": csrf},
                 headers={"Origin": f"http://127.0.0.1:{web.port}"})
    assert r.status == 303, r


def test_each_action_asks_first_then_goes_through_the_operation(web: WebClient, scene: dict):
    import json

    csrf = web.csrf()

    def last_event(item_id: int) -> dict:
        p = orch(web, "--json", "events", "--item", str(item_id))
        return json.loads(p.stdout)[-1]

    def status(item_id: int) -> str:
        return json.loads(orch(web, "--json", "show", str(item_id)).stdout)["status"]

    before = snapshot(web.daemon.db)
    asked = web.post(f"/items/{scene['dead']}/retry", {"csrf": csrf})
    assert asked.status == 200 and "Nothing happens until you confirm" in asked.text
    assert 'name="confirm" value="yes"' in asked.text
    assert snapshot(web.daemon.db) == before
    for item, action, form, new_status, event in [
        (scene["dead"], "retry", {}, "pending", "requeued"),
        (scene["pending"], "cancel", {}, "cancelled", "cancelled"),
        (scene["held"], "cancel", {}, "running", "cancel_requested"),
        (scene["unknown"], "resolve", {"outcome": "failed"}, "failed", "resolved"),
    ]:
        r = web.post(f"/items/{item}/{action}", {"csrf": csrf, "confirm": "yes", **form})
        assert r.status == 303, (action, r)
        assert status(item) == new_status
        e = last_event(item)
        assert (e["type"], e["detail"]["by"]) == (event, user())
    # refused by the operation: the item's page says why, nothing changes
    before = snapshot(web.daemon.db)
    r = web.post(f"/items/{scene['held']}/retry", {"csrf": csrf, "confirm": "yes"})
    assert r.status == 409 and "only dead, failed or cancelled items are retried" in r.text
    r = web.post(f"/items/{scene['goal']}/resolve", {"csrf": csrf, "confirm": "yes",
                                                      "outcome": "maybe"})
    assert r.status == 400 and "outcome: must be one of" in r.text
    assert snapshot(web.daemon.db) == before


def test_database_values_show_as_text(web: WebClient, scene: dict):
    for path in pages_of(scene):
        text = web.get(path).text
        assert XSS not in text, path
        assert re.findall(r"<script[^>]*>", text) == ['<script src="/static/app.js" defer>'], path
        assert "<i>1</i>" not in text and "agent<1>" not in text, path
        assert 'k"><b>' not in text and "k&quot;&gt;&lt;b&gt;" in web.get(
            f"/items/{scene['held']}").text
    item = web.get(f"/items/{scene['held']}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in item
    assert "w&lt;i&gt;1&lt;/i&gt;" in item
    assert "&lt;script&gt;" in web.get(f"/items/{scene['dead']}").text  # the error
    assert "agent&lt;1&gt;" in web.get(f"/sessions/{scene['session']}").text
    live = web.get(f"/items/{scene['held']}", headers={"X-Orch-Live": "1"}).text
    assert XSS not in live and "&lt;script&gt;" in live


def test_no_token_is_ever_in_an_answer(web: WebClient, scene: dict):
    secrets = [web.token, *scene["tokens"]]
    login = web.get(f"/?token={web.token}", auth=False)
    answers = [login]
    for path in [*pages_of(scene), *apis_of(scene)]:
        answers.append(web.get(path))
        answers.append(web.get(path, headers={"X-Orch-Live": "1"}))
    answers.append(web.post(f"/items/{scene['held']}/cancel", {"csrf": web.csrf()}))
    answers.append(web.get("/static/app.js"))
    for r in answers:
        blob = r.body.decode() + "\n" + str(r.headers)
        for s in secrets:
            assert s not in blob, r
        assert "token_hash" not in blob


def test_the_access_file_is_private_and_goes_with_the_daemon(web: WebClient):
    access = paths.web_access_file(web.daemon.sock)
    assert file_mode(access) == 0o600
    p = orch(web, "web")
    assert p.returncode == 0, p.stderr
    assert p.stdout == f"{web.url}?token={web.token}\n"
    assert web.url == f"http://127.0.0.1:{web.port}/" and web.port > 0
    p = orch(web, "--json", "web")
    assert p.stdout.strip() == f'{{"url":"{web.url}?token={web.token}"}}'
    assert web.daemon.stop() == 0
    assert not access.exists()
    one_error_line(orch(web, "web"), 7)
    assert "orch daemon --http" in orch(web, "web").stderr


def test_orch_web_without_a_view(start_daemon, short_tmp):
    d = start_daemon()  # no --http
    p = orch_process("--socket", str(d.sock), "web")
    err = one_error_line(p, 7)
    assert "no daemon serves a web view" in err and "orch daemon --http 127.0.0.1:8787" in err
    # an access file left by a daemon killed with -9: its port does not answer
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()
    paths.web_access_file(d.sock).write_text(
        f'{{"url": "http://127.0.0.1:{port}/", "token": "x"}}')
    err = one_error_line(orch_process("--socket", str(d.sock), "web"), 7)
    assert "does not answer" in err


def test_address_errors_stop_the_daemon_at_once(short_tmp, web: WebClient):
    for bad in ("8787", "127.0.0.1:http", "127.0.0.1:70000", ":80"):
        p = orch_process("--socket", str(short_tmp / "x.sock"), "daemon", "--http", bad,
                         db=short_tmp / "x.db")
        assert p.returncode == 2 and "HOST:PORT" in p.stderr, (bad, p)
    p = orch_process("--socket", str(short_tmp / "y.sock"), "daemon", "--http",
                     f"127.0.0.1:{web.port}", "--log-file", str(short_tmp / "y.log"),
                     db=short_tmp / "y.db", timeout=30)
    err = one_error_line(p, 1)
    assert f"cannot serve the web view on 127.0.0.1:{web.port}" in err
    assert not (short_tmp / "y.sock").exists()


def test_a_view_off_loopback_is_logged_as_such(start_daemon):
    d = start_daemon("--http", "0.0.0.0:0")
    w = WebClient(d)
    assert w.url.startswith("http://127.0.0.1:")
    assert "not only on loopback" in d.log_text()
    # any IP address of the machine names it; a DNS name other than localhost does not
    assert w.get("/", headers={"Host": f"127.0.0.1:{w.port}"}).status == 200
    assert w.get("/", headers={"Host": f"10.1.2.3:{w.port}"}).status == 200
    assert w.get("/", headers={"Host": f"myhost.example:{w.port}"}).status == 403


def test_metrics_need_the_token_and_move_with_operations(web: WebClient):
    from prometheus_client.parser import text_string_to_metric_families

    def claims() -> float:
        r = web.get("/metrics")
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        return sum(s.value for s in families["orch_claims"].samples
                   if s.name == "orch_claims_total")

    assert web.get("/metrics", auth=False).status == 401
    before = claims()
    with web.daemon.client() as c:
        c.submit_task(queue="m")
        c.claim_task("w1", "m")
    assert claims() == before + 1


def test_a_requeue_from_the_view_wakes_a_parked_claim(web: WebClient, scene: dict):
    import json

    waiting = subprocess.Popen(
        [*orch_cmd(web), "claim", "--worker", "sleeper", "--queue", "alpha", "--wait", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)  # parked: alpha holds nothing claimable
        assert waiting.poll() is None
        r = web.post(f"/items/{scene['dead']}/retry", {"csrf": web.csrf(), "confirm": "yes"})
        assert r.status == 303
        out, err = waiting.communicate(timeout=20)
        assert waiting.returncode == 0, err
        assert json.loads(out)["id"] == scene["dead"]
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.communicate()


def orch_cmd(web: WebClient) -> list[str]:
    import sys

    return [sys.executable, "-m", "orchestrator", "--db", str(web.daemon.db), "--socket",
            str(web.daemon.sock)]


def test_the_view_on_postgresql(start_daemon, pg_schemas):
    """The same pages and answers from a daemon on PostgreSQL: the view only runs
    operations, so it needs nothing of either backend."""
    web = WebClient(start_daemon("--http", "127.0.0.1:0", db=pg_schemas.url()))
    scene = make_scene(web)
    for path in [*pages_of(scene), *apis_of(scene)]:
        r = web.get(path)
        assert r.status == 200, (path, r)
        assert XSS not in r.text or path.startswith("/api/"), path
        for token in [web.token, *scene["tokens"]]:
            assert token not in r.text
    ov = web.get("/api/overview").json
    assert ov["counts"]["dead"] == 1 and ov["counts"]["unknown"] == 1
    assert sum(b["claims"] for b in ov["activity"]["buckets"]) == 6
    r = web.post(f"/items/{scene['dead']}/retry", {"csrf": web.csrf(), "confirm": "yes"})
    assert r.status == 303
    item = web.get(f"/api/items/{scene['dead']}").json
    assert item["item"]["status"] == "pending"
    assert (item["events"][-1]["type"], item["events"][-1]["detail"]["by"]) == \
        ("requeued", user())
    assert "postgresql://" in web.get("/").text  # the database, its password masked
