"""The commands that run or check processes: worker, beat, dev, stop, demo and doctor.

``worker`` and ``beat`` replace this process with Celery's (``celery -A workers.app``);
``dev`` runs the local stack in the foreground (:mod:`workers.dev`), ``stop`` stops it,
``demo`` runs example workflows through real workers and ``doctor`` checks a deployment.
``workers.cli`` adds them to the ``abstractruntime`` group.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..settings import QUEUE_KINDS
from ._common import EXIT_FAILURE, EXIT_USAGE, CliError, State, _opt, pass_state

# -- workers and beat ------------------------------------------------------------------------------


def _check_imports(state: State) -> None:
    """Import the workflow modules now, so that a bad one is one line naming the setting (exit 2),
    not a traceback after Celery's banner. The current folder is on the path, as with ``celery -A``."""
    imports = state.settings.imports
    if not imports:
        return
    import importlib

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    named = state.env.get("ABSTRACTRUNTIME_IMPORTS", ",".join(imports))
    for module in imports:
        try:
            importlib.import_module(module)
        except Exception as exc:
            why = str(exc) if isinstance(exc, ImportError) else f"{type(exc).__name__}: {exc}"
            raise CliError(f"cannot import {module!r} named by ABSTRACTRUNTIME_IMPORTS={named}: {why}",
                           EXIT_USAGE) from None


def _celery_env(state: State, log_format: str) -> None:
    """Set this process's environment for Celery's (checking the settings and imports first)."""
    os.environ.update(state.env)
    state.settings  # noqa: B018  (a bad setting fails here, with the variable named)
    _check_imports(state)
    os.environ["ABSTRACTRUNTIME_LOG_FORMAT"] = log_format
    # Celery puts the current folder on its own path, not on its children's: the
    # workflow modules found from here must be found by every process it starts.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), path] if path else [os.getcwd()])


def _celery(state: State, argv: list[str], log_format: str) -> None:
    """Replace this process with ``celery -A workers.app ...`` (signals then reach Celery itself)."""
    _celery_env(state, log_format)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.app", *argv])


_LOG_FORMAT = _opt("--log-format", env="ABSTRACTRUNTIME_LOG_FORMAT", type=click.Choice(["text", "json"]),
                   default="text", show_default=True, help="Log lines as text or as one JSON object each.")

_WORKER_EPILOG = """\b
Options this command does not know go to Celery after `--`:
  abstractruntime worker --queues ticks -- --max-tasks-per-child 100 --autoscale 8,2
"""


@click.command(epilog=_WORKER_EPILOG)
@_opt("--queues", "-Q", env="ABSTRACTRUNTIME_WORKER_QUEUES", default=",".join(QUEUE_KINDS),
              show_default=True, help="Queue kinds to consume, comma-separated.")
@_opt("--concurrency", "-c", env="ABSTRACTRUNTIME_WORKER_CONCURRENCY", type=click.IntRange(1),
              help="Pool size; with -P auto, the number of solo processes [the number of CPUs].")
@_opt("--pool", "-P", env="ABSTRACTRUNTIME_WORKER_POOL", default="auto", show_default=True,
              type=click.Choice(["auto", "prefork", "solo", "threads"]),
              help="Celery pool; auto: a solo process per CPU for ticks and tools, threads for llm.")
@_opt("--llm-threads", env="ABSTRACTRUNTIME_WORKER_LLM_THREADS", type=click.IntRange(1), default=16,
              show_default=True, help="With -P auto: threads of the process serving the llm queue.")
@_opt("--events", "-E", is_flag=True, env="ABSTRACTRUNTIME_WORKER_EVENTS", help="Send task events (for Flower).")
@_opt("--name", "-n", env="ABSTRACTRUNTIME_WORKER_NAME",
              help="Worker name [KINDS.PID@HOST: the queue kinds and the process id, unique per process].")
