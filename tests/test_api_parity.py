"""The public signatures that code written for AbstractRuntime 0.2.0 calls, checked one by one.

Each expectation is a signature written as 0.2.0 documents it (SEMANTICS_DETAIL.md): the
parameter names, which are keyword-only, and the defaults. Ours may add parameters, but only
with defaults, so a call written for 0.2.0 still binds. A change that renames a parameter,
makes a keyword-only one positional (or the reverse), or changes a default fails here.
In the stubs, ``ANY`` means 0.2.0 states no default (ours may or may not have one),
``FACTORY`` a dataclass field filled by a factory (``{}``, ``[]``, now), and a name starting
with ``_`` a positional parameter whose name 0.2.0 does not fix.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any

import pytest

ANY = object()
FACTORY = object()
EMPTY = inspect.Parameter.empty


def expected(stub: str) -> inspect.Signature:
    namespace: dict[str, Any] = {"ANY": ANY, "FACTORY": FACTORY}
    exec(f"def _{stub}: pass", namespace)  # the stub is a parameter list, e.g. "(*, run_id, limit=100)"
    return inspect.signature(namespace["_"])


def resolve(path: str) -> Any:
    """``"runtime:Runtime.tick"`` -> the object; methods come unbound, from their class."""
    module, _, attribute = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


def actual(path: str) -> inspect.Signature:
    obj = resolve(path)
    sig = inspect.signature(obj)
    params = list(sig.parameters.values())
    owner = path.rpartition(":")[2].rpartition(".")[0]
    if owner and params and params[0].name == "self" and inspect.isfunction(obj):
        sig = sig.replace(parameters=params[1:])  # an instance method taken from its class
    return sig


def differences(path: str, stub: str) -> list[str]:
    return compare(expected(stub), actual(path))


def compare(want: inspect.Signature, have: inspect.Signature) -> list[str]:
    """What in ``have`` breaks a call written against ``want`` or departs from it; [] when none."""
    problems: list[str] = []
    have_params = dict(have.parameters)
    positional = [p for p in have.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    for index, p in enumerate(q for q in want.parameters.values() if q.kind == q.POSITIONAL_OR_KEYWORD):
        if index >= len(positional):
            problems.append(f"positional parameter {index} ({p.name}) is missing")
        elif not p.name.startswith("_") and positional[index].name != p.name:
            problems.append(f"positional parameter {index} is {positional[index].name!r}, expected {p.name!r}")
        else:
            problems += _default(p, positional[index])
    for p in want.parameters.values():
        if p.kind != p.KEYWORD_ONLY:
            continue
        mine = have_params.get(p.name)
        if mine is None:
            problems.append(f"keyword-only parameter {p.name!r} is missing")
        elif mine.kind != mine.KEYWORD_ONLY:
            problems.append(f"{p.name!r} is {mine.kind.description}, expected keyword-only")
        else:
            problems += _default(p, mine)
    known = {p.name for p in want.parameters.values()}
    for index, mine in enumerate(have.parameters.values()):
        extra = mine.name not in known and not (mine.kind == mine.POSITIONAL_OR_KEYWORD and index < len(
            [q for q in want.parameters.values() if q.kind == q.POSITIONAL_OR_KEYWORD]))
        if extra and mine.default is EMPTY and mine.kind not in (mine.VAR_POSITIONAL, mine.VAR_KEYWORD):
            problems.append(f"added parameter {mine.name!r} has no default, so 0.2.0 calls no longer bind")
    return problems


def _default(want: inspect.Parameter, have: inspect.Parameter) -> list[str]:
    if want.default is ANY:
        return []
    if want.default is FACTORY:
        ok = have.default is not EMPTY and repr(have.default) == "<factory>"
        return [] if ok else [f"{have.name!r} should default through a factory, has {have.default!r}"]
    if want.default is EMPTY:
        return [] if have.default is EMPTY else [f"{have.name!r} should be required, defaults to {have.default!r}"]
    if have.default is EMPTY or have.default != want.default or type(have.default) is not type(want.default):
        return [f"{have.name!r} defaults to {have.default!r}, expected {want.default!r}"]
    return []


QUERY_STORE = {
    "list_runs": "(*, status=None, wait_reason=None, workflow_id=None, limit=100)",
    "list_due_wait_until": "(*, now_iso, limit=100)",
    "list_children": "(*, parent_run_id, status=None)",
    "save": "(_run)",
    "load": "(run_id)",
}
LEDGER_STORE = {"append": "(_record)", "list": "(run_id)"}
SNAPSHOT_STORE = {"save": "(_snapshot)", "load": "(_snapshot_id)", "delete": "(_snapshot_id)",
                  "list": "(*, run_id=None, tag=None, query=None, limit=100)"}
ARTIFACT_STORE = {
    "store": '(_content, *, content_type="application/octet-stream", run_id=None, tags=None, artifact_id=None)',
    "store_text": '(_text, *, content_type="text/plain", encoding="utf-8", run_id=None, tags=None)',
    "store_json": "(_data, *, run_id=None, tags=None)",
    "list_all": "(*, limit=1000)",
    "search": "(*, run_id=None, content_type=None, tags=None, limit=1000)",
    "list_by_run": "(_run_id)", "delete_by_run": "(_run_id)", "load": "(_artifact_id)",
    "get_metadata": "(_artifact_id)", "exists": "(_artifact_id)", "delete": "(_artifact_id)",
    "load_text": "(_artifact_id, *, encoding=ANY)", "load_json": "(_artifact_id)",
}


def _per_store(classes: list[str], methods: dict[str, str]) -> list[tuple[str, str]]:
    return [(f"{cls}.{name}", stub) for cls in classes for name, stub in methods.items()]


SIGNATURES: list[tuple[str, str]] = [
    # Runtime
    ("runtime:Runtime", "(*, run_store, ledger_store, effect_handlers=None, context=None, workflow_registry=None, "
                        "artifact_store=None, effect_policy=None, config=None)"),
    ("runtime:Runtime.start", "(*, workflow, vars=None, actor_id=None, session_id=None, parent_run_id=None)"),
    ("runtime:Runtime.tick", "(*, workflow, run_id, max_steps=100)"),
    ("runtime:Runtime.resume", "(*, workflow, run_id, wait_key, payload)"),
    ("runtime:Runtime.cancel_run", "(run_id, *, reason=None)"),
    ("runtime:Runtime.get_state", "(run_id)"),
    ("runtime:Runtime.get_ledger", "(run_id)"),
    ("runtime:Runtime.get_limit_status", "(run_id)"),
    ("runtime:Runtime.check_limits", "(run)"),
    ("runtime:Runtime.update_limits", "(run_id, updates)"),
    ("runtime:Runtime.set_workflow_registry", "(_registry)"),
    ("runtime:Runtime.set_artifact_store", "(_store)"),
    ("runtime:Runtime.set_effect_policy", "(_policy)"),
    # Data model
    ("runtime:RunState", "(run_id, workflow_id, status, current_node, vars=FACTORY, waiting=None, output=None, "
                         "error=None, created_at=FACTORY, updated_at=FACTORY, actor_id=None, session_id=None, "
                         "parent_run_id=None)"),
    ("runtime:RunState.new", "(*, workflow_id, entry_node, actor_id=None, session_id=None, vars=None, "
                             "parent_run_id=None)"),
    ("runtime:StepRecord", "(run_id, step_id, node_id, status, effect=None, result=None, error=None, "
                           "started_at=FACTORY, ended_at=None, actor_id=None, session_id=None, attempt=1, "
                           "idempotency_key=None, prev_hash=None, record_hash=None, signature=None)"),
    ("runtime:StepRecord.start", "(*, run, node_id, effect, attempt=1, idempotency_key=None)"),
    ("runtime:WaitState", "(reason, wait_key=None, until=None, resume_to_node=None, result_key=None, prompt=None, "
                          "choices=None, allow_free_text=True, details=None)"),
    ("runtime:Effect", "(type, payload=FACTORY, result_key=None)"),
    ("runtime:StepPlan", "(node_id, effect=None, next_node=None, complete_output=None)"),
    ("runtime:WorkflowSpec", "(workflow_id, entry_node, nodes)"),
    ("runtime:EffectOutcome", "(status, result=None, wait=None, error=None)"),
    ("runtime:EffectOutcome.completed", "(result=ANY)"),
    ("runtime:EffectOutcome.waiting", "(wait)"),
    ("runtime:EffectOutcome.failed", "(error)"),
    # Limits
    ("runtime:RuntimeConfig", "(max_iterations=25, warn_iterations_pct=80, max_tokens=None, max_output_tokens=None, "
                              "warn_tokens_pct=80, max_history_messages=-1, model_capabilities=FACTORY)"),
    ("runtime:RuntimeConfig.with_capabilities", "(_capabilities)"),
    ("runtime:LimitWarning", "(limit_type, status, current, maximum, pct=0.0)"),
    # Policies
    ("runtime:DefaultEffectPolicy", "(default_max_attempts=1, default_backoff_base=1.0, default_backoff_max=60.0, "
                                    "effect_max_attempts=FACTORY)"),
    ("runtime:DefaultEffectPolicy.max_attempts", "(effect)"),
    ("runtime:DefaultEffectPolicy.backoff_seconds", "(*, effect, attempt)"),
    ("runtime:DefaultEffectPolicy.idempotency_key", "(*, run, node_id, effect)"),
    ("runtime:RetryPolicy", "(*, llm_max_attempts=3, tool_max_attempts=2, backoff_base=1.0, backoff_max=30.0)"),
    ("runtime:NoRetryPolicy", "()"),
    ("runtime:compute_idempotency_key", "(*, run_id, node_id, effect)"),
    # Scheduler
    ("runtime:Scheduler", "(*, runtime, registry, poll_interval_s=1.0, max_errors_kept=100, on_run_resumed=None, "
                          "on_run_failed=None)"),
    ("runtime:Scheduler.start", "()"),
    ("runtime:Scheduler.stop", "(timeout=5.0)"),
    ("runtime:Scheduler.poll_once", "()"),
    ("runtime:Scheduler.resume_event", "(*, run_id, wait_key, payload)"),
    ("runtime:Scheduler.find_waiting_runs", "(*, wait_reason=None, workflow_id=None, limit=100)"),
    ("runtime:Scheduler.cancel_with_children", "(run_id, *, reason=None)"),
    ("runtime:Scheduler.resume_subworkflow_parent", "(*, child_run_id, child_output)"),
    ("runtime:SchedulerStats", "(runs_resumed=0, runs_failed=0, poll_cycles=0, last_poll_at=None, errors=FACTORY)"),
    ("runtime:ScheduledRuntime", "(runtime, scheduler, registry)"),
    ("runtime:ScheduledRuntime.respond", "(run_id, payload)"),
    ("runtime:ScheduledRuntime.start", "(*, workflow, vars=None, actor_id=None)"),
    ("runtime:ScheduledRuntime.tick", "(run_id, *, max_steps=100)"),
    ("runtime:ScheduledRuntime.resume_event", "(*, run_id, wait_key, payload)"),
    ("runtime:ScheduledRuntime.get_state", "(run_id)"),
    ("runtime:ScheduledRuntime.get_ledger", "(run_id)"),
    ("runtime:ScheduledRuntime.find_waiting_runs", "(*, wait_reason=None, workflow_id=None, limit=100)"),
    ("runtime:ScheduledRuntime.resume_subworkflow_parent", "(*, child_run_id, child_output)"),
    ("runtime:ScheduledRuntime.cancel_run", "(run_id, *, reason=None)"),
    ("runtime:ScheduledRuntime.cancel_with_children", "(run_id, *, reason=None)"),
    ("runtime:ScheduledRuntime.start_scheduler", "()"),
    ("runtime:ScheduledRuntime.stop", "(timeout=5.0)"),
    ("runtime:create_scheduled_runtime", "(*, run_store=None, ledger_store=None, artifact_store=None, "
                                         "effect_policy=None, workflows=None, effect_handlers=None, "
                                         "poll_interval_s=1.0, auto_start=True, on_run_resumed=None, "
                                         "on_run_failed=None)"),
    ("runtime:WorkflowRegistry", "()"),
    ("runtime:WorkflowRegistry.register", "(workflow)"),
    ("runtime:WorkflowRegistry.unregister", "(workflow_id)"),
    ("runtime:WorkflowRegistry.get", "(workflow_id)"),
    ("runtime:WorkflowRegistry.get_or_raise", "(workflow_id)"),
    ("runtime:WorkflowRegistry.list_ids", "()"),
    # Stores
    ("stores:JsonFileRunStore", "(base_dir)"),
    ("stores:JsonlLedgerStore", "(base_dir)"),
    ("runtime:HashChainedLedgerStore", "(inner)"),
    ("runtime:verify_ledger_chain", "(records)"),
    ("runtime:compute_record_hash", "(*, record, prev_hash)"),
    ("runtime:Snapshot", "(snapshot_id, run_id, step_id, name, description, tags=ANY, created_at=ANY, "
                         "updated_at=ANY, run_state=ANY)"),
    ("runtime:Snapshot.from_run", "(*, run, name, description=None, tags=None, step_id=None)"),
    ("stores:JsonSnapshotStore", "(base_dir)"),
    ("stores:FileArtifactStore", "(base_dir)"),
    ("runtime:ArtifactMetadata", "(artifact_id, content_type, size_bytes, created_at, run_id=None, tags=FACTORY)"),
    ("runtime:Artifact", "(metadata, content)"),
    ("runtime:Artifact.as_text", "(encoding=ANY)"),
    ("runtime:Artifact.as_json", "()"),
    ("runtime:artifact_ref", "(_artifact_id)"),
    ("runtime:is_artifact_ref", "(_value)"),
    ("runtime:get_artifact_id", "(_ref)"),
    ("runtime:resolve_artifact", "(_ref, _store)"),
    ("runtime:compute_artifact_id", "(_content)"),
    ("runtime:ActorFingerprint", "(actor_id, kind, display_name=ANY, metadata=ANY)"),
    ("runtime:ActorFingerprint.from_metadata", "(*, kind, display_name=None, metadata=None)"),
    *_per_store(["runtime:InMemoryRunStore", "stores:JsonFileRunStore", "stores.redis:RedisRunStore"], QUERY_STORE),
    *_per_store(["runtime:InMemoryLedgerStore", "stores:JsonlLedgerStore", "stores.redis:RedisLedgerStore",
                 "runtime:HashChainedLedgerStore"], LEDGER_STORE),
    *_per_store(["runtime:InMemorySnapshotStore", "stores:JsonSnapshotStore", "stores.redis:RedisSnapshotStore"],
                SNAPSHOT_STORE),
    *_per_store(["runtime:InMemoryArtifactStore", "stores:FileArtifactStore", "stores.redis:RedisArtifactStore"],
                ARTIFACT_STORE),
    # The AbstractCore integration
    ("runtime.integrations.abstractcore.llm_client:RemoteAbstractCoreLLMClient",
     "(*, server_base_url, model, timeout_s=60.0, headers=None, request_sender=None)"),
    ("runtime.integrations.abstractcore.llm_client:RemoteAbstractCoreLLMClient.generate",
     "(*, prompt=ANY, messages=None, system_prompt=None, tools=None, params=None)"),
    ("runtime.integrations.abstractcore.llm_client:LocalAbstractCoreLLMClient",
     "(*, provider, model, llm_kwargs=None)"),
    ("runtime.integrations.abstractcore.llm_client:LocalAbstractCoreLLMClient.generate",
     "(*, prompt=ANY, messages=None, system_prompt=None, tools=None, params=None)"),
    ("runtime.integrations.abstractcore.llm_client:LocalAbstractCoreLLMClient.get_model_capabilities", "()"),
    ("runtime.integrations.abstractcore.llm_client:HttpResponse", "(body, headers=ANY)"),
    ("runtime.integrations.abstractcore.llm_client:_normalize_local_response", "(resp)"),
    ("runtime.integrations.abstractcore.tool_executor:MappingToolExecutor", "(tool_map)"),
    ("runtime.integrations.abstractcore.tool_executor:MappingToolExecutor.from_tools", "(_tools)"),
    ("runtime.integrations.abstractcore.tool_executor:PassthroughToolExecutor", '(*, mode="passthrough")'),
    ("runtime.integrations.abstractcore.effect_handlers:build_effect_handlers", "(*, llm, tools=None)"),
    ("runtime.integrations.abstractcore.effect_handlers:make_llm_call_handler", "(*, llm)"),
    ("runtime.integrations.abstractcore:create_local_runtime",
     "(*, provider, model, llm_kwargs=None, run_store=None, ledger_store=None, tool_executor=None, context=None, "
     "effect_policy=None, config=None)"),
    ("runtime.integrations.abstractcore:create_remote_runtime",
     "(*, server_base_url, model, headers=None, timeout_s=60.0, run_store=None, ledger_store=None, "
     "tool_executor=None, context=None)"),
    ("runtime.integrations.abstractcore:create_hybrid_runtime",
     "(*, server_base_url, model, headers=None, timeout_s=60.0, run_store=None, ledger_store=None, context=None)"),
]


@pytest.mark.parametrize(("path", "stub"), SIGNATURES, ids=[p for p, _ in SIGNATURES])
def test_signature_matches_0_2_0(path, stub):
    assert differences(path, stub) == []


PROPERTIES = [
    *(f"runtime:Runtime.{n}" for n in ("run_store", "ledger_store", "workflow_registry", "artifact_store",
                                        "effect_policy", "config")),
    "runtime:Scheduler.is_running", "runtime:Scheduler.stats", "runtime:ScheduledRuntime.is_running",
    "runtime:Artifact.artifact_id", "runtime:Artifact.content_type",
]


@pytest.mark.parametrize("path", PROPERTIES)
def test_attribute_is_a_property(path):
    module, _, attribute = path.partition(":")
    owner, _, name = attribute.rpartition(".")
    assert isinstance(inspect.getattr_static(resolve(f"{module}:{owner}"), name), property)


def test_scheduled_runtime_stats_is_a_property():
    assert isinstance(inspect.getattr_static(resolve("runtime:ScheduledRuntime"), "stats"), property)


def test_scheduled_runtime_run_is_keyword_only_after_the_workflow():
    assert differences("runtime:ScheduledRuntime.run", "(workflow, *, vars=None, actor_id=None, max_steps=100)") == []


@pytest.mark.parametrize("name", ["create_local_file_runtime", "create_remote_file_runtime"])
def test_file_runtime_factories_exist_in_stores(name, tmp_path):
    """0.2.0 had them in the integration; ours are in ``stores.abstractcore`` (the kernel never imports stores)."""
    import stores.abstractcore as factories

    factory = getattr(factories, name)
    params = inspect.signature(factory).parameters
    assert all(p.kind == inspect.Parameter.KEYWORD_ONLY for p in params.values()) and "base_dir" in params


def test_the_remote_file_runtime_keeps_runs_in_files(tmp_path):
    from runtime import Effect, EffectType, StepPlan, WorkflowSpec
    from stores.abstractcore import create_remote_file_runtime

    def ask(run, ctx):
        return StepPlan(node_id="ask", effect=Effect(EffectType.ASK_USER, {"prompt": "ok?"}, result_key="a"),
                        next_node="done")

    def done(run, ctx):
        return StepPlan(node_id="done", complete_output={"a": run.vars["a"]})

    wf = WorkflowSpec(workflow_id="w", entry_node="ask", nodes={"ask": ask, "done": done})
    rt = create_remote_file_runtime(base_dir=tmp_path, server_base_url="http://127.0.0.1:9", model="m")
    run_id = rt.start(workflow=wf)
    rt.tick(workflow=wf, run_id=run_id)
    assert (tmp_path / f"run_{run_id}.json").exists() and (tmp_path / f"ledger_{run_id}.jsonl").exists()
    again = create_remote_file_runtime(base_dir=tmp_path, server_base_url="http://127.0.0.1:9", model="m")
    state = again.get_state(run_id)
    assert state.status.value == "waiting"
    assert again.resume(workflow=wf, run_id=run_id, wait_key=state.waiting.wait_key, payload="yes").output == {
        "a": "yes"}


def test_tool_executors_take_tool_calls_by_keyword():
    """The TOOL_CALLS handler calls ``execute(tool_calls=...)``; every executor must accept that."""
    from runtime.integrations.abstractcore import (
        AbstractCoreToolExecutor,
        MappingToolExecutor,
        PassthroughToolExecutor,
        ToolExecutor,
    )

    for cls in (MappingToolExecutor, AbstractCoreToolExecutor, PassthroughToolExecutor, ToolExecutor):
        inspect.signature(cls.execute).bind(None, tool_calls=[])
    assert inspect.signature(ToolExecutor.execute).parameters["tool_calls"].kind == inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(("module", "names"), [
    ("runtime.integrations.abstractcore", ["RuntimeConfig", "MappingToolExecutor", "PassthroughToolExecutor",
                                           "LocalAbstractCoreLLMClient", "RemoteAbstractCoreLLMClient",
                                           "build_effect_handlers", "make_llm_call_handler", "create_local_runtime",
                                           "create_remote_runtime", "create_hybrid_runtime"]),
    ("runtime.integrations.abstractcore.llm_client", ["HttpResponse", "RemoteAbstractCoreLLMClient",
                                                      "LocalAbstractCoreLLMClient", "_normalize_local_response"]),
    ("runtime.integrations.abstractcore.effect_handlers", ["build_effect_handlers", "make_llm_call_handler"]),
    ("runtime.integrations.abstractcore.tool_executor", ["MappingToolExecutor", "PassthroughToolExecutor"]),
])
def test_integration_module_paths_export_the_0_2_0_names(module, names):
    loaded = importlib.import_module(module)
    assert [n for n in names if not hasattr(loaded, n)] == []


def test_the_checker_itself_catches_each_kind_of_difference():
    """The comparison must be able to fail: each kind of drift is caught."""
    def ours(a, *, b=1, c=None, d):
        pass

    def check(stub: str) -> list[str]:
        return compare(expected(stub), inspect.signature(ours))

    assert check("(a, *, b=1, c=None, d)") == []
    assert check("(a, *, b=ANY, c=None, d)") == []
    assert check("(a, *, b=1, d)") == []  # ours adds `c`, with a default: allowed
    assert check("(x, *, b=1, c=None, d)")  # a renamed positional
    assert check("(a, b=1, *, c=None, d)")  # keyword-only where 0.2.0 takes it positionally
    assert check("(a, *, b=2, c=None, d)")  # another default
    assert check("(a, *, b=True, c=None, d)")  # 1 == True, but not the same default
    assert check("(a, *, b=1, c=None, d, e)")  # a missing parameter
    assert check("(a, *, b=1, c=None)")  # ours adds `d` without a default: 0.2.0 calls break
    assert check("(a, *, b=1, c=None, d=0)")  # 0.2.0 has a default that ours lacks


def test_factory_defaults_give_fresh_values():
    from runtime import Effect, EffectType, RunState, RunStatus

    a = RunState(run_id="a", workflow_id="w", status=RunStatus.RUNNING, current_node="n")
    b = RunState(run_id="b", workflow_id="w", status=RunStatus.RUNNING, current_node="n")
    assert a.vars == {} and a.vars is not b.vars and a.created_at.endswith("+00:00")
    assert Effect(EffectType.WAIT_EVENT).payload == {}
    assert dataclasses.is_dataclass(a)
