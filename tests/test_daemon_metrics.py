"""The daemon's Prometheus metrics: each moves with the operations it counts.

They are read as a scraper reads them: ``Daemon.metrics.render()``, parsed with
prometheus_client's own parser, from a real daemon serving a real socket. The daemon
runs in this process, in a thread, so its metrics object can be read directly; the
requests reach it through its socket like any client's. The HTTP route that serves
the same text (GET /metrics of the web view, with its token) is tested with the web
view's tests.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.client import Client
from orchestrator.daemon import Daemon
from orchestrator.errors import LeaseLost, OrchError

ROOT = Path(__file__).resolve().parent.parent

Samples = dict[tuple[str, frozenset], float]


class LiveDaemon:
    """A daemon serving ``sock`` from a thread of this process, until ``stop()``."""

    def __init__(self, directory: Path, db: Path | str | None = None, **options):
        self.sock = directory / "orch.sock"
        self.daemon = Daemon(db or directory / "orch.db", self.sock, **options)
        self.failed: list[BaseException] = []
        self.thread = threading.Thread(target=self._serve, name="orch-daemon-under-test")

    def _serve(self) -> None:
        try:
            asyncio.run(self.daemon.serve())
        except BaseException as exc:  # noqa: BLE001 -- handed to the test, which raises it
            self.failed.append(exc)

    def start(self) -> LiveDaemon:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.failed and time.monotonic() < deadline:
            try:
                with self.client(connect_within=0) as c:
                    c.ping()
                return self
            except OrchError:
                time.sleep(0.02)  # not answering yet
        raise RuntimeError(f"daemon did not start: {self.failed}")

    def stop(self) -> None:
        if self.thread.is_alive():
            self.daemon.loop.call_soon_threadsafe(self.daemon.stopping.set)
            self.thread.join(30)
        if self.failed:
            raise self.failed[0]

    def client(self, **kw) -> Client:
        return Client(self.sock, **kw)

    def scrape(self) -> Samples:
        body, content_type = self.daemon.metrics.render()
        assert content_type == prometheus_client.CONTENT_TYPE_LATEST
        return {(s.name, frozenset(s.labels.items())): s.value
                for family in text_string_to_metric_families(body.decode())
                for s in family.samples}

    def value(self, name: str, **labels: str) -> float:
        """One sample of a fresh scrape; 0 when the series does not exist (yet)."""
        return self.scrape().get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def live(short_tmp: Path) -> Iterator[Callable[..., LiveDaemon]]:
    """live(db=None, **Daemon options) -> a running in-process daemon on a new database
    (a file in short_tmp unless ``db`` names one); by default its own recovery pass runs
    only at start, so a test decides when."""
    started: list[LiveDaemon] = []

    def start(db: Path | str | None = None, **options) -> LiveDaemon:
        options.setdefault("recover_every_s", 3600)
        d = LiveDaemon(short_tmp, db, **options)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.01)


def test_items_are_counted_by_queue_status_and_kind_when_scraped(live):
    d = live()
    with d.client() as c:
        for i in range(3):
            c.submit_task({"n": i}, queue="q")
        c.submit_task(queue="other")
        assert d.value("orch_items", queue="q", status="pending", kind="task") == 3
        assert d.value("orch_items", queue="q", status="running", kind="task") == 0
        assert d.value("orch_items", queue="other", status="pending", kind="task") == 1
        c.claim_task("w1", "q")
    samples = d.scrape()
    assert samples["orch_items", frozenset(
        {"queue": "q", "status": "pending", "kind": "task"}.items())] == 2
    assert samples["orch_items", frozenset(
        {"queue": "q", "status": "running", "kind": "task"}.items())] == 1
    # every status of a queue that has items is there, the empty ones as 0
    statuses = {dict(labels)["status"] for name, labels in samples
                if name == "orch_items" and dict(labels)["queue"] == "q"}
    assert statuses >= {"pending", "running", "succeeded", "failed", "dead", "cancelled"}


def test_a_claim_and_a_release_are_counted(live):
    d = live()
    with d.client() as c:
        c.submit_task(queue="q")
        c.submit_task(queue="q")
        claim = c.claim_task("w1", "q")
        assert d.value("orch_claims_total", queue="q", kind="task") == 1
        c.release_task(claim["id"], claim["token"], "succeeded")
        assert d.value("orch_releases_total", outcome="succeeded") == 1
        assert d.value("orch_releases_total", outcome="failed") == 0
        assert c.claim_task("w1", "q") is not None
        assert c.claim_task("w1", "q") is None  # nothing left: no claim counted
    assert d.value("orch_claims_total", queue="q", kind="task") == 2
    assert d.value("orch_requests_total", method="claimTask", result="ok") == 3
    assert d.value("orch_requests_total", method="submitTask", result="ok") == 2
    assert d.value("orch_requests_total", method="releaseTask", result="ok") == 1


def test_release_and_claim_counts_the_release_and_the_next_claim(live):
    d = live()
    with d.client() as c:
        for _ in range(2):
            c.submit_task(queue="q")
        first = c.claim_task("w1", "q")
        out = c.release_and_claim(first["id"], first["token"], "failed")
        assert out["next"] is not None
    assert d.value("orch_releases_total", outcome="failed") == 1
    assert d.value("orch_claims_total", queue="q", kind="task") == 2


def test_a_stale_token_is_counted_as_a_fencing_refusal(live):
    d = live()
    with d.client() as c:
        c.submit_task(queue="q")
        c.submit_task(queue="q")
        old = c.claim_task("w1", "q")
        c.release_task(old["id"], old["token"], "requeue")
        new = c.claim_task("w2", "q")
        assert new["id"] == old["id"]
        other = c.claim_task("w3", "q")
        with pytest.raises(LeaseLost):
            c.heartbeat(old["id"], old["token"])
        assert d.value("orch_fencing_refusals_total", method="heartbeat") == 1
        with pytest.raises(LeaseLost):
            c.release_task(old["id"], old["token"], "succeeded")
        # several leases in one heartbeat: each refused one counts
        out = c.heartbeat(leases=[{"item_id": old["id"], "token": old["token"]},
                                  {"item_id": other["id"], "token": other["token"]}])
        assert [("error" in lease) for lease in out["leases"]] == [True, False]
    assert d.value("orch_fencing_refusals_total", method="heartbeat") == 2
    assert d.value("orch_fencing_refusals_total", method="releaseTask") == 1
    assert d.value("orch_requests_total", method="releaseTask", result="lease_lost") == 1
    assert d.value("orch_releases_total", outcome="succeeded") == 0  # refused: not a release


def test_a_lease_recovered_by_orch_recover_is_counted_as_an_expiration(live):
    d = live()
    with d.client() as c:
        c.submit_task(queue="q")
        claim = c.claim_task("w1", "q", ttl=0.05)
        time.sleep(0.2)
        assert c.stale_recovery(dry_run=True)["count"] == 1
        assert d.value("orch_expirations_total", status="pending") == 0  # a dry run
        assert c.stale_recovery()["recovered"][0]["id"] == claim["id"]
    assert d.value("orch_expirations_total", status="pending") == 1
    assert d.value("orch_items", queue="q", status="pending", kind="task") == 1


def test_a_lease_recovered_by_the_daemons_own_pass_is_counted_as_an_expiration(live):
    d = live(recover_every_s=0.2)
    with d.client() as c:
        c.submit_task(queue="q", max_attempts=1)
        c.claim_task("w1", "q", ttl=0.05)
    # out of attempts: recovery makes it dead
    eventually(lambda: d.value("orch_expirations_total", status="dead") == 1)
    assert d.value("orch_items", queue="q", status="dead", kind="task") == 1


def test_a_parked_claim_is_a_parked_waiter_until_it_is_served(live):
    d = live()
    assert d.value("orch_parked_waiters") == 0
    got: list = []
    with d.client() as waiting:
        t = threading.Thread(target=lambda: got.append(
            waiting.claim_task("w1", "q", wait=30)))
        t.start()
        try:
            eventually(lambda: d.value("orch_parked_waiters") == 1)
            with d.client() as c:
                c.submit_task(queue="q")
        finally:
            t.join(30)
    assert got and got[0] is not None
    assert d.value("orch_parked_waiters") == 0
    assert d.value("orch_claims_total", queue="q", kind="task") == 1


def test_open_connections_follow_the_clients(live):
    d = live()
    eventually(lambda: d.value("orch_open_connections") == 0)  # start-up's ping has gone
    with d.client() as a, d.client() as b:
        a.ping()
        b.ping()
        assert d.value("orch_open_connections") == 2
        a.close()
        eventually(lambda: d.value("orch_open_connections") == 1)
    eventually(lambda: d.value("orch_open_connections") == 0)


def test_every_commit_is_observed_in_the_histograms(live):
    d = live()
    before = d.scrape()
    with d.client() as c:
        for _ in range(3):
            c.submit_task(queue="q")
        claim = c.claim_task("w1", "q")
        c.release_task(claim["id"], claim["token"], "succeeded")
        c.list_tasks()  # a read: never the writer's
    after = d.scrape()

    def grew(name: str) -> float:
        key = (name, frozenset())
        return after[key] - before.get(key, 0.0)

    # one request at a time: five commits of one request each
    assert grew("orch_group_commit_batch_size_count") == 5
    assert grew("orch_group_commit_batch_size_sum") == 5
    assert grew("orch_commit_seconds_count") == 5
    assert grew("orch_commit_seconds_sum") > 0
    assert after["orch_group_commit_batch_size_bucket", frozenset({"le": "1.0"}.items())] >= 5


def test_requests_the_daemon_refuses_unrun_are_counted_by_reason(live):
    from helpers.daemon_wire import Raw

    d = live()
    with Raw(d.sock) as raw:
        raw.error("noSuchMethod")
        raw.error("claimTask", {"worker_id": ""})
        raw.send(b"{not json\n")
        raw.reply()
    assert d.value("orch_requests_total", method="unknown", result="method_not_found") == 1
    assert d.value("orch_requests_total", method="claimTask", result="invalid") == 1
    assert d.value("orch_requests_total", method="unknown", result="parse") == 1


def test_on_postgresql_items_are_counted_and_operations_move_the_counters(live, pg_schemas):
    d = live(pg_schemas.url())
    with d.client() as c:
        for _ in range(3):
            c.submit_task(queue="q")
        assert d.value("orch_items", queue="q", status="pending", kind="task") == 3
        claim = c.claim_task("w1", "q", ttl=0.05)
        assert d.value("orch_claims_total", queue="q", kind="task") == 1
        time.sleep(0.2)
        with pytest.raises(LeaseLost):
            c.release_task(claim["id"], claim["token"], "succeeded")
        assert c.stale_recovery()["count"] == 1
    assert d.value("orch_fencing_refusals_total", method="releaseTask") == 1
    assert d.value("orch_expirations_total", status="pending") == 1
    assert d.value("orch_items", queue="q", status="pending", kind="task") == 3
    assert d.value("orch_commit_seconds_count") > 0


def test_every_metric_is_named_orch_and_documented_in_both_readmes(live):
    d = live()
    body, _ = d.daemon.metrics.render()
    families = list(text_string_to_metric_families(body.decode()))
    names = {f.name for f in families}
    assert names >= {"orch_items", "orch_claims", "orch_releases", "orch_expirations",
                     "orch_fencing_refusals", "orch_requests", "orch_group_commit_batch_size",
                     "orch_commit_seconds", "orch_parked_waiters", "orch_open_connections"}
    for f in families:
        assert f.name.startswith("orch_") and len(f.documentation) > 20, f
    # the README tables list each under the name a query uses (counters with _total)
    exposed = {f.name + ("_total" if f.type == "counter" else "") for f in families}
    for readme in ("README.md", "README.ko.md"):
        text = (ROOT / readme).read_text()
        documented = set(re.findall(r"^\| `(orch_\w+)` \|", text, re.MULTILINE))
        assert documented == exposed, readme


def test_each_daemon_has_a_registry_of_its_own(short_tmp):
    a = Daemon(short_tmp / "a.db", short_tmp / "a.sock")
    b = Daemon(short_tmp / "b.db", short_tmp / "b.sock")
    a.metrics.releases["succeeded"] += 1
    assert b.metrics.releases["succeeded"] == 0
    assert a.metrics.registry is not b.metrics.registry
    global_names = {f.name for f in prometheus_client.REGISTRY.collect()}
    assert not any(n.startswith("orch_") for n in global_names)


def test_the_embedded_api_loads_no_metrics(db_path):
    code = ("import sys; from orchestrator import Orchestrator\n"
            f"with Orchestrator({str(db_path)!r}) as o:\n"
            "    o.submit_task(); c = o.claim_task('w'); o.release_task(c['id'], c['token'], "
            "'succeeded')\n"
            "print(sorted(m for m in sys.modules if 'prometheus' in m or m.endswith('metrics')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "[]"
