"""``orch work``: one long-lived process that runs a shell command for each claimed item.

Each of ``concurrency`` slots is a thread with its own connection (API handles are one
per thread). A slot claims an item, runs the command in a process group of its own
with the payload JSON on stdin, heartbeats the lease while it runs, and releases the
item with the outcome its exit status gives; the release also claims the next item,
in one transaction. A refused heartbeat means another holder may already be running
the item: the command is stopped and nothing is released under the old fence.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO, Any

from . import defaults, validate
from .errors import InvalidInput, LeaseLost, OrchError, OutcomeUnknown, Unavailable
from .interface import Operations
from .model import Claim, Kind, Outcome

#: The command's "try again later" (EX_TEMPFAIL): the item is requeued, not failed.
EXIT_RETRY_LATER = 75
#: How much of the command's stderr (and of non-JSON stdout) is kept.
TAIL_BYTES = 4096
#: A slot's longest wait for an item, so a stop request is seen this soon.
CLAIM_WAIT_S = 1.0
#: How often a slot looks at a stop request while its command runs.
TICK_S = 0.2


@dataclass(frozen=True)
class Options:
    command: list[str]
    worker_id: str
    queues: list[str]
    concurrency: int = defaults.WORK_CONCURRENCY
    ttl_s: float = defaults.TTL_S
    max_items: int | None = None
    grace_s: float = defaults.WORK_GRACE_S
    kill_after_s: float = defaults.WORK_KILL_AFTER_S
    retry_in_s: float = defaults.WORK_RETRY_IN_S
    env: dict[str, str] = field(default_factory=dict)


def options(command: list[str], *, worker_id: str | None, queues: list[str], **kw: Any) -> Options:
    """Checked options: bad names, ttls and a command that is not found are refused
    before anything is claimed."""
    worker_id = worker_id or f"work-{os.getpid()}@{os.uname().nodename}"[:validate.MAX_WORKER_CHARS]
    checked = validate.check("claim_task", {"worker_id": worker_id, "queues": queues or None,
                                            "ttl": kw.get("ttl_s", Options.ttl_s)})
    validate.delay("retry_in", kw.get("retry_in_s", Options.retry_in_s))
    if not command:
        raise InvalidInput("command: required (orch work [OPTIONS] -- COMMAND [ARGS]...)",
                           data={"field": "command"})
    if shutil.which(command[0]) is None:
        raise InvalidInput(f"command: {command[0]!r} is not found or not executable",
                           data={"field": "command"})
    return Options(list(command), worker_id, checked["queues"], **kw)


@dataclass
class Done:
    """How a claim ended: what to release, and the name it is counted under."""

    outcome: str
    tally: str
    result: Any = None
    error: str | None = None
    retry_in: float | None = None


class _Held:
    """One claim as this process holds it."""

    def __init__(self, claim: Claim, ttl_s: float, sent: float):
        assert claim["fence"] is not None, "a claim has a fence"
        self.claim = claim
        self.id: int = claim["id"]
        self.token: str = claim["token"]
        self.fence: int = claim["fence"]
        self.ttl_s = ttl_s
        self.every = ttl_s / 3
        self.renewed(sent)

    def renewed(self, sent: float) -> None:
        # The lease runs from the daemon's "now", which is after ``sent``: a safe estimate.
        self.expires = sent + self.ttl_s
        self.next_beat = sent + self.every


class Worker:
    def __init__(self, api: Operations, opts: Options, *,
                 say=lambda line: print(line, file=sys.stderr, flush=True)):
        self.api = api
        self.opts = opts
        self._say = say
        self.stopping = threading.Event()
        self.deadline = float("inf")  # after a stop request: when running commands are stopped
        self.fatal: BaseException | None = None
        self.counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._left = opts.max_items
        self._running: set[int] = set()  # items with a command of ours alive
        self._freed = threading.Condition(self._lock)
        self._env = {**os.environ, **opts.env, "ORCH_WORKER": opts.worker_id}

    # -- the process --

    def run(self) -> dict:
        """Work until a stop request or ``max_items``; the counts of what happened."""
        handlers = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)
                    if threading.current_thread() is threading.main_thread()}
        slots = [threading.Thread(target=self._slot, name=f"orch-work-{n}", daemon=True)
                 for n in range(self.opts.concurrency)]
        try:
            for t in slots:
                t.start()
            announced = False
            while alive := [t for t in slots if t.is_alive()]:
                if self.stopping.is_set() and not announced and self.fatal is None:
                    announced = True
                    self._say(f"orch work: stopping; running commands get "
                              f"{max(0.0, self.deadline - time.monotonic()):.1f} s to finish")
                alive[0].join(TICK_S)
        finally:
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
        if self.fatal is not None:
            raise self.fatal
        return {"worker_id": self.opts.worker_id, "items": self.counts["items"],
                **{k: self.counts[k] for k in ("succeeded", "failed", "retry_later",
                                               "cancelled", "requeued", "lost", "unreleased")}}

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        self.stop(now=self.stopping.is_set())  # a second signal stops the commands at once

    def stop(self, *, now: bool = False) -> None:
        """Claim nothing more; stop running commands after the grace period (or now)."""
        self.deadline = min(self.deadline, time.monotonic() + (0 if now else self.opts.grace_s))
        self.stopping.set()

    # -- a slot: claim, run, release, again --

    def _slot(self) -> None:
        api: Operations | None = None
        try:
            api = self.api.clone()
            held = None
            while True:
                held = held or self._claim(api)
                if held is None:
                    return
                done = self._run(api, held)
                held = self._release(api, held, done)
        except BaseException as exc:  # noqa: BLE001 -- the main thread raises it
            self.fatal = self.fatal or exc
            self.stop()
        finally:
            if api is not None:
                api.close()

    def _ticket(self) -> bool:
        """May this slot claim one more item? (``max_items``)"""
        with self._lock:
            if self._left is None:
                return True
            if self._left > 0:
                self._left -= 1
                return True
            return False

    def _unticket(self) -> None:
        with self._lock:
            if self._left is not None:
                self._left += 1

    def _claim(self, api: Operations) -> _Held | None:
        while not self.stopping.is_set() and self._ticket():
            sent = time.monotonic()
            try:
                claim = api.claim_task(self.opts.worker_id, self.opts.queues,
                                       ttl=self.opts.ttl_s, wait=CLAIM_WAIT_S)
            except Unavailable as exc:  # the daemon restarting, the file locked: try again
                self._unticket()
                self._say(f"orch work: cannot claim: {exc}")
                self.stopping.wait(1.0)
                continue
            if claim is not None:
                return self._took(claim, sent)
            self._unticket()
        return None

    def _took(self, claim: Claim, sent: float) -> _Held:
        with self._lock:
            self.counts["items"] += 1
        return _Held(claim, self.opts.ttl_s, sent)

    # -- running one command --

    def _run(self, api: Operations, held: _Held) -> Done | None:
        """Run the command for ``held`` to its end; None when the lease was lost."""
        if held.claim.get("cancel_requested"):
            return Done(Outcome.CANCELLED, "cancelled",
                        error="cancel requested before the command ran")
        proc: subprocess.Popen | None = None
        stop: Done | None
        files = ExitStack()
        try:
            while True:
                now = time.monotonic()
                if self.stopping.is_set() and now >= self.deadline:
                    stop = Done(Outcome.REQUEUE, "requeued")
                    break
                if now >= held.next_beat:
                    try:
                        beat = self._beat(api, held)
                    except LeaseLost:
                        stop = None
                        break
                    if beat is not None and beat["cancel_requested"]:
                        stop = Done(Outcome.CANCELLED, "cancelled",
                                    error="cancel requested; the command was stopped")
                        break
                if proc is None and self._enter(held.id):
                    stdio = [files.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
                             for _ in range(3)]
                    try:
                        proc = self._spawn(held, *stdio)
                    except OSError as exc:
                        self._leave(held.id)
                        return Done(Outcome.FAILED, "failed",
                                    error=f"cannot run {self.opts.command[0]}: {exc}")
                wait = min(TICK_S, max(0.0, min(held.next_beat, self.deadline) - time.monotonic()))
                if proc is None:
                    with self._freed:
                        self._freed.wait(wait)
                    continue
                try:
                    code = proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
                return self._judge(code, stdio[1], stdio[2])
            if proc is not None:
                self._stop(proc)
            self._report(held, stop)
            return stop
        finally:
            if proc is not None:
                if proc.returncode is None:  # an error of ours: never leave a command behind
                    self._stop(proc)
                self._leave(held.id)
            files.close()

    def _enter(self, item_id: int) -> bool:
        """One command per item in this process: after a lost lease this process may
        claim the item again while its old command is still being stopped."""
        with self._lock:
            if item_id in self._running:
                return False
            self._running.add(item_id)
            return True

    def _leave(self, item_id: int) -> None:
        with self._freed:
            self._running.discard(item_id)
            self._freed.notify_all()

    def _spawn(self, held: _Held, stdin: IO[bytes], stdout: IO[bytes],
               stderr: IO[bytes]) -> subprocess.Popen:
        stdin.write(json.dumps(held.claim["payload"], ensure_ascii=False).encode() + b"\n")
        stdin.seek(0)
        env = {**self._env, "ORCH_ITEM_ID": str(held.id), "ORCH_FENCE": str(held.fence),
               "ORCH_ATTEMPT": str(held.claim["attempt"]), "ORCH_QUEUE": held.claim["queue"],
               "ORCH_TOKEN": held.token}
        # A session of its own: its process group can be stopped as a whole, and a
        # Ctrl-C in the terminal reaches orch work only, which decides what stops.
        return subprocess.Popen(self.opts.command, stdin=stdin, stdout=stdout, stderr=stderr,
                                env=env, start_new_session=True)

    def _beat(self, api: Operations, held: _Held) -> dict | None:
        """Extend the lease; None when it could not be reached (retried soon)."""
        sent = time.monotonic()
        try:
            beat = api.heartbeat(held.id, held.token)
        except LeaseLost:
            raise
        except Unavailable as exc:
            if time.monotonic() >= held.expires:
                raise LeaseLost(f"item {held.id}: no heartbeat got through before the lease "
                                f"ended ({exc})") from None
            held.next_beat = time.monotonic() + min(held.every, 1.0)
            return None
        held.renewed(sent)
        return beat

    def _stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM to the command's process group, SIGKILL after ``kill_after``."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)  # not yet reaped: the group id is still its own
            except ProcessLookupError:
                pass
            try:
                proc.wait(self.opts.kill_after_s if sig == signal.SIGTERM else None)
                return
            except subprocess.TimeoutExpired:
                continue

    def _judge(self, code: int, stdout: IO[bytes], stderr: IO[bytes]) -> Done:
        if code == 0:
            return Done(Outcome.SUCCEEDED, "succeeded", result=_result(stdout))
        what = f"killed by {_signal_name(-code)}" if code < 0 else f"exit {code}"
        tail = _tail(stderr).rstrip()
        error = f"{what}: {tail}" if tail else what
        if code == EXIT_RETRY_LATER:
            return Done(Outcome.REQUEUE, "retry_later", error=error, retry_in=self.opts.retry_in_s)
        return Done(Outcome.FAILED, "failed", error=error)

    # -- releasing --

    def _release(self, api: Operations, held: _Held, done: Done | None) -> _Held | None:
        """Release with the outcome; the next claim when this release brought one."""
        if done is None:
            with self._lock:
                self.counts["lost"] += 1
            return None
        kw = {"result": done.result, "error": done.error, "retry_in": done.retry_in}
        while True:
            more = not self.stopping.is_set() and self._ticket()
            sent = time.monotonic()
            try:
                if more:
                    r = api.release_and_claim(
                        held.id, held.token, done.outcome, **kw, worker_id=self.opts.worker_id,
                        queues=self.opts.queues, kinds=[Kind.TASK], ttl=self.opts.ttl_s,
                        wait=CLAIM_WAIT_S)
                    released, nxt = r["released"], r["next"]
                else:
                    released, nxt = api.release_task(held.id, held.token, done.outcome, **kw), None
            except (LeaseLost, Unavailable) as exc:
                if more:
                    self._unticket()
                retry = (type(exc) is Unavailable and not isinstance(exc, OutcomeUnknown)
                         and time.monotonic() < held.expires)
                if retry:  # it never reached the daemon, or the file was locked: try again
                    self.stopping.wait(0.5)
                    continue
                tally = "lost" if isinstance(exc, LeaseLost) else "unreleased"
                self._say(f"orch work: item {held.id} (fence {held.fence}): not released "
                          f"{done.outcome}: {exc}")
                with self._lock:
                    self.counts[tally] += 1
                return None
            with self._lock:
                self.counts[done.tally] += 1
            if done.tally not in ("succeeded", "requeued", "cancelled"):
                self._say(f"orch work: item {held.id}: {done.error}; released {done.outcome}, "
                          f"now {released['status']}")
            if more and nxt is None:
                self._unticket()
            return self._took(nxt, sent) if nxt is not None else None

    def _report(self, held: _Held, stop: Done | None) -> None:
        if stop is None:
            self._say(f"orch work: item {held.id} (fence {held.fence}): lease lost; the "
                      "command was stopped and nothing is released")
        elif stop.tally == "cancelled":
            self._say(f"orch work: item {held.id}: cancel requested; the command was stopped")
        else:
            self._say(f"orch work: item {held.id}: still running at the end of the grace "
                      "period; the command was stopped and the item requeued")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:  # a real-time signal, say
        return f"signal {number}"


def _tail(f: IO[bytes], limit: int = TAIL_BYTES) -> str:
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - limit))
    return f.read(limit).decode(errors="replace")


def _result(stdout: IO[bytes]) -> Any:
    """The command's stdout as the item's result: its JSON value when it is one (within
    the limits), else its last 4 KiB as a string; nothing when it printed nothing."""
    size = os.fstat(stdout.fileno()).st_size
    if size == 0:
        return None
    if size <= validate.MAX_VALUE_BYTES:
        stdout.seek(0)
        try:
            value = json.loads(stdout.read())
            validate.json_value("result", value)
            return value
        except (ValueError, OrchError):
            pass  # not JSON, or over a limit: keep the text
    return _tail(stdout).rstrip()


def run(api: Operations, opts: Options) -> dict:
    return Worker(api, opts).run()
