"""``abstractruntime demo`` on a machine with nothing configured: it runs, exits 0, leaves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.processes import mentioning

CLI = str(Path(sys.executable).with_name("abstractruntime"))


@pytest.mark.timeout(240)
@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to look for leftover processes")
def test_demo_runs_in_a_clean_environment_and_leaves_no_process(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(HOME=str(home), TMPDIR=str(tmp_path), PYTHONPATH="")
    t0 = time.monotonic()
    proc = subprocess.run([CLI, "demo", "--wait-s", "2"], cwd=home, env=env, capture_output=True, text=True,
                          timeout=200)
    took = time.monotonic() - t0
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    out = proc.stdout
    assert "workers ready: 6/6 queues" in out
    assert "answering 'question': Ship release 1.0? -> yes" in out
    assert "every run completed and every chain verifies" in out
    for label in ("chain", "branch small", "sleep 2s", "question", "tool call", "sync child", "async child",
                  "child of sync", "child of async"):
        assert any(line.startswith(label) and " completed " in line and " ok " in line for line in out.splitlines()), \
            (label, out)
    time.sleep(0.5)
    assert mentioning(str(tmp_path)) == []
    # Nothing was written outside the temp folders it was given.
    assert list(home.iterdir()) == []
    print(f"\ndemo took {took:.1f}s")


@pytest.mark.timeout(240)
def test_demo_json_summary(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABSTRACTRUNTIME_")}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path), PYTHONPATH="")
    proc = subprocess.run([CLI, "--json", "demo", "--wait-s", "1"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["ok"] is True and len(summary["runs"]) == 10
    assert {r["status"] for r in summary["runs"]} == {"completed"}
