"""Run limits (iterations, tokens, history) kept in ``vars["_limits"]``, and the vars namespaces.

By convention a run's vars hold: ``context`` (inputs), ``scratchpad`` (working notes),
``_runtime`` (kernel bookkeeping such as ``effect_seq``), ``_temp`` (not meant to last) and
``_limits`` (the eight keys below).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "RuntimeConfig",
    "LimitWarning",
    "LIMITS",
    "CONTEXT",
    "SCRATCHPAD",
    "RUNTIME",
    "TEMP",
    "LIMIT_KEYS",
    "DEFAULT_MAX_ITERATIONS",
    "DEFAULT_MAX_TOKENS",
    "DEFAULT_WARN_PCT",
    "ensure_limits",
    "get_limits",
    "get_context",
    "get_scratchpad",
    "get_runtime_ns",
    "get_temp",
    "limit_status",
    "limit_warnings",
]

CONTEXT = "context"
SCRATCHPAD = "scratchpad"
RUNTIME = "_runtime"
TEMP = "_temp"
LIMITS = "_limits"

#: Iterations allowed when neither the config nor the run says otherwise.
DEFAULT_MAX_ITERATIONS = 25
#: Context window in tokens when neither the config nor the model capabilities give one.
DEFAULT_MAX_TOKENS = 32768
#: Percentage of a limit at which a warning is raised.
DEFAULT_WARN_PCT = 80

#: The only keys of ``vars["_limits"]``; ``update_limits`` ignores any other.
LIMIT_KEYS = (
    "max_iterations",
    "current_iteration",
    "max_tokens",
    "max_output_tokens",
    "estimated_tokens_used",
    "max_history_messages",
    "warn_iterations_pct",
    "warn_tokens_pct",
)


@dataclass(frozen=True)
class RuntimeConfig:
    """Limits a runtime gives every run it starts."""

    max_iterations: int = DEFAULT_MAX_ITERATIONS
    warn_iterations_pct: int = DEFAULT_WARN_PCT
    max_tokens: int | None = None
    max_output_tokens: int | None = None
    warn_tokens_pct: int = DEFAULT_WARN_PCT
    max_history_messages: int = -1
    model_capabilities: dict[str, Any] = field(default_factory=dict)

    def to_limits_dict(self) -> dict[str, Any]:
        """The initial ``vars["_limits"]`` of a run."""
        max_tokens = self.max_tokens
        if max_tokens is None:
            max_tokens = self.model_capabilities.get("max_tokens", DEFAULT_MAX_TOKENS)
        return {
            "max_iterations": self.max_iterations,
            "current_iteration": 0,
            "max_tokens": max_tokens,
            "max_output_tokens": self.max_output_tokens,
            "estimated_tokens_used": 0,
            "max_history_messages": self.max_history_messages,
            "warn_iterations_pct": self.warn_iterations_pct,
            "warn_tokens_pct": self.warn_tokens_pct,
        }

    def with_capabilities(self, capabilities: dict[str, Any]) -> RuntimeConfig:
        """A copy whose ``model_capabilities`` are replaced (not merged) by ``capabilities``."""
        return replace(self, model_capabilities=dict(capabilities))


@dataclass
class LimitWarning:
    """A limit that is near (``warning``) or at/over (``exceeded``) its maximum."""

    limit_type: str
    status: str
    current: int | float
    maximum: int | float
    pct: float = 0.0

    def __post_init__(self) -> None:
        if self.maximum and self.maximum > 0:
            self.pct = round(self.current / self.maximum * 100, 1)

    def to_dict(self) -> dict[str, Any]:
        return {"limit_type": self.limit_type, "status": self.status, "current": self.current,
                "maximum": self.maximum, "pct": self.pct}


def _ns(vars: dict[str, Any], name: str) -> dict[str, Any]:
    value = vars.get(name)
    if not isinstance(value, dict):
        value = {}
        vars[name] = value
    return value


def ensure_limits(vars: dict[str, Any], config: RuntimeConfig | None = None) -> dict[str, Any]:
    """``vars["_limits"]``, created from ``config`` (or the defaults) when absent."""
    if not isinstance(vars.get(LIMITS), dict):
        vars[LIMITS] = (config or RuntimeConfig()).to_limits_dict()
    return vars[LIMITS]  # type: ignore[no-any-return]


def get_limits(vars: dict[str, Any]) -> dict[str, Any]:
    """``vars["_limits"]``, or {} when the run has none."""
    value = vars.get(LIMITS)
    return value if isinstance(value, dict) else {}


def get_context(vars: dict[str, Any]) -> dict[str, Any]:
    return _ns(vars, CONTEXT)


def get_scratchpad(vars: dict[str, Any]) -> dict[str, Any]:
    return _ns(vars, SCRATCHPAD)


def get_runtime_ns(vars: dict[str, Any]) -> dict[str, Any]:
    return _ns(vars, RUNTIME)


def get_temp(vars: dict[str, Any]) -> dict[str, Any]:
    return _ns(vars, TEMP)


def _pct(current: float, maximum: float) -> float:
    return round(current / maximum * 100, 1) if maximum > 0 else 0.0


def limit_status(vars: dict[str, Any]) -> dict[str, Any]:
    """Iterations, tokens and history against their maxima (zero or missing -> defaults)."""
    lim = get_limits(vars)
    cur_it = lim.get("current_iteration") or 0
    max_it = lim.get("max_iterations") or DEFAULT_MAX_ITERATIONS
    warn_it = lim.get("warn_iterations_pct") or DEFAULT_WARN_PCT
    used = lim.get("estimated_tokens_used") or 0
    max_tok = lim.get("max_tokens") or DEFAULT_MAX_TOKENS
    warn_tok = lim.get("warn_tokens_pct") or DEFAULT_WARN_PCT
    it_pct = _pct(cur_it, max_it)
    tok_pct = _pct(used, max_tok)
    return {
        "iterations": {"current": cur_it, "max": max_it, "pct": it_pct, "warning": it_pct >= warn_it},
        "tokens": {"estimated_used": used, "max": max_tok, "pct": tok_pct, "warning": tok_pct >= warn_tok},
        "history": {"max_messages": lim.get("max_history_messages", -1)},
    }


def limit_warnings(vars: dict[str, Any]) -> list[LimitWarning]:
    """Limits at ``exceeded`` (>= max) or ``warning`` (>= warn pct); tokens only once some are used."""
    lim = get_limits(vars)
    out: list[LimitWarning] = []
    cur_it = lim.get("current_iteration") or 0
    max_it = lim.get("max_iterations") or DEFAULT_MAX_ITERATIONS
    warn_it = lim.get("warn_iterations_pct") or DEFAULT_WARN_PCT
    if cur_it >= max_it:
        out.append(LimitWarning("iterations", "exceeded", cur_it, max_it))
    elif _pct(cur_it, max_it) >= warn_it:
        out.append(LimitWarning("iterations", "warning", cur_it, max_it))
    used = lim.get("estimated_tokens_used") or 0
    if used:
        max_tok = lim.get("max_tokens") or DEFAULT_MAX_TOKENS
        warn_tok = lim.get("warn_tokens_pct") or DEFAULT_WARN_PCT
        if used >= max_tok:
            out.append(LimitWarning("tokens", "exceeded", used, max_tok))
        elif _pct(used, max_tok) >= warn_tok:
            out.append(LimitWarning("tokens", "warning", used, max_tok))
    return out
