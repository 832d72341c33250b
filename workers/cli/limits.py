"""``abstractruntime limits`` and ``abstractruntime prices``: flow-control rules and the price table.

Both live in Redis and apply to every worker within ``ABSTRACTRUNTIME_FLOW_RULES_CACHE_S``
(``docs/flow-control.md``). ``limits set`` writes one rule, replacing the rule of the same key,
scope and name (the rule id ``KEY|SCOPE|NAME``) whole: options not given take their defaults,
they are not merged with the old rule. A refused rule or price names its option, exits 2 and
writes nothing. ``limits usage`` reads the rules' state (holders, rate buckets, budget windows)
by the Redis clock and changes nothing.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

import click

from ._common import EXIT_NOT_FOUND, EXIT_USAGE, CliError, State, _Group, _require_deployment, pass_state

__all__ = ["limits", "prices", "parse_window"]

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")
#: LimitRule field -> how the command line names it.
_OPTION = {"key": "KEY", "name": "--name", "scope": "--scope", "concurrency": "--concurrency", "rate": "--rate",
           "per_s": "--per", "burst": "--burst", "tokens": "--tokens", "cost_usd": "--cost-usd",
           "window_s": "--window", "weight": "--weight", "on_exhausted": "--on-exhausted",
           "model": "MODEL", "input_usd_per_mtok": "--input-per-mtok", "output_usd_per_mtok": "--output-per-mtok"}


def parse_window(option: str, text: str) -> float:
    """Seconds in ``1s``, ``1m``, ``1h``, ``1d`` (or ``30``, seconds); CliError naming ``option`` otherwise."""
    m = _DURATION.match(text or "")
    if m is None:
        raise CliError(f"{option}: not a duration: {text!r} (examples: 1s, 1m, 1h, 1d)", EXIT_USAGE)
    unit = m[2].lower()
    if unit not in _UNITS:
        raise CliError(f"{option}: unknown unit {m[2]!r} in {text!r} (s, m, h or d)", EXIT_USAGE)
    seconds = float(m[1]) * _UNITS[unit]
    if seconds <= 0:
        raise CliError(f"{option}: must be above 0, got {text!r}", EXIT_USAGE)
    return seconds


def _refused(exc: Any) -> CliError:
    """An ``InvalidLimitRule`` or ``InvalidPrice`` as the command line says it (exit 2)."""
    return CliError(f"{_OPTION.get(exc.field, exc.field)}: {exc.problem}", EXIT_USAGE)


def _span(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def _at(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def describe(rule: Any) -> str:
    """``concurrency 2, rate 10/1s burst 5, 20000 tokens/1m, $5/1h; wait, weight 1``."""
    parts = []
    if rule.concurrency is not None:
        parts.append(f"concurrency {rule.concurrency}")
    if rule.rate is not None:
        parts.append(f"rate {rule.rate:g}/{_span(rule.per_s)}" + (f" burst {rule.burst}" if rule.burst else ""))
    if rule.tokens is not None:
        parts.append(f"{rule.tokens} tokens/{_span(rule.window_s)}")
    if rule.cost_usd is not None:
        parts.append(f"${rule.cost_usd:g}/{_span(rule.window_s)}")
    return f"{', '.join(parts)}; {rule.on_exhausted}, weight {rule.weight}"


def _registry(state: State) -> Any:
    from ..flow.resolve import registry

    _require_deployment(state)
    return registry(state.client.backend)


def _key(key: str) -> tuple[str, str]:
    from ..flow.rules import InvalidLimitRule, parse_key

    try:
        return parse_key(key)
    except InvalidLimitRule as exc:
        raise _refused(exc) from None


# -- limits ----------------------------------------------------------------------------------------


_LIMITS_EPILOG = """\b
Examples:
  abstractruntime limits set 'tenant:*' --concurrency 2 --rate 10 --per 1s --burst 5
  abstractruntime limits set tenant:acme --name llm --scope llm_call --tokens 20000 --window 1m
  abstractruntime limits set global --concurrency 50
  abstractruntime limits show tenant:acme
  abstractruntime limits usage tenant:acme --json
  abstractruntime limits delete 'tenant:acme|llm_call|llm'
