"""Flow control inside the engine: an effect attempt is admitted before its message is sent,
and gives its share back once its outcome is committed.

The tick that requests an effect admits it (``workers/engine/tick.py``); the effect task admits
every attempt again when it starts (``workers/engine/effects.py``): the attempt a tick admitted
finds its share taken, and a retry after its backoff or a message the sweep sent again is
admitted there, so a backoff holds nothing. The holder is the attempt, ``<run id>/<idempotency
key>/<attempt>``: admission is idempotent per holder, and the sweep reclaims the share of an
attempt whose worker died or whose message was lost (its lease, renewed while the effect
runs, expires). A run's start is admitted by the producer (``engine/producer.py``).

* admitted: the effect runs; after the commit of its outcome, an LLM call's reservation is
  settled with the response's ``usage`` (tokens, and dollars by the price table), then the
  share is released;
* deferred: the attempt waits in its key's fair-dispatch queue (``dispatch.py``), whose
  dispatcher admits it on its behalf and sends its message, under the lease the run holds;
  the run keeps field ``a`` (why, until when, where it is queued), for ``explain``, until its
  next commit;
* refused (a rule whose policy is ``fail``, or an estimate larger than a whole budget): the
  attempt fails for good with :class:`~workers.flow.BudgetExceeded`, no retry.

Events on the events stream (field ``event``): ``admission.deferred`` at each deferral,
``budget.exceeded`` when a token or cost budget defers or refuses, and ``budget.warning`` once
per budget window when an LLM call's settlement leaves it 80 % spent or more.

With no rule in the registry (read once per ``flow_rules_cache_s``), none of this costs a
Redis command.
"""

from __future__ import annotations

import json
from typing import Any

from runtime import EffectType, RunState
from runtime.step import PendingEffect
from stores.redis.admission import Admission, Decision, Verdict
from stores.redis.flowkeys import FlowKeys

from .. import metrics
from .dispatch import fairness_key
from .resolve import Applicable, registry, resolver_for
from .rules import FLOW_VARS, AdmissionKeys

__all__ = ["FlowGate", "holder_of", "llm_usage", "WARN_AT"]

#: Share of a budget spent at which ``budget.warning`` is sent (once per window).
WARN_AT = 0.8


def holder_of(run_id: str, pending: PendingEffect) -> str:
    """The holder an effect attempt takes its shares as."""
    return f"{run_id}/{pending.idempotency_key}/{pending.attempt}"


def _kind(pending: PendingEffect) -> str:
    etype = pending.effect.type
    return etype.value if isinstance(etype, EffectType) else str(etype)


def _model_and_tools(pending: PendingEffect) -> tuple[str | None, tuple[str, ...]]:
    payload = pending.effect.payload if isinstance(pending.effect.payload, dict) else {}
    model = payload.get("model")
    calls = payload.get("tool_calls") or []
    tools = tuple(str(c.get("name")) for c in calls if isinstance(c, dict) and c.get("name"))
    return (str(model) if model else None), tools


def llm_usage(result: Any) -> tuple[int, int]:
    """(input tokens, output tokens) of an LLM result's ``usage`` (0, 0 when it has none)."""
    usage = result.get("usage") if isinstance(result, dict) else None
    if not isinstance(usage, dict):
        return 0, 0

    def pick(*names: str) -> int:
        for name in names:
            value = usage.get(name)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        return 0

    given_in, given_out = pick("prompt_tokens", "input_tokens"), pick("completion_tokens", "output_tokens")
    if not given_in and not given_out:
        return pick("total_tokens"), 0
    return given_in, given_out


