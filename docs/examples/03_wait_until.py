"""Wait until: a run sleeps for about a second and the scheduler's thread wakes it.

Run it from the repository root:  python docs/examples/03_wait_until.py
"""

import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

try:
    import runtime  # noqa: F401
except ImportError:  # not installed: use the checkout this file lives in
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from runtime import Effect, EffectType, StepPlan, WorkflowSpec, create_scheduled_runtime  # noqa: E402


def sleep(run, ctx):
    # `until` is an ISO-8601 time; ctx.now_iso() is the current UTC time.
    until = datetime.fromisoformat(ctx.now_iso()) + timedelta(seconds=1)
    run.vars["until"] = until.isoformat()
    return StepPlan(node_id="sleep", effect=Effect(EffectType.WAIT_UNTIL, {"until": until.isoformat()}),
                    next_node="wake")


def wake(run, ctx):
    return StepPlan(node_id="wake", complete_output={"slept_until": run.vars["until"], "woke_at": ctx.now_iso()})


workflow = WorkflowSpec(workflow_id="nap", entry_node="sleep", nodes={"sleep": sleep, "wake": wake})

woke = threading.Event()
# The scheduler looks for due timers every 0.1 s and ticks the runs it finds.
with create_scheduled_runtime(workflows=[workflow], poll_interval_s=0.1, on_run_resumed=lambda s: woke.set()) as rt:
    began = time.monotonic()
    run_id, state = rt.run(workflow)
    print(f"{state.status.value} until {state.waiting.until}")
    if not woke.wait(timeout=10):
        sys.exit("the scheduler did not wake the run within 10 s")
    state = rt.get_state(run_id)
    print(f"woken by the scheduler after {time.monotonic() - began:.1f} s; output: {state.output}")
    print(f"status: {state.status.value}")
