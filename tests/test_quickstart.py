"""docs/quickstart.md section 2, run as a newcomer runs it: slow (it makes a virtualenv).

A fresh virtualenv gets the checkout with ``pip install -e '<checkout>[celery]'`` (from
PyPI). Then, in an empty folder and an environment holding only PATH (the virtualenv's
``bin/`` first, as ``activate`` does) and HOME: the file the page says to write, taken from
the page; the page's first terminal (``abstractruntime dev``) in the background; the page's
second terminal line by line, with RUN_ID replaced by the id ``start`` printed; then Ctrl-C
to the first terminal, which must leave no process of the stack behind.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support.processes import HAS_PROC, NEEDS_PROC, Background, alive, mentioning, process_group

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "quickstart.md"

pytestmark = [
    pytest.mark.slow,  # a virtualenv and a pip install: a minute or more; still in the default run
    pytest.mark.timeout(900),
    pytest.mark.skipif(not HAS_PROC, reason=NEEDS_PROC),
]


def page_block(marker: str) -> str:
    """The code block that follows ``<!-- marker -->`` in the page."""
    m = re.search(rf"<!-- {re.escape(marker)} -->\s*```[a-z]*\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert m is not None, f"docs/quickstart.md has no block after <!-- {marker} -->"
    return m.group(1)


def page_file() -> tuple[str, str]:
    """The Python file the page tells the reader to write: (its path, from its first line; its text)."""
    m = re.search(r"```python\n# (myapp/\S+\.py)\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    assert m is not None, "docs/quickstart.md has no ```python block starting with # myapp/....py"
    return m.group(1), f"# {m.group(1)}\n{m.group(2)}"


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with the checkout installed as the quickstart says."""
    where = tmp_path_factory.mktemp("venv") / ".venv"
    subprocess.run([sys.executable, "-m", "venv", str(where)], check=True, timeout=120)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ABSTRACTRUNTIME_", "PYTHON", "VIRTUAL_ENV"))}
    pip = subprocess.run([str(where / "bin" / "python"), "-m", "pip", "install", "--quiet", "-e", f"{REPO}[celery]"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    return where


def terminal(script: str, cwd: Path, env: dict[str, str]) -> Background:
    """A background shell running a block of the page, like a terminal of its own."""
    return Background(["bash", "-c", script], cwd=cwd, env=env)


def test_the_quickstart_runs_as_written_and_leaves_nothing_running(venv, tmp_path):
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    env = {"PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "HOME": str(home)}
    path, text = page_file()
    (project / path).parent.mkdir(parents=True)
    (project / path).write_text(text, encoding="utf-8")

    first = terminal(page_block("quickstart:terminal-1"), project, env)
    try:
        first.wait_for("dev    | ready: ", timeout=120)
        stack = json.loads((project / ".abstractruntime" / "stack.json").read_text())
        groups = [p["pid"] for p in stack["processes"]]
        redis_pid = stack["redis"]["pid"]
        assert {p["name"] for p in stack["processes"]} == {"worker", "beat"} and alive(redis_pid)

        exports, run_id, outputs = [], None, {}
        for line in page_block("quickstart:terminal-2").splitlines():
            if not line.strip():
                continue
            if line.startswith("export "):
                exports.append(line)
                continue
            if "RUN_ID" in line:
                assert run_id is not None, f"{line!r} comes before a command that prints a run id"
                line = line.replace("RUN_ID", run_id)
            done = subprocess.run(["bash", "-c", "\n".join([*exports, line])], cwd=project, env=env,
                                  capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"$ {line}\n{done.stdout}{done.stderr}\n--- first terminal:\n{first.output}"
            command = line.split()[1]
            outputs[command] = done.stdout
            if command == "start":
                m = re.search(r"^run\s+(\S+)$", done.stdout, re.M)
                assert m is not None, done.stdout
                run_id = m.group(1)
        assert "waiting" in outputs["start"] and "Refund 42.0?" in outputs["start"], outputs["start"]
        assert "fetch" in outputs["ledger"] and "approve" in outputs["ledger"], outputs["ledger"]

        # The answer completes the run on the worker: its status says so within seconds.
        deadline = time.monotonic() + 60
        while True:
            status = subprocess.run(["bash", "-c", f"abstractruntime --json status {run_id}"], cwd=project,
                                    env=env, capture_output=True, text=True, timeout=60)
            assert status.returncode == 0, status.stderr
            state = json.loads(status.stdout)
            if state["status"] == "completed" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert state["status"] == "completed" and state["output"] == {"refunded": True}, state

        # Ctrl-C in the first terminal: everything stops, exit 0, nothing is left.
        assert first.ctrl_c(timeout=60) == 0, first.output
        assert "dev    | stopped worker, beat, redis-server" in first.output
        left = [pid for g in groups for pid in process_group(g)] + ([redis_pid] if alive(redis_pid) else [])
        assert left == [], left
        assert mentioning(str(tmp_path)) == []
    finally:
        first.kill()
        subprocess.run(["bash", "-c", "abstractruntime stop"], cwd=project, env=env, capture_output=True,
                       timeout=120)