"""


@click.group(cls=_Group, epilog=_LIMITS_EPILOG)
def limits() -> None:
    """Flow-control rules: concurrency, rates, token and cost budgets per key (tenant:acme, tenant:*...)."""


@limits.command("set")
@click.argument("key")
@click.option("--name", default="limit", show_default=True, help="Names the rule (unique per key and scope).")
@click.option("--scope", default="*", show_default=True,
              help="What it counts: *, run, llm_call, tool_calls, start_subworkflow, model:NAME or tool:NAME.")
@click.option("--concurrency", type=int, help="Holders at once (run starts and effects until their result commits).")
@click.option("--rate", type=float, help="Admissions per --per.")
@click.option("--per", metavar="DURATION", help="The rate's period: 1s, 1m... [1s]")
@click.option("--burst", type=int, default=0, show_default=True, help="Admissions above the rate at once, after a "
              "quiet spell.")
@click.option("--tokens", type=int, help="LLM tokens per --window.")
@click.option("--cost-usd", "cost_usd", type=float, help="US dollars per --window (by the price table).")
@click.option("--window", metavar="DURATION", help="The budget's window: 1m, 1h, 1d... [1m]")
@click.option("--weight", type=int, default=1, show_default=True, help="The key's share in fair dispatch.")
@click.option("--on-exhausted", "on_exhausted", default="wait", show_default=True, metavar="wait|fail",
              help="wait: deferred until the rule admits it; fail: the effect fails with BudgetExceeded.")
@pass_state
def limits_set(state: State, key: str, name: str, scope: str, concurrency: int | None, rate: float | None,
               per: str | None, burst: int, tokens: int | None, cost_usd: float | None, window: str | None,
               weight: int, on_exhausted: str) -> None:
    """Set the rule NAME of KEY for SCOPE (global, tenant:acme, tenant:*, user:u-7, agent:support), whole."""
    from stores.redis.flowkeys import rule_id

    from ..flow.rules import InvalidLimitRule, LimitRule

    _key(key)
    if per is not None and rate is None:
        raise CliError("--per: a period needs --rate", EXIT_USAGE)
    if window is not None and tokens is None and cost_usd is None:
        raise CliError("--window: a window needs --tokens or --cost-usd", EXIT_USAGE)
    if all(v is None for v in (concurrency, rate, tokens, cost_usd)):
        raise CliError("a rule needs a limit: --concurrency, --rate, --tokens or --cost-usd", EXIT_USAGE)
    try:
        rule = LimitRule(key=key, name=name, scope=scope, concurrency=concurrency, rate=rate,
                         per_s=parse_window("--per", per) if per is not None else 1.0, burst=burst,
                         tokens=tokens, cost_usd=cost_usd,
                         window_s=parse_window("--window", window) if window is not None else 60.0,
                         weight=weight, on_exhausted=on_exhausted)
    except InvalidLimitRule as exc:
        raise _refused(exc) from None
    rid = _registry(state).set_rule(rule)
    assert rid == rule_id(rule.key, rule.scope, rule.name)
    state.out({"rule_id": rid, **rule.to_dict()}, f"set {rid}: {describe(rule)}")


@limits.command("show")
@click.argument("key", required=False)
@pass_state
def limits_show(state: State, key: str | None) -> None:
    """Every rule, or those KEY carries (its own, and its pattern's it does not override)."""
    from ..flow.resolve import rules_for_key

    if key is not None:
        _key(key)
    rules = _registry(state).rules()
    found: list[tuple[str, Any, str | None]]
    if key is None:
        found = [(f"{r.key}|{r.scope}|{r.name}", r, None) for r in rules]
    else:
        own = {(r.scope, r.name) for r in rules if r.key == key}
        found = [(rid, r, None if (r.scope, r.name) in own else f"{r.level}:*") for rid, r in rules_for_key(rules, key)]
    rows = [{"rule_id": rid, **r.to_dict(), "inherited_from": origin} for rid, r, origin in found]

    def human() -> None:
        if not rows:
            click.echo("no rules" + (f" for {key}" if key else ""))
        for rid, r, origin in found:
            click.echo(f"{rid:<40} {describe(r)}" + (f"  (from {origin})" if origin else ""))

    state.out(rows, human)


@limits.command("delete")
@click.argument("rule_id")
@pass_state
def limits_delete(state: State, rule_id: str) -> None:
    """Delete the rule RULE_ID (KEY|SCOPE|NAME, as `limits show` lists it)."""
    parts = rule_id.split("|")
    if len(parts) != 3 or not all(parts):
        raise CliError(f"RULE_ID: {rule_id!r} is not KEY|SCOPE|NAME (as `abstractruntime limits show` lists it)",
                       EXIT_USAGE)
    level, name = _key(parts[0])
    reg = _registry(state)
    if not reg.delete_rule(rule_id):
        pattern = f"{level}:*|{parts[1]}|{parts[2]}"
        hint = f"; it comes from the pattern: delete {pattern}" if name != "*" and reg.rule(pattern) else ""
        raise CliError(f"no rule {rule_id}{hint}", EXIT_NOT_FOUND)
    state.out({"deleted": rule_id}, f"deleted {rule_id}")


@limits.command("usage")
@click.argument("key")
@pass_state
def limits_usage(state: State, key: str) -> None:
    """What KEY's rules hold now: slot holders, rate buckets, budget spent and when it resets."""
    from ..flow.usage import key_usage

    level, name = _key(key)
    if name == "*":
        raise CliError(f"KEY: usage is per concrete key ({level}:acme), not a pattern: {key}", EXIT_USAGE)
    reg = _registry(state)
    usage = key_usage(reg.client, reg.keys, key, reg.rules())
    state.out(usage, lambda: _print_usage(usage))


def _print_usage(usage: dict[str, Any]) -> None:
    # The fields are Admission.usage's (stores/redis/admission.py); read with .get, so that a field
    # it adds or drops does not break the human output (--json prints them all).
    click.echo(f"{usage['key']}  at {_at(usage['now_ms'])}  deferred items: {usage['deferred']}")
    if not usage["rules"]:
        click.echo("  no rule of its own nor of its pattern (the global rules still count its runs: "
                   "abstractruntime limits usage global)")
    for row in usage["rules"]:
        click.echo(f"  {row['rule_id']}" + (f"  (from {row['pattern']})" if row["pattern"] else ""))
        if "concurrency" in row:
            c = row["concurrency"]
            live = c.get("holders", [])
            expired = f" (+{c['expired']} expired, reclaimed by the sweep)" if c.get("expired") else ""
            holders = ", ".join(f"{h.get('holder')} until {_at(h.get('expires_ms'))}" for h in live)
            click.echo(f"    concurrency  {len(live)} of {c.get('limit')} held{expired}"
                       + (f": {holders}" if holders else ""))
        if "rate" in row:
            b = row["rate"]
            free = b.get("next_free_ms")
            later = f"; next at {_at(free)}" if not b.get("available") and free else ""
            click.echo(f"    rate         {b.get('available')} available now (of {1 + int(b.get('burst') or 0)} "
                       f"at most at once){later}")
        if "budget" in row:
            b = row["budget"]
            spent = []
            if b.get("tokens_limit") is not None:
                spent.append(f"{b.get('tokens_spent', 0):,} of {b['tokens_limit']:,} tokens")
            if b.get("cost_usd_limit") is not None:
                spent.append(f"${b.get('cost_usd_spent', 0):.4f} of ${b['cost_usd_limit']:g}")
            click.echo(f"    budget       {', '.join(spent)} this window; resets {_at(b.get('resets_ms'))}"
                       f" ({b.get('open_reservations', 0)} open reservation(s))")


# -- prices ----------------------------------------------------------------------------------------


@click.group(cls=_Group)
def prices() -> None:
    """The price table: what each LLM model costs, per million tokens (`*`: every model not listed)."""


@prices.command("set")
@click.argument("model")
@click.option("--input-per-mtok", "input_per_mtok", type=float, required=True, help="US dollars per million input "
              "tokens.")
@click.option("--output-per-mtok", "output_per_mtok", type=float, required=True, help="US dollars per million "
              "output tokens.")
@pass_state
def prices_set(state: State, model: str, input_per_mtok: float, output_per_mtok: float) -> None:
    """Set what MODEL costs ('*': the price of every model not listed)."""
    from stores.redis.limits import InvalidPrice, Price, check_model

    try:
        check_model(model)
        Price(input_per_mtok, output_per_mtok)  # refused before anything is written
    except InvalidPrice as exc:
        raise _refused(exc) from None
    price = _registry(state).set_price(model, input_per_mtok, output_per_mtok)
    state.out({"model": model, **price.to_dict()},
              f"{model}: ${input_per_mtok:g} in, ${output_per_mtok:g} out per million tokens")


@prices.command("show")
@pass_state
def prices_show(state: State) -> None:
    """The price table, and how a model it does not list is priced."""
    table = _registry(state).prices()

    def human() -> None:
        for model, p in table.items():
            click.echo(f"{model:<32} ${p.input_usd_per_mtok:g} in, ${p.output_usd_per_mtok:g} out per million tokens")
        if "*" in table:
            click.echo("models not listed: priced as `*`")
        else:
            click.echo("models not listed: refused (no `*` price; set one with abstractruntime prices set '*' ...)")

    state.out({model: p.to_dict() for model, p in table.items()}, human)


@prices.command("delete")
@click.argument("model")
@pass_state
def prices_delete(state: State, model: str) -> None:
    """Remove MODEL's price ('*': the default price)."""
    from stores.redis.limits import InvalidPrice, check_model

    try:
        check_model(model)
    except InvalidPrice as exc:
        raise _refused(exc) from None
    if not _registry(state).delete_price(model):
        raise CliError(f"no price for {model!r}", EXIT_NOT_FOUND)
    state.out({"deleted": model}, f"deleted the price of {model}")
