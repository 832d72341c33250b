"""Flow control (issue 14): per-key concurrency, rate limits, priorities and LLM token and cost
budgets, admitted in one atomic check. ``docs/flow-control.md`` describes it."""

from .rules import AdmissionKeys, BudgetExceeded, InvalidLimitRule, LimitRule

__all__ = ["AdmissionKeys", "BudgetExceeded", "InvalidLimitRule", "LimitRule"]
