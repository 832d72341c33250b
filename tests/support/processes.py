"""Watching real processes from the tests: a background command read line by line, what is
left running afterwards (read from /proc, so the checks need Linux), and waiting for a
condition they bring about (:func:`until`)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: Skip reason for tests that look for leftover processes.
NEEDS_PROC = "needs /proc to look for leftover processes"
HAS_PROC = Path("/proc/self/stat").exists()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not count)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rpartition(b")")[2].split()[0]
    except OSError:
        return False
    return state != b"Z"


def process_group(pgid: int) -> list[int]:
    """Live (not zombie) processes whose process group is ``pgid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{entry}/stat").read_bytes().rpartition(b")")[2].split()
        except OSError:
            continue
        if fields[0] != b"Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def mentioning(text: str) -> list[str]:
    """Live processes (but this one) whose command line or environment mention ``text``."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        for part in ("cmdline", "environ"):
            try:
                data = Path(f"/proc/{pid}/{part}").read_bytes()
            except OSError:
                continue
            if text.encode() in data and alive(int(pid)):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:200]
                found.append(f"{pid}: {cmdline!r}")
                break
    return found


class Background:
    """A command in a session of its own (like a terminal), its output collected line by line."""

    def __init__(self, argv: list[str], *, cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        self.proc.stdout.close()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        """Until a line holds ``text`` (or the output ends); fails with the output otherwise."""
        with self._changed:
            self._changed.wait_for(lambda: any(text in line for line in self.lines) or "<EOF>" in self.lines,
                                   timeout)
        assert text in self.output, f"{text!r} not seen:\n{self.output}"

    def exit_code(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(10)
        return code

    def ctrl_c(self, timeout: float = 60) -> int:
        """SIGINT to its process group, as Ctrl-C in its terminal; its exit code."""
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.exit_code(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def until(check: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """Call ``check`` every ``every`` seconds until it returns something true or ``timeout``
    seconds passed; returns its last value (a test asserts it)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)
