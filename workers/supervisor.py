"""The default ``abstractruntime worker`` (``--pool auto``): Celery worker processes, each with
the pool that is fastest for its queues, supervised by the command's own process.

* The queue kinds whose tasks keep a CPU busy between short Redis calls (``ticks``, ``tools``,
  ``subworkflows``, ``timers``, ``maintenance``): one ``-P solo`` process per CPU
  (``--concurrency`` of them). Measured on 2 cores (``docs/performance.md``,
  ``tests/bench/workers.py``), two solo processes run the tick chain faster than one prefork
  worker with two pool processes: no parent relaying every message to a child over a pipe.
* ``llm``: one ``-P threads`` process (``--llm-threads`` threads), whose tasks wait on the network
  for seconds: a thread each costs little, a process each would hold a CPU's worth of memory.

Each child is ``celery -A workers.app worker`` with the same options otherwise, named after
the given name (or ``KINDS.PID``) with ``-1``, ``-2``... (``-llm`` for the threads one). The
children share this process's group, so what signals the group (Ctrl-C, ``killpg``) reaches
them too. SIGTERM, SIGINT or SIGHUP to this process asks each child for Celery's warm shutdown
(SIGTERM: running tasks finish), SIGQUIT for the cold one; it exits when they have, with 0.

A child that dies on its own (killed, out of memory) is started again after a second, as a
prefork worker replaces a dead pool process; one that dies within :data:`EARLY_S` of its start
(a bad option, a broker it cannot reach) stops the others and the command exits 1 naming it.
A child that exits 0 on its own (``celery control shutdown``) is not started again; the
command exits 0 when none is left.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

__all__ = ["Child", "plan_children", "supervise", "EARLY_S"]

#: A child that exits sooner than this after its start is a configuration error, not a crash.
EARLY_S = 10.0
_POLL_S = 0.2
_RESTART_DELAY_S = 1.0
#: The queue kind whose tasks wait on the network (threads), the others keep a CPU busy (solo).
NETWORK_KINDS = ("llm",)


@dataclass
class Child:
    """One Celery worker process of the supervised set."""

    label: str  # e.g. "ticks-llm-tools.1234-1@%h": its Celery name, as given to -n
    argv: list[str]  # celery's arguments after ``-A workers.app``
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0


def _suffixed(name: str, suffix: str) -> str:
    """``base@host`` -> ``base-suffix@host`` (and ``base`` -> ``base-suffix``)."""
    base, at, host = name.partition("@")
    return f"{base}-{suffix}{at}{host}"


def plan_children(*, queue_names: dict[str, str], processes: int, llm_threads: int, name: str,
                  common: list[str]) -> list[Child]:
    """The children for ``queue_names`` (kind -> queue name, in the order given): ``processes``
    solo workers on the CPU-bound kinds, one threads worker on the network-bound ones."""
    cpu = [q for kind, q in queue_names.items() if kind not in NETWORK_KINDS]
    net = [q for kind, q in queue_names.items() if kind in NETWORK_KINDS]
    children = [Child(_suffixed(name, str(i + 1)) if processes > 1 or net else name,
                      ["worker", "-Q", ",".join(cpu), "-P", "solo", *common])
                for i in range(processes if cpu else 0)]
    if net:
        label = _suffixed(name, "llm") if cpu else name
        children.append(Child(label, ["worker", "-Q", ",".join(net), "-P", "threads", "-c", str(llm_threads),
                                      *common]))
    for child in children:
        child.argv[1:1] = ["-n", child.label]
    return children


class _Supervisor:
    def __init__(self, children: list[Child], env: dict[str, str]) -> None:
        self.children, self.env = children, env
        self.stopping: int | None = None  # the signal given to the children once stopping
        self.failure: str | None = None

    def say(self, line: str) -> None:
        print(f"[abstractruntime worker] {line}", file=sys.stderr, flush=True)

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen([sys.executable, "-m", "celery", "-A", "workers.app", *child.argv],
                                      env=self.env, stdin=subprocess.DEVNULL)
        child.started = time.monotonic()

    def on_signal(self, signum: int, frame: Any) -> None:
        sig = signal.SIGQUIT if signum == getattr(signal, "SIGQUIT", None) else signal.SIGTERM
        if self.stopping is None or sig == signal.SIGQUIT:
            self.stopping = sig
            self._signal_all(sig)

    def _signal_all(self, sig: int) -> None:
        for child in self.children:
            if child.proc is not None and child.proc.poll() is None:
                try:
                    child.proc.send_signal(sig)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        for child in self.children:
            self.start(child)
        self.say(f"started {len(self.children)} worker process(es): "
                 + "; ".join(f"{c.label} (pid {c.proc.pid if c.proc else '?'}, -P {c.argv[c.argv.index('-P') + 1]})"
                             for c in self.children))
        while True:
            time.sleep(_POLL_S)
            live = [c for c in self.children if c.proc is not None and c.proc.poll() is None]
            if self.stopping is not None:
                if not live:
                    return 1 if self.failure else 0
                continue
            for child in self.children:
                proc = child.proc
                if proc is None or proc.returncode is None:
                    continue
                code, lived = proc.returncode, time.monotonic() - child.started
                if code == 0:
                    child.proc = None  # stopped on purpose (a remote shutdown): not started again
                    continue
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                if lived < EARLY_S:
                    self.failure = f"worker process {child.label} {how} {lived:.1f} s after its start"
                    self.say(f"error: {self.failure}; stopping the others")
                    self.stopping = signal.SIGTERM
                    self._signal_all(signal.SIGTERM)
                    break
                self.say(f"worker process {child.label} {how}; starting it again in {_RESTART_DELAY_S:.0f} s")
                time.sleep(_RESTART_DELAY_S)
                if self.stopping is None:
                    self.start(child)
            if self.stopping is None and all(c.proc is None for c in self.children):
                return 0


def supervise(children: list[Child], env: dict[str, str]) -> int:
    """Run ``children`` until a signal (then 0), or until one fails at its start (then 1)."""
    sup = _Supervisor(children, env)
    wanted = [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT]
    before = {sig: signal.signal(sig, sup.on_signal) for sig in wanted}
    try:
        return sup.run()
    finally:
        for sig, old in before.items():
            signal.signal(sig, old)
