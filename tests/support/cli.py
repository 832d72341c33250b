"""Reading what the ``abstractruntime`` console script answered, as the CLI tests check it."""

from __future__ import annotations

import json
import subprocess


def ok(proc: subprocess.CompletedProcess) -> object:
    """The JSON a command printed; it must have exited 0."""
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def refused(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """A refusal: exit ``code`` and one ``error:`` line on stderr holding every one of ``words``."""
    assert proc.returncode == code, f"exit {proc.returncode}, wanted {code}: {proc.stdout} {proc.stderr}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
