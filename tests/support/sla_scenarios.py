"""Workflows with SLA rules, for the SLA tests (``tests/test_sla.py``, ``tests/test_stuck.py``).

:func:`register` puts them in a registry (the tests' own); imported by worker processes (listed
in ``ABSTRACTRUNTIME_IMPORTS``), the module registers them in the process-wide one, with the
webhook URL the test's receiver listens on (``SLA_TEST_WEBHOOK_URL``).
"""

from __future__ import annotations

import os
from typing import Any

from runtime import Effect, EffectType

from support.scenarios import one_effect

#: Seconds a run of these workflows may wait for its answer.
MAX_WAITING_S = 5.0


def register(reg: Any, *, url: str, max_waiting_s: float = MAX_WAITING_S) -> None:
    """``sla_ask_webhook`` (posts an alert), ``sla_ask_cancel`` (cancels) and ``sla_ask_fail``
    (fails): each asks a person a question and promises an answer within ``max_waiting_s``."""
    from workers.sla import SlaRule

    for action in ("webhook", "cancel", "fail"):
        workflow_id = f"sla_ask_{action}"
        reg.register_workflow(one_effect(Effect(type=EffectType.ASK_USER, payload={"prompt": "Approve?"},
                                                result_key="answer"), workflow_id=workflow_id), replace=True)
        reg.register_sla(workflow_id, SlaRule(f"answer-{action}", action=action,
                                              max_waiting_s={"user": max_waiting_s},
                                              url=url if action == "webhook" else None), replace=True)


if os.environ.get("SLA_TEST_WEBHOOK_URL"):
    from workers.registry import registry

    register(registry, url=os.environ["SLA_TEST_WEBHOOK_URL"])
