"""What the console's pages read and how they show values: the runs filters and their pages
over the indexes, the transitions seen in ledgers, and values as escaped, redacted text."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Any

from runtime import RunStatus, WaitReason

PAGE = 50          # runs per page


class BadFilter(ValueError):
    """A filter value the runs page cannot use (the message says which and why)."""


def plausible_id(run_id: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9:._@+-]{1,200}", run_id))


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]


def non_negative(raw: str | None, default: int) -> int:
    try:
        return max(0, int(raw)) if raw else default
    except ValueError:
        return default


def entry_before(entry: str) -> str:
    ms, seq = (int(x) for x in entry.split("-"))
    return f"{ms}-{seq - 1}" if seq else f"{ms - 1}-{2**63 - 1}" if ms else "-"


def parse_filters(q: Any) -> dict[str, Any]:
    status, reason = q.get("status") or None, q.get("wait_reason") or None
    if status is not None and status not in {s.value for s in RunStatus}:
        raise BadFilter(f"status {status!r} is not one of {', '.join(s.value for s in RunStatus)}")
    if reason is not None and reason not in {r.value for r in WaitReason}:
        raise BadFilter(f"wait reason {reason!r} is not one of {', '.join(r.value for r in WaitReason)}")
    attrs: dict[str, str] = {}
    for item in q.getlist("attr"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadFilter(f"attribute filter {item!r} is not name=value")
        attrs[key.strip()] = value.strip()
    bounds = {}
    for name in ("since", "until"):
        raw = q.get(name)
        if raw:
            try:
                when = datetime.fromisoformat(raw)
            except ValueError:
                raise BadFilter(f"{name} {raw!r} is not a date or time (2026-12-01 or 2026-12-01T10:00)") from None
            bounds[name] = (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp() * 1000
    prefix = (q.get("prefix") or "").strip()
    if prefix and not plausible_id(prefix):
        raise BadFilter(f"run id prefix {prefix!r} holds characters no run id has")
    return {"status": status, "wait_reason": reason, "workflow": q.get("workflow") or None, "attrs": attrs,
            "prefix": prefix, **bounds}


def runs_page(client: Any, f: dict[str, Any], cursor: str | None) -> tuple[list[Any], str | None]:
    """A page of runs newest first from one index, and the cursor of the next (``score:run id``)."""
    b, k = client.backend, client.backend.keys
    if f["wait_reason"]:
        index = k.by_wait_reason(f["wait_reason"])
    elif f["status"]:
        index = k.by_status(f["status"])
    elif f["attrs"] and hasattr(k, "by_attr"):
        name, value = next(iter(f["attrs"].items()))
        index = k.by_attr(name, value)
    elif f["workflow"]:
        index = k.by_workflow(f["workflow"])
    else:
        index = k.by_updated()
    top: float | str = "+inf"
    after_id = None
    if cursor:
        score, _, after_id = cursor.partition(":")
        try:
            top = float(score)
        except ValueError:
            raise BadFilter(f"cursor {cursor!r} is not one this page made") from None
    out: list[Any] = []
    offset, last = 0, None
    while len(out) < PAGE:
        batch = b.client.zrevrangebyscore(index, top, "-inf", start=offset, num=200, withscores=True)
        if not batch:
            return out, None
        offset += len(batch)
        pairs = [(m.decode(), s) for m, s in batch]
        if after_id is not None:  # (equal scores come in reverse order of their ids)
            pairs = [(m, s) for m, s in pairs if s < top or m < after_id]
        for run in b.runs.load_many([m for m, _s in pairs]):
            score = next(s for m, s in pairs if m == run.run_id)
            last = f"{score:.0f}:{run.run_id}"
            if _keeps(run, f):
                out.append(run)
                if len(out) == PAGE:
                    return out, last
    return out, last


def _keeps(run: Any, f: dict[str, Any]) -> bool:
    if f["status"] and RunStatus(run.status).value != f["status"]:
        return False
    if f["workflow"] and run.workflow_id != f["workflow"]:
        return False
    if f["wait_reason"] and (run.waiting is None or WaitReason(run.waiting.reason).value != f["wait_reason"]):
        return False
    have = run.vars.get("_attrs") or {}
    if any(str(have.get(k)) != v for k, v in f["attrs"].items()):
        return False
    if f["prefix"] and not run.run_id.startswith(f["prefix"]):
        return False
    updated = _ms(run.updated_at)
    return not (("since" in f and updated < f["since"]) or ("until" in f and updated > f["until"]))


def _ms(iso: str | None) -> float:
    try:
        return datetime.fromisoformat(str(iso)).timestamp() * 1000
    except ValueError:
        return 0.0


def observed_edges(client: Any, workflow_id: str, run_id: str, path: list[Any]) -> list[tuple[str, str]]:
    """Transitions seen in this run's ``path`` (its ledger's node ids, already read) and in the
    ledgers of the workflow's newest other runs."""
    others = [r.decode() for r in client.backend.client.zrevrange(client.backend.keys.by_workflow(workflow_id), 0, 9)]
    paths = [path, *([rec.get("node_id") for _i, rec in client.backend.ledger.page(rid, count=300)]
                     for rid in others if rid != run_id)]
    edges: list[tuple[str, str]] = []
    for nodes in paths:
        for a, b in zip(nodes, nodes[1:]):
            if a and b and a != b and (a, b) not in edges:
                edges.append((a, b))
    return edges