@_opt("--loglevel", "-l", env="ABSTRACTRUNTIME_LOGLEVEL", default="INFO", show_default=True)
@_LOG_FORMAT
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CELERY_OPTIONS...]")
@pass_state
def worker(state: State, queues: str, concurrency: int | None, pool: str, llm_threads: int, events: bool,
           name: str | None, loglevel: str, log_format: str, celery_args: tuple[str, ...]) -> None:
    """Run Celery workers on the given queues (in the foreground).

    The default pool, auto, starts one solo worker process per CPU for the queues whose tasks
    use the CPU and one threads worker for llm, and supervises them (docs/performance.md);
    prefork, solo and threads run one Celery worker with that pool, as `celery worker -P` does.
    """
    kinds = [k.strip() for k in queues.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in QUEUE_KINDS]
    if unknown or not kinds:
        raise CliError(f"unknown queue kind(s) {', '.join(unknown) or '(none)'}; known: {', '.join(QUEUE_KINDS)}",
                       EXIT_USAGE)
    common = ["-l", loglevel, *(["-E"] if events else [])]
    # Celery's default, celery@HOST, is the same for every worker of a host: on RabbitMQ the
    # second one's control queue (celery@HOST.celery.pidbox) is locked and it stops at start.
    # The pid stays the same through exec, so it is the worker's own.
    name = name or f"{'-'.join(kinds)}.{os.getpid()}@%h"
    if pool == "auto":
        from ..supervisor import plan_children, supervise

        children = plan_children(queue_names={k: state.settings.queue(k) for k in kinds},
                                 processes=concurrency or os.cpu_count() or 1, llm_threads=llm_threads,
                                 name=name, common=[*common, *celery_args])
        _celery_env(state, log_format)
        raise click.exceptions.Exit(supervise(children, dict(os.environ)))
    argv = ["worker", "-Q", ",".join(state.settings.queue(k) for k in kinds), "-P", pool, *common]
    if concurrency:
        argv += ["-c", str(concurrency)]
    _celery(state, [*argv, "-n", name, *celery_args], log_format)


@click.command()
@_opt("--loglevel", "-l", env="ABSTRACTRUNTIME_LOGLEVEL", default="INFO", show_default=True)
@_LOG_FORMAT
@pass_state
def beat(state: State, loglevel: str, log_format: str) -> None:
    """Run Celery beat: the recovery sweep every sweep period (run exactly one)."""
    _celery(state, ["beat", "-l", loglevel], log_format)


# -- the local stack -------------------------------------------------------------------------------


@click.command()
@_opt("--concurrency", "-c", env="ABSTRACTRUNTIME_WORKER_CONCURRENCY", type=click.IntRange(1),
      help="Pool size of the worker [the number of CPUs].")
@_opt("--loglevel", "-l", env="ABSTRACTRUNTIME_LOGLEVEL", default="INFO", show_default=True)
@_opt("--console-port", env="ABSTRACTRUNTIME_DEV_CONSOLE_PORT", type=click.IntRange(1, 65535),
      help="Serve the run console too, on 127.0.0.1:PORT, without login (needs the console extra).")
@pass_state
def dev(state: State, concurrency: int | None, loglevel: str, console_port: int | None) -> None:
    """Run the local stack in the foreground: the embedded Redis, a worker on every queue and beat.

    Their output is interleaved, each line behind the name of its process. Ctrl-C (or
    `abstractruntime stop` in another shell) stops all of it and exits 0; a process that dies
    stops the rest and exits 1; a stack already running for the data folder exits 4.
    """
    from ..dev import run_dev

    state.settings  # noqa: B018  (a bad setting fails here, with the variable named)
    code = run_dev(state.env, concurrency=concurrency, loglevel=loglevel, console_port=console_port)
    if code:
        raise click.exceptions.Exit(code)


@click.command()
@pass_state
def stop(state: State) -> None:
    """Stop what `dev` or `demo --keep` left running for the data folder, and its embedded Redis."""
    from ..dev import stop_stack

    folder = Path(state.settings.redis.data_dir).resolve()
    stopped = stop_stack(folder)
    state.out({"data_dir": str(folder), "stopped": stopped},
              "\n".join(f"stopped {s['name']} (pid {s['pid']})" for s in stopped) or f"nothing runs for {folder}")


# -- checks and the demo ---------------------------------------------------------------------------


@click.command()
@pass_state
def doctor(state: State) -> None:
    """Check Redis, the broker, workers per queue, beat, overdue timers and stuck runs."""
    from ..doctor import run_checks

    checks = run_checks(state.settings, state.env)
    failed = [c for c in checks if c["status"] == "fail"]

    def human() -> None:
        for c in checks:
            mark = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}[c["status"]]
            click.echo(f"[{mark}] {c['check']}: {c['detail']}")
            if c.get("advice") and c["status"] != "ok":
                click.echo(f"       -> {c['advice']}")

    state.out({"ok": not failed, "checks": checks}, human)
    if failed:
        raise click.exceptions.Exit(EXIT_FAILURE)


@click.command()
@click.option("--keep", is_flag=True, help="Leave Redis, the workers and beat running, and say how to reach them.")
@click.option("--wait-s", type=float, default=3.0, show_default=True, help="How long the timer run sleeps.")
@pass_state
def demo(state: State, keep: bool, wait_s: float) -> None:
    """Run example workflows through real workers, with nothing to configure."""
    from ..demo import run_demo

    code = run_demo(state.env, keep=keep, wait_s=wait_s, as_json=state.as_json)
    if code:
        raise click.exceptions.Exit(code)
