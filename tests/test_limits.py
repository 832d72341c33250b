"""RuntimeConfig and the limits API, on every backend."""

from __future__ import annotations

from runtime import LimitWarning, RuntimeConfig

from support.scenarios import chain

LIMIT_KEYS = {"max_iterations", "current_iteration", "max_tokens", "max_output_tokens", "estimated_tokens_used",
              "max_history_messages", "warn_iterations_pct", "warn_tokens_pct"}


def test_config_defaults_and_limits_dict():
    cfg = RuntimeConfig()
    assert cfg.to_limits_dict() == {"max_iterations": 25, "current_iteration": 0, "max_tokens": 32768,
                                    "max_output_tokens": None, "estimated_tokens_used": 0,
                                    "max_history_messages": -1, "warn_iterations_pct": 80, "warn_tokens_pct": 80}
    assert RuntimeConfig(max_tokens=1000).to_limits_dict()["max_tokens"] == 1000
    with_caps = cfg.with_capabilities({"max_tokens": 8000})
    assert with_caps.to_limits_dict()["max_tokens"] == 8000
    assert with_caps.with_capabilities({"vision": True}).model_capabilities == {"vision": True}, "replaced"
    assert cfg.model_capabilities == {}


def test_limit_warning_pct():
    assert LimitWarning("tokens", "warning", 850, 1000).pct == 85.0
    assert LimitWarning("tokens", "warning", 1, 3).pct == 33.3
    assert LimitWarning("iterations", "exceeded", 5, 0).pct == 0.0


def test_status_checks_and_updates(make_runtime):
    rt = make_runtime(config=RuntimeConfig(max_iterations=10, max_tokens=1000))
    run_id = rt.start(workflow=chain(2))
    assert rt.get_limit_status(run_id) == {
        "iterations": {"current": 0, "max": 10, "pct": 0.0, "warning": False},
        "tokens": {"estimated_used": 0, "max": 1000, "pct": 0.0, "warning": False},
        "history": {"max_messages": -1},
    }
    assert rt.check_limits(rt.get_state(run_id)) == [], "no tokens used: no token warning"

    assert rt.update_limits(run_id, {"current_iteration": 8, "estimated_tokens_used": 1200, "bogus": 1}) is None
    state = rt.get_state(run_id)
    assert set(state.vars["_limits"]) == LIMIT_KEYS, "unknown keys are ignored"
    warnings = {w.limit_type: w for w in rt.check_limits(state)}
    assert (warnings["iterations"].status, warnings["iterations"].pct) == ("warning", 80.0)
    assert (warnings["tokens"].status, warnings["tokens"].current) == ("exceeded", 1200)
    status = rt.get_limit_status(run_id)
    assert status["iterations"]["warning"] and status["tokens"]["pct"] == 120.0

    rt.update_limits(run_id, {"current_iteration": 10, "max_iterations": 0})
    # A zero maximum falls back to the default (25), as in the reference.
    assert rt.get_limit_status(run_id)["iterations"]["max"] == 25
    rt.update_limits(run_id, {"max_iterations": 10})
    assert [w.status for w in rt.check_limits(rt.get_state(run_id)) if w.limit_type == "iterations"] == ["exceeded"]
