"""The kernel stays stdlib-only and imports point one way: stores -> runtime."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FORBIDDEN_IN_KERNEL = {"celery", "redis", "kombu", "msgpack", "abstractcore", "stores", "workers"}


#: The AbstractCore integration lives under runtime/ (DESIGN.md) but is not the kernel: it may
#: import abstractcore, inside the functions that need it, and nothing imports it by default.
INTEGRATION = "runtime/integrations/abstractcore"


def imported_modules(package: str, *, skip: str | None = None) -> set[tuple[str, str]]:
    found = set()
    for path in (REPO / package).rglob("*.py"):
        if skip and str(path.relative_to(REPO)).startswith(skip):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update((str(path.relative_to(REPO)), a.name.split(".")[0]) for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add((str(path.relative_to(REPO)), node.module.split(".")[0]))
    return found


def test_kernel_imports_only_the_stdlib():
    bad = {(f, m) for f, m in imported_modules("runtime", skip=INTEGRATION) if m in FORBIDDEN_IN_KERNEL}
    assert bad == set()
    stdlib = set(sys.stdlib_module_names)
    foreign = {(f, m) for f, m in imported_modules("runtime", skip=INTEGRATION) if m not in stdlib and m != "runtime"}
    assert foreign == set(), f"runtime/ must use the stdlib only: {foreign}"


def test_the_abstractcore_integration_imports_it_only_when_used():
    stdlib = set(sys.stdlib_module_names)
    found = {(f, m) for f, m in imported_modules(INTEGRATION) if m not in stdlib and m != "runtime"}
    assert {m for _f, m in found} <= {"abstractcore"}
    code = ("import sys, runtime.integrations.abstractcore as ac\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('abstractcore', 'celery', 'redis')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_stores_import_only_runtime_and_the_stdlib():
    allowed = set(sys.stdlib_module_names) | {"runtime", "stores", "redis", "msgpack", "cryptography"}
    assert {(f, m) for f, m in imported_modules("stores") if m not in allowed} == set()


def test_importing_the_kernel_loads_no_third_party_package():
    code = (
        "import sys, runtime, runtime.scheduled\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        f"{set(FORBIDDEN_IN_KERNEL)!r})\n"
        "print(' '.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_grep_finds_no_forbidden_import():
    """The acceptance check of the kernel issue, as written there."""
    proc = subprocess.run(["grep", "-rE", "--exclude-dir=abstractcore", "import (celery|redis|kombu|abstractcore)",
                           "runtime/"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout


@pytest.mark.parametrize("name", [
    "Effect", "EffectType", "RunState", "RunStatus", "StepPlan", "WaitReason", "WaitState", "WorkflowSpec",
    "Runtime", "WorkflowRegistry", "Scheduler", "SchedulerStats", "ScheduledRuntime", "create_scheduled_runtime",
    "QueryableRunStore", "InMemoryRunStore", "InMemoryLedgerStore", "HashChainedLedgerStore",
    "verify_ledger_chain", "Snapshot", "SnapshotStore", "InMemorySnapshotStore", "Artifact", "ArtifactMetadata",
    "ArtifactStore", "InMemoryArtifactStore", "artifact_ref", "is_artifact_ref", "get_artifact_id",
    "resolve_artifact", "compute_artifact_id", "ActorFingerprint", "EffectPolicy", "DefaultEffectPolicy",
    "RetryPolicy", "NoRetryPolicy", "compute_idempotency_key", "RuntimeConfig", "LimitWarning", "StepRecord",
    "StepStatus", "EffectOutcome",
])
def test_reference_names_import_from_runtime(name):
    import runtime

    assert getattr(runtime, name) is not None and name in runtime.__all__


@pytest.mark.parametrize("name", ["JsonFileRunStore", "JsonlLedgerStore", "JsonSnapshotStore", "FileArtifactStore",
                                  "InMemoryRunStore", "InMemoryLedgerStore", "HashChainedLedgerStore"])
def test_store_names_import_from_stores(name):
    import stores

    assert getattr(stores, name) is not None and name in stores.__all__
