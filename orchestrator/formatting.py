"""What people read: the text the ``orch`` commands print for each result.

Each function takes an operation's result (the same dict ``--json`` prints) and returns
aligned text. Times are shown as UTC with how far off they are; tokens never appear,
since results shown here carry none (``show``, ``ls``, ``events``, ``replay``).
"""

from __future__ import annotations

import json
from typing import Any

from .clock import iso, now_ms
from .model import EventType, Kind, Status


def json_text(value: Any) -> str:
    """One compact JSON document (``--json``)."""
    return json.dumps(value, ensure_ascii=False, indent=None, separators=(",", ":"))


def until(ms: int | None) -> str:
    if ms is None:
        return "-"
    delta = (ms - now_ms()) / 1000
    rel = f"in {delta:.1f} s" if delta >= 0 else f"{-delta:.1f} s ago"
    return f"{iso(ms)} ({rel})"


def aligned(pairs: list[tuple[str, Any]]) -> str:
    width = max(len(k) for k, _ in pairs)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in pairs)


def compact(value: Any, limit: int = 60) -> str:
    if value is None:
        return "-"
    s = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return s if len(s) <= limit else s[: limit - 1] + "…"


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip()
                     for r in cells)


def indent(s: str) -> str:
    return "\n".join("  " + line for line in s.splitlines())


# --- one text per command ------------------------------------------------------------------


def init_text(info: dict) -> str:
    return f"database ready: {info['db']} (schema {info['schema_version']})"


def submitted_text(item: dict) -> str:
    return (f"{'submitted' if item['created'] else 'exists'}: item {item['id']} "
            f"({item['kind']}, queue {item['queue']}, {item['status']})")


def item_text(item: dict) -> str:
    pairs = [(k, item[k]) for k in ("id", "kind", "queue", "status")]
    pairs += [
        ("priority", item["priority"]),
        ("attempts", f"{item['attempts']} of {item['max_attempts'] or 'unlimited'}"),
        ("effect", item["effect"]),
        ("parent_id", item["parent_id"] or "-"),
        ("key", item["key"] or "-"),
        ("run_after", until(item["run_after"]) if item["status"] == Status.PENDING else "-"),
        ("worker_id", item["worker_id"] or "-"),
        ("fence", item["fence"] if item["fence"] is not None else "-"),
        ("lease_expires_at", until(item["lease_expires_at"])),
        ("heartbeat_at", iso(item["heartbeat_at"])),
        ("cancel_requested", "yes" if item["cancel_requested"] else "no"),
        ("created_at", iso(item["created_at"])),
        ("updated_at", iso(item["updated_at"])),
        ("payload", compact(item["payload"], 200)),
        ("checkpoint", compact(item["checkpoint"], 200)),
        ("result", compact(item["result"], 200)),
        ("error", item["error"] or "-"),
    ]
    return aligned(pairs)


def items_table(items: list[dict]) -> str:
    return table(
        [[i["id"], i["kind"], i["queue"], i["status"], i["priority"],
          f"{i['attempts']}/{i['max_attempts'] or '-'}", i["worker_id"], i["fence"],
          i["key"], compact(i["payload"], 40)] for i in items],
        ["id", "kind", "queue", "status", "prio", "tries", "worker", "fence", "key",
         "payload"])


def lease_line(r: dict) -> str:
    """One lease a heartbeat renewed, or why it refused it."""
    if "error" in r:
        return f"item {r['id']}: refused: {r['error']['message']}"
    cancel = "; cancel requested" if r["cancel_requested"] else ""
    return f"item {r['id']}: lease until {until(r['lease_expires_at'])}{cancel}"


def leases_text(r: dict) -> str:
    return "\n".join(lease_line(x) for x in r["leases"])


def released_text(item: dict) -> str:
    s = f"item {item['id']}: {item['status']}"
    if item["status"] == Status.PENDING:
        s += f", claimable {until(item['run_after'])}"
    return s


def recovered_text(r: dict) -> str:
    verb = "would recover" if r["dry_run"] else "recovered"
    lines = [f"{verb} {r['count']} item(s)"]
    lines += [f"  item {x['id']} ({x['kind']}, {x['worker_id']}, fence {x['fence']}): "
              f"-> {x['status']} [{x['reason']}]" for x in r["recovered"]]
    return "\n".join(lines)


def cancelled_text(item: dict) -> str:
    if item["status"] == Status.RUNNING:
        return f"item {item['id']}: cancel requested, the holder sees it on its next heartbeat"
    return f"item {item['id']}: {item['status']}"