def llm_usage_of(state: Any, records: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """The run's LLM calls and tokens (from ``records``, its ledger's first ones) and its cost
    (``vars["_flow"]["cost_usd"]``, kept by flow control's price table); {} when it made none."""
    from ..flow.gate import llm_usage

    calls = tokens_in = tokens_out = 0
    for rec in records:
        if (rec.get("effect") or {}).get("type") == "llm_call" and rec.get("status") == "completed":
            got_in, got_out = llm_usage(rec.get("result"))
            calls, tokens_in, tokens_out = calls + 1, tokens_in + got_in, tokens_out + got_out
    flow = state.vars.get("_flow") if isinstance(state.vars, dict) else None
    cost = flow.get("cost_usd") if isinstance(flow, dict) else None
    if not calls and cost is None:
        return {}
    return {"calls": calls, "input_tokens": tokens_in, "output_tokens": tokens_out, "cost_usd": cost,
            "partial": total > len(records)}


def flow_usage(client: Any) -> list[dict[str, Any]]:
    """Each flow-control key with a rule: its rules' holders, bucket level and budget spent."""
    from ..flow.resolve import registry
    from ..flow.usage import key_usage

    reg = registry(client.backend)
    rules = reg.rules()
    return [key_usage(reg.client, reg.keys, key, rules) for key in dict.fromkeys(r.key for r in rules)
            if "*" not in key]


def is_secret(key: Any, secret_keys: tuple[str, ...]) -> bool:
    return any(s.lower() in str(key).lower() for s in secret_keys)


def redacted(value: Any, secret_keys: tuple[str, ...]) -> Any:
    if not secret_keys:
        return value
    if isinstance(value, dict):
        return {k: "[redacted]" if is_secret(k, secret_keys) else redacted(v, secret_keys) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, secret_keys) for v in value]
    return value


def pretty(value: Any, secret_keys: tuple[str, ...] = ()) -> str:
    return json.dumps(redacted(value, secret_keys), indent=2, default=str, ensure_ascii=False, sort_keys=True)


def took(rec: dict[str, Any]) -> str:
    if not rec.get("ended_at") or not rec.get("started_at"):
        return ""
    ms = _ms(rec["ended_at"]) - _ms(rec["started_at"])
    return f"{ms:.0f} ms" if ms < 10_000 else f"{ms / 1000:.1f} s"


def ago(iso: str | None) -> str:
    if not iso:
        return ""
    try:
        then = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    s = (datetime.now(timezone.utc) - (then if then.tzinfo else then.replace(tzinfo=timezone.utc))).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= size:
            return f"{s / size:.0f} {unit} ago"
    return f"{max(s, 0):.0f} s ago"
