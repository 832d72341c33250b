"""What the rules of one key hold now, for ``abstractruntime limits usage KEY``.

Every rule the key carries (its own, and its pattern's it does not override) is read by
:meth:`stores.redis.admission.Admission.usage`, the one place that knows how the admission
script keeps its state (slot holders and their leases, the GCRA bucket, the budget window),
judged by the Redis clock; this adds the rule's id, label and origin, and how many items of the
key wait in its deferred queue. Nothing is written: expired leases show as such (the sweep
reclaims them), a budget window that is over shows as empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from stores.redis.admission import Admission
from stores.redis.flowkeys import FlowKeys, rule_id

from .resolve import rules_for_key
from .rules import LimitRule

__all__ = ["key_usage"]


def key_usage(client: Any, keys: FlowKeys, key: str, rules: Iterable[LimitRule]) -> dict[str, Any]:
    """The usage of every rule ``key`` carries, JSON-ready (times: epoch ms, Redis clock)."""
    rules = list(rules)
    own = {rule_id(r.key, r.scope, r.name) for r in rules if r.key == key}
    admission = Admission(client, keys)
    seconds, micros = client.time()
    out = []
    for rid, rule in rules_for_key(rules, key):
        entry: dict[str, Any] = {"rule_id": rid, "label": rule.label, "scope": rule.scope,
                                 "on_exhausted": rule.on_exhausted, "weight": rule.weight,
                                 # The pattern the rule comes from; None: the key's own rule.
                                 "pattern": None if rid in own else f"{rule.level}:*"}
        entry.update(admission.usage(rid, rule))
        out.append(entry)
    return {"key": key, "now_ms": int(seconds) * 1000 + int(micros) // 1000,
            "deferred": int(client.zcard(keys.deferred(key))), "rules": out}
