"""The documentation stays true: every example runs, and every import and test it names exists."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.py"))
DOCS = sorted((REPO / "docs").glob("*.md")) + [REPO / "README.md"]

#: What each example must print: the outcome it exists to show.
EXPECTED = {
    "01_hello_world.py": ["status: completed"],
    "02_ask_user.py": ["output: {'order': 'one large coffee for Ada'}", "status: completed"],
    "03_wait_until.py": ["status: completed"],
    "04_multi_step.py": [
        "expense 40: completed, approved (classify -> approve)",
        "expense 2000: completed, rejected (classify -> review -> decide -> reject)",
    ],
    "05_persistence.py": ["[process 1] chain ok: True", "status: completed"],
    "06_redis.py": ["[process 2] answered", "output: {'shipped': True}", "status: completed", "chain ok: True"],
    "07_celery.py": ["waiting at 'confirm': Pay 7.00? ['yes', 'no']",
                     "ledger: quote/started, quote/completed, confirm/started, confirm/waiting, confirm/completed, "
                     "done/completed",
                     "output: {'paid': 7.0}", "status: completed", "chain ok: True"],
    "08_llm_call.py": ["status: completed", "reply: echo: Say hello in five words."],
    "09_react_agent.py": ["the agent asks: Run add(", "answer: answer: 5;", "status: completed"],
}


def run_example(path: Path, *python_flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *python_flags, str(path)], timeout=60, cwd=REPO, capture_output=True, text=True
    )


def test_every_example_has_an_expected_outcome():
    assert EXAMPLES, "no examples found under docs/examples"
    assert sorted(EXPECTED) == [p.name for p in EXAMPLES]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs_and_reports_its_outcome(path):
    proc = run_example(path)
    assert proc.returncode == 0, f"{path.name} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.splitlines()
    for expected in EXPECTED[path.name]:
        printed = any(line.startswith(expected) for line in lines)
        assert printed, f"{path.name} did not print {expected!r}:\n{proc.stdout}"


def test_examples_run_from_a_checkout_without_installing():
    # -S skips site-packages, where the editable install lives: the example must find the
    # repository through its own sys.path fallback.
    proc = run_example(REPO / "docs" / "examples" / "01_hello_world.py", "-S")
    assert proc.returncode == 0, proc.stderr
    assert "status: completed" in proc.stdout.splitlines()


def _our_imports() -> list[str]:
    text = (REPO / "docs" / "porting.md").read_text(encoding="utf-8")
    return re.findall(r"`(from (?:runtime|stores)[\w.]* import [\w, ]+)`", text)


def test_porting_table_has_imports():
    assert len(_our_imports()) >= 20


@pytest.mark.parametrize("statement", _our_imports())
def test_every_import_in_the_porting_table_works(statement):
    module, names = re.fullmatch(r"from ([\w.]+) import ([\w, ]+)", statement).groups()
    mod = importlib.import_module(module)
    missing = [n.strip() for n in names.split(",") if not hasattr(mod, n.strip())]
    assert not missing, f"{statement}: {missing} not found"


def _test_references() -> list[tuple[str, str, str]]:
    refs = set()
    for doc in DOCS:
        for file, name in re.findall(r"tests/(test_\w+\.py)::(\w+)", doc.read_text(encoding="utf-8")):
            refs.add((doc.name, file, name))
    return sorted(refs)


@pytest.mark.parametrize("doc,file,name", _test_references())
def test_tests_named_in_the_docs_exist(doc, file, name):
    source = REPO / "tests" / file
    assert source.exists(), f"{doc} names {file}, which does not exist"
    assert re.search(rf"^def {name}\(", source.read_text(encoding="utf-8"), re.M), f"{doc} names {file}::{name}"
