"""``abstractruntime demo``: real workers, real Redis, example runs, and everything stopped after.

Nothing needs configuring: with no ``ABSTRACTRUNTIME_REDIS_URL`` an embedded redis-server
keeps the runs and carries the Celery messages. The demo starts one worker process per
queue and beat, runs the workflows of :mod:`workers.demo_workflows` (answering the
question itself), prints each run as it moves, verifies every hash chain, prints a
summary and stops what it started. ``--keep`` leaves it all running, records it in
``{data_dir}/stack.json`` (see :mod:`workers.dev`) and says how to reach it; ``abstractruntime
stop`` stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click

from runtime import RunStatus

from .settings import QUEUE_KINDS, WorkerSettings

__all__ = ["run_demo"]

#: Seconds the demo waits for its workers to come up, and for its runs to end.
READY_TIMEOUT_S = 90.0
RUN_TIMEOUT_S = 120.0
_TERMINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)


class _Demo:
    def __init__(self, env: dict[str, str], *, keep: bool, wait_s: float, as_json: bool) -> None:
        self.keep, self.wait_s, self.as_json = keep, wait_s, as_json
        self.t0 = time.monotonic()
        self.tmp: str | None = None
        env = dict(env)
        if not env.get("ABSTRACTRUNTIME_REDIS_URL") and not keep and not env.get("ABSTRACTRUNTIME_DATA_DIR"):
            self.tmp = tempfile.mkdtemp(prefix="abstractruntime-demo-")
            env["ABSTRACTRUNTIME_DATA_DIR"] = self.tmp
        imports = [m for m in env.get("ABSTRACTRUNTIME_IMPORTS", "").split(",") if m.strip()]
        if "workers.demo_workflows" not in imports:
            imports.append("workers.demo_workflows")
        env["ABSTRACTRUNTIME_IMPORTS"] = ",".join(imports)
        env.setdefault("ABSTRACTRUNTIME_SWEEP_PERIOD_S", "1")
        self.env = env
        self.settings = WorkerSettings.from_env(env)
        self.data_dir = Path(self.settings.redis.data_dir).resolve()
        self.logs = self.data_dir / "logs"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.client: Any = None
        self.names: dict[str, str] = {}

    def say(self, text: str) -> None:
        if not self.as_json:
            click.echo(f"[{time.monotonic() - self.t0:5.1f}s] {text}")
            sys.stdout.flush()

    # -- services --------------------------------------------------------------------------------

    def start_services(self) -> None:
        from .client import Client

        if not self.settings.redis.url:
            from stores.redis.embedded import shared_embedded

            # The redis-server ABSTRACTRUNTIME_REDIS_SERVER names, whichever part of the client starts it.
            shared_embedded(self.settings.redis.data_dir, binary=self.settings.redis.server_binary)
        self.client = Client(self.settings)
        where = self.settings.redis.url or f"an embedded redis-server in {self.data_dir / 'redis'}"
        self.say(f"Redis: {where}")
        self.logs.mkdir(parents=True, exist_ok=True)
        cli = [sys.executable, "-m", "workers.cli"]
        for kind in QUEUE_KINDS:
            self._spawn(f"worker-{kind}", [*cli, "worker", "--queues", kind, "--pool", "solo", "--loglevel",
                                           "WARNING", "--name", f"demo-{kind}@%h"])
        self._spawn("beat", [*cli, "beat", "--loglevel", "WARNING"])
        self.say(f"started {len(QUEUE_KINDS)} workers (one per queue) and beat; logs in {self.logs}")
        self._wait_for_workers()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.logs / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def _wait_for_workers(self) -> None:
        wanted = {self.settings.queue(k) for k in QUEUE_KINDS}
        deadline = time.monotonic() + READY_TIMEOUT_S
        seen: set[str] = set()
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                    raise click.ClickException(f"{name} exited with code {proc.returncode}:\n{tail}")
            active = self.client.app.control.inspect(timeout=0.5).active_queues() or {}
            now = {q.get("name") for queues in active.values() for q in queues or []} & wanted
            if now != seen:
                seen = now
                self.say(f"workers ready: {len(seen)}/{len(wanted)} queues")
            if seen == wanted:
                return
            if time.monotonic() > deadline:
                raise click.ClickException(f"workers did not come up in {READY_TIMEOUT_S:g}s; see {self.logs}")

    def stop_services(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if self.client is not None:
            self.client.close()
        if not self.settings.redis.url:
            from stores.redis.embedded import shared_embedded

            shared_embedded(self.settings.redis.data_dir).stop()
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)

    # -- runs ------------------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        client = self.client
        until = (datetime.now(timezone.utc) + timedelta(seconds=self.wait_s)).isoformat()
        plan = [
            ("chain", "demo.chain", {}),
            ("branch small", "demo.branch", {"amount": 40}),
            ("branch large", "demo.branch", {"amount": 4000}),
            (f"sleep {self.wait_s:g}s", "demo.sleep", {"until": until}),
            ("question", "demo.ask", {}),
            ("tool call", "demo.tools", {}),
            ("sync child", "demo.parent_sync", {}),
            ("async child", "demo.parent_async", {}),
        ]
        last = client.backend.last_event_id()
        for label, workflow_id, run_vars in plan:
            rid = client.start(workflow_id, vars=run_vars)
            self.names[rid] = label
            self.say(f"started {label:<13} {workflow_id:<18} {rid}")
        open_runs = set(self.names)
        answered: set[str] = set()
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while open_runs:
            if time.monotonic() > deadline:
                raise click.ClickException(f"runs still open after {RUN_TIMEOUT_S:g}s: "
                                           + ", ".join(self.names[r] for r in open_runs))
            for entry_id, event in client.follow_events(last_id=last, block_ms=1000):
                last = entry_id
                rid = event["run_id"]
                if rid not in self.names:
                    state = client.get_state(rid)
                    parent = state.parent_run_id
                    if parent not in self.names:
                        continue
                    self.names[rid] = f"child of {self.names[parent].split()[0]}"
                    open_runs.add(rid)
                state = client.get_state(rid)
                self._show(rid, state, event)
                if state.status == RunStatus.WAITING and state.waiting and state.waiting.prompt \
                        and rid not in answered:
                    answered.add(rid)
                    self.say(f"answering {self.names[rid]!r}: {state.waiting.prompt} -> yes")
                    client.respond(rid, "yes")
                if state.status in _TERMINAL:
                    open_runs.discard(rid)
        rows = []
        for rid, label in self.names.items():
            state = client.get_state(rid)
            report = client.verify(rid)
            rows.append({"run": label, "run_id": rid, "workflow_id": state.workflow_id,
                         "status": RunStatus(state.status).value, "records": report["count"],
                         "chain_ok": report["ok"], "output": state.output, "error": state.error})
        return rows

    def _show(self, rid: str, state: Any, event: dict[str, str]) -> None:
        status = RunStatus(state.status).value
        detail = ""
        if state.status == RunStatus.WAITING and state.waiting is not None:
            w = state.waiting
            what = f"until {w.until}" if w.until else f"{w.reason.value}{': ' + w.prompt if w.prompt else ''}"
            detail = f" ({what})"
        elif state.status == RunStatus.COMPLETED:
            detail = f" -> {json.dumps(state.output, ensure_ascii=False)[:70]}"
        elif state.error:
            detail = f": {state.error}"
        self.say(f"  {self.names[rid]:<16} v{event.get('v', '?'):<3} {status:<9} at {state.current_node}{detail}")

    def summary(self, rows: list[dict[str, Any]]) -> None:
        if self.as_json:
            click.echo(json.dumps({"ok": all(r["status"] == "completed" and r["chain_ok"] for r in rows),
                                   "runs": rows}, default=str))
            return
        click.echo("")
        click.echo(f"{'run':<17} {'workflow':<18} {'status':<10} {'records':>7}  chain  output")
        for r in rows:
            out = json.dumps(r["output"], ensure_ascii=False) if r["output"] is not None else (r["error"] or "")
            click.echo(f"{r['run']:<17} {r['workflow_id']:<18} {r['status']:<10} {r['records']:>7}  "
                       f"{'ok' if r['chain_ok'] else 'BAD':<5}  {out[:60]}")

    def record(self) -> None:
        """Write down what stays running, for ``abstractruntime stop``."""
        from stores.redis.embedded import shared_embedded

        from .dev import write_stack

        server = None if self.settings.redis.url else shared_embedded(self.settings.redis.data_dir)
        write_stack(self.data_dir, by="demo --keep", supervisor=None,
                    processes={name: proc.pid for name, proc in self.procs.items()},
                    redis={"pid": server.pid, "url": server.url} if server is not None else None)

    def keep_message(self) -> None:
        exports = [f"export ABSTRACTRUNTIME_IMPORTS={self.env['ABSTRACTRUNTIME_IMPORTS']}"]
        if self.settings.redis.url:
            exports.append("export ABSTRACTRUNTIME_REDIS_URL=<the same URL>")
        if self.data_dir != Path(".abstractruntime").resolve():
            exports.append(f"export ABSTRACTRUNTIME_DATA_DIR={self.data_dir}")
        click.echo("")
        click.echo("Everything is still running. In a shell, point the CLI and Flower at it:")
        for line in exports:
            click.echo(f"  {line}")
        click.echo("  abstractruntime runs list; abstractruntime doctor")
        click.echo("  celery -A workers.app flower --address=127.0.0.1 --basic-auth=admin:CHANGE-ME"
                   "   # pip install '.[flower]'")
        click.echo("Stop the workers, beat and the embedded Redis with:")
        click.echo("  abstractruntime stop")


def run_demo(env: dict[str, str], *, keep: bool, wait_s: float, as_json: bool) -> int:
    """Run the demo; its exit code (0: every run completed and every chain verified)."""
    demo = _Demo(env, keep=keep, wait_s=wait_s, as_json=as_json)
    if keep:
        from .dev import live_stack

        running = live_stack(demo.data_dir)
        if running is not None:
            raise click.ClickException(
                f"a stack already runs for {demo.data_dir} (abstractruntime {running.get('by', 'dev')}); stop it "
                f"with `abstractruntime stop` first, or keep the demo in another folder (ABSTRACTRUNTIME_DATA_DIR)")
    ok = False
    try:
        demo.start_services()
        rows = demo.run()
        demo.summary(rows)
        ok = all(r["status"] == "completed" and r["chain_ok"] for r in rows)
        demo.say("every run completed and every chain verifies" if ok else "some runs did not complete")
    finally:
        if keep and ok:
            from stores.redis.embedded import shared_embedded

            if not demo.settings.redis.url:
                shared_embedded(demo.settings.redis.data_dir).detach()
            demo.record()
            demo.keep_message()
            if demo.client is not None:
                demo.client.close()
        else:
            demo.say("stopping the workers, beat and Redis")
            demo.stop_services()
    return 0 if ok else 1