class FlowGate:
    """The engine's flow control on one backend (one per engine)."""

    def __init__(self, backend: Any, settings: Any) -> None:
        self.backend = backend
        self.settings = settings
        self.keys = FlowKeys(backend.keys.prefix)
        self.admission = Admission(backend.client, self.keys)
        self.resolver = resolver_for(backend, settings.flow_rules_cache_s)

    def active(self) -> bool:
        """Is any rule registered (as last read)?"""
        return bool(self.resolver.rules())

    @staticmethod
    def path_of(run: RunState) -> list[str]:
        """The run's key path (``global -> tenant -> user -> agent``)."""
        return AdmissionKeys.from_dict(run.vars.get(FLOW_VARS)).path(run.workflow_id)

    def rules_for(self, run: RunState, pending: PendingEffect) -> list[Applicable]:
        model, tools = _model_and_tools(pending)
        return self.resolver.applicable(self.path_of(run), _kind(pending), model=model, tools=tools)

    def admit(self, run: RunState, pending: PendingEffect, *, lease_ms: int, in_turn: bool = False
              ) -> tuple[Decision, list[Applicable]] | None:
        """Admit an effect attempt; None when no rule counts it. ``in_turn``: deferred (kind
        ``queue``) while its fairness key's queue holds anything (a new attempt does not overtake
        the ones that wait; a tick checks so before it sends)."""
        if not self.active():
            return None
        rules = self.rules_for(run, pending)
        if not rules:
            return None
        estimate = self.estimate(run, pending, rules)
        if isinstance(estimate, Decision):
            return estimate, rules
        tokens, cost = estimate
        behind = self.keys.deferred(fairness_key(self.path_of(run))) if in_turn else None
        decision = self.admission.acquire(holder_of(run.run_id, pending), rules, tokens=tokens, cost_usd=cost,
                                          lease_ms=lease_ms, behind=behind)
        return decision, rules

    def estimate(self, run: RunState, pending: PendingEffect, rules: list[Applicable]
                 ) -> tuple[int, float] | Decision:
        """The tokens and dollars an LLM call reserves on the budget rules among ``rules`` ((0, 0.0)
        for anything else), or the refusal when a cost rule counts it and no price is known."""
        if _kind(pending) != "llm_call" or not any(r.tokens is not None or r.cost_usd is not None for _, r in rules):
            return 0, 0.0
        tokens, cost = self._estimate_tokens(pending), 0.0
        costed = [rid for rid, r in rules if r.cost_usd is not None]
        if costed:
            model, _tools = _model_and_tools(pending)
            try:
                cost = registry(self.backend).cost_usd(model or "*", 0, tokens)
            except KeyError:  # UnknownModelPrice: no price for it, no default (docs/flow-control.md)
                return Decision(Verdict.REFUSED, costed[0], "cost_usd",
                                reason=f"no price for model {model or '(none named)'} and no default price "
                                       "(abstractruntime prices set)")
        return tokens, cost

    def _estimate_tokens(self, pending: PendingEffect) -> int:
        payload = pending.effect.payload if isinstance(pending.effect.payload, dict) else {}
        raw = payload.get("params")
        params: dict[str, Any] = raw if isinstance(raw, dict) else {}
        for value in (payload.get("max_tokens"), params.get("max_tokens"), payload.get("max_output_tokens")):
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                return value
        return int(self.settings.flow_llm_estimate_tokens)

    def settle(self, run: RunState, pending: PendingEffect, result: Any, rules: list[Applicable] | None = None
               ) -> bool:
        """After the outcome's commit: settle an LLM call's reservation with its real usage, then
        give the attempt's shares back (and warn when a budget is 80 % spent). True when deferred
        work waits (read in the release's round trip): a dispatcher pass should follow."""
        run_id = run.run_id
        holder = holder_of(run_id, pending)
        if _kind(pending) == "llm_call":
            tokens_in, tokens_out = llm_usage(result)
            if tokens_in or tokens_out:
                # :meth:`price` put the call's cost on the result (absent: no price; the tokens still count)
                cost = float(result.get("cost_usd") or 0.0) if isinstance(result, dict) else 0.0
                self.admission.reconcile(holder, None, tokens_in + tokens_out, cost)
                self._warn(run, rules if rules is not None else self.rules_for(run, pending))
        # with its rules: one round trip, which also reads whether anything waits in fair dispatch
        return self.admission.release_peek(holder, rules, peek=self.keys.ready())[2] > 0

    def _warn(self, run: RunState, rules: list[Applicable]) -> None:
        """``budget.warning``, once per window, for each budget of this call 80 % spent or more."""
        for rid, rule in rules:
            if rule.tokens is None and rule.cost_usd is None:
                continue
            budget = self.admission.usage(rid, rule).get("budget") or {}
            spent = max(budget.get("tokens_spent", 0) / rule.tokens if rule.tokens else 0.0,
                        budget.get("cost_usd_spent", 0.0) / rule.cost_usd if rule.cost_usd else 0.0)
            if spent < WARN_AT:
                continue
            window, resets = int(budget.get("window_start_ms", 0)), int(budget.get("resets_ms", 0))
            if self.backend.client.set(self.keys.warned(rid, window), "1", nx=True,
                                       px=max(1000, resets - window)):
                self.event("budget.warning", run.run_id, rule=rule.label, spent_pct=round(spent * 100, 1),
                           resets_ms=resets)

    def event(self, name: str, run_id: str, **fields: Any) -> None:
        """One flow-control event on the events stream (beside the commits' and the detector's)."""
        entry = {"event": name, "run_id": run_id, **{k: "" if v is None else str(v) for k, v in fields.items()}}
        self.backend.client.xadd(self.backend.keys.events(), entry, maxlen=self.backend.events_maxlen,
                                 approximate=True)

    def note_refused(self, run_id: str, decision: Decision, rules: list[Applicable]) -> None:
        """A budget refused the attempt for good: ``budget.exceeded``."""
        if decision.kind in ("tokens", "cost_usd"):
            rule = dict(rules).get(decision.rule_id or "")
            self.event("budget.exceeded", run_id, rule=rule.label if rule else decision.rule_id,
                       kind=decision.kind, refused=decision.reason)

    def price(self, run: RunState, pending: PendingEffect, result: Any) -> None:
        """Put the cost of a completed LLM call on its result (``cost_usd``, by the price table;
        recorded with the step) and add it to the run's total (``vars["_flow"]["cost_usd"]``,
        committed with it: a run's cost is one read). Nothing when the response has no
        ``usage`` or the table has no price for the model and no default."""
        if _kind(pending) != "llm_call" or not isinstance(result, dict):
            return
        tokens_in, tokens_out = llm_usage(result)
        if not tokens_in and not tokens_out:
            return
        model = str(result.get("model") or _model_and_tools(pending)[0] or "*")
        flow_keys = run.vars.get(FLOW_VARS)
        tenant = flow_keys.get("tenant") if isinstance(flow_keys, dict) else None
        metrics.llm_tokens(model, tokens_in, tokens_out, tenant if isinstance(tenant, str) else None)
        try:
            cost = registry(self.backend).cost_usd(model, tokens_in, tokens_out)
        except KeyError:
            return
        result["cost_usd"] = round(cost, 8)
        metrics.llm_cost(model, cost, tenant if isinstance(tenant, str) else None)
        flow = run.vars.get(FLOW_VARS)
        flow = dict(flow) if isinstance(flow, dict) else {}
        flow["cost_usd"] = round(float(flow.get("cost_usd") or 0.0) + cost, 8)
        run.vars[FLOW_VARS] = flow

    def renew(self, run_id: str, pending: PendingEffect, lease_ms: int) -> bool:
        """Renew an attempt's shares (False: they lapsed; they count no more)."""
        return self.admission.renew(holder_of(run_id, pending), lease_ms)

    def keep_deferral(self, run_id: str, decision: Decision, rules: list[Applicable], now_ms: int,
                      parked: tuple[str, str] | None = None) -> None:
        """Field ``a`` of the run hash: why and until when the run's start or effect waits, and
        ``parked`` (its fair-dispatch queue's key, its item id); the next commit removes it."""
        rule = dict(rules).get(decision.rule_id or "")
        info = {"rule_id": decision.rule_id, "label": rule.label if rule is not None else decision.rule_id,
                "kind": decision.kind, "until_ms": decision.until_ms, "at_ms": now_ms}
        if parked is not None:
            info.update(queue_key=parked[0], item_id=parked[1])
        self.backend.client.hset(self.backend.keys.run(run_id), "a", json.dumps(info))
        self.event("admission.deferred", run_id, rule=info["label"], kind=decision.kind, until_ms=decision.until_ms)
        if decision.kind in ("tokens", "cost_usd"):
            self.event("budget.exceeded", run_id, rule=info["label"], kind=decision.kind, until_ms=decision.until_ms)