def checkpointed_text(r: dict) -> str:
    return f"item {r['id']}: checkpoint saved"


def status_line(item: dict) -> str:
    return f"item {item['id']}: {item['status']}"


def verified_text(r: dict, item_id: int) -> str:
    return (f"{'valid' if r['valid'] else 'not valid'}: item {item_id} is {r['status']}, "
            f"fence {r['fence']}")


def status_text(st: dict) -> str:
    lines = ["items:  " + "  ".join(f"{k} {v}" for k, v in st["counts"].items())]
    lines.append(f"fence:  {st['fence']}")
    lines.append(f"workers ({len(st['workers'])} live):")
    rows = [[w["worker_id"], until(w["lease_expires_at"]),
             ",".join(map(str, w["holding"])) or "-"] for w in st["workers"]]
    if rows:
        lines.append(indent(table(rows, ["worker", "registered until", "holding"])))
    lines.append(f"expired leases not yet recovered: {len(st['expired_leases'])}")
    rows = [[x["id"], x["kind"], x["queue"], x["worker_id"], x["fence"],
             until(x["lease_expires_at"])] for x in st["expired_leases"]]
    if rows:
        lines.append(indent(table(rows, ["id", "kind", "queue", "worker", "fence",
                                         "expired"])))
    return "\n".join(lines)


def event_line(e: dict) -> str:
    return "  ".join([str(e["seq"]), iso(e["at"]), f"item {e['item_id']}", e["type"],
                      e["worker_id"] or "-", f"fence {e['fence']}" if e["fence"] else "-",
                      compact(e["detail"], 120)])


def doctor_text(r: dict) -> str:
    head = (f"ok: {r['items']} items, {r['events']} events; chain, replay and lease "
            "rules hold" if r["ok"] else f"{len(r['problems'])} problem(s):")
    return "\n".join([head] + [f"  {p}" for p in r["problems"]])


def copy_text(r: dict) -> str:
    c, t = r["copied"], r["target"]
    lines = [f"copied {r['from']} to {r['to']}: {c['items']} items, {c['events']} events, "
             f"{c['workers']} workers (fences up to {c['max_fence']}, events up to "
             f"{c['last_seq']})"]
    if r["same"]:
        lines.append("read back: the same counts, highest fence and last event")
    else:
        lines.append("read back: the copy differs: " + ", ".join(
            f"{k} {c[k]} in the file, {t[k]} in the database" for k in c if c[k] != t[k]))
    lines.append("doctor: " + doctor_text(r["doctor"]))
    return "\n".join(lines)


def tree(node: dict, depth: int = 0) -> list[str]:
    """A session, its goals and their tool executions, each with its events (replay)."""
    pad = "  " * depth
    head = (f"{pad}{node['kind']} {node['id']}  {node['status']}  key={node['key'] or '-'}  "
            f"attempts={node['attempts']}  fence={node['fence'] or '-'}  "
            f"created={iso(node['created_at'])}  updated={iso(node['updated_at'])}")
    lines = [head]
    if node["kind"] == Kind.TOOL_EXECUTION:
        lines.append(f"{pad}  tool={node['payload'].get('tool')}  "
                     f"input={compact(node['payload'].get('input'), 80)}")
    if node["result"] is not None or node["error"]:
        lines.append(f"{pad}  result={compact(node['result'], 80)}  error={node['error'] or '-'}")
    for e in node["events"]:
        lines.append(f"{pad}  · {e['seq']} {iso(e['at'])} {e['type']} "
                     f"{e['worker_id'] or '-'} fence={e['fence'] or '-'}"
                     + (f" {e['detail'].get('outcome') or ''} -> {e['detail']['status']}"
                        if "status" in e["detail"] and e["type"] != EventType.SUBMITTED else ""))
    for child in node.get("goals", []) + node.get("tool_executions", []):
        lines += tree(child, depth + 1)
    return lines


def replay_text(session: dict) -> str:
    return "\n".join(tree(session))


def work_summary(r: dict) -> str:
    """What ``orch work`` did, once it stops."""
    counts = ", ".join(f"{r[k]} {k.replace('_', ' ')}" for k in
                       ("succeeded", "failed", "retry_later", "cancelled", "requeued", "lost",
                        "unreleased") if r[k])
    return f"orch work: {r['items']} item(s)" + (f": {counts}" if counts else "")
