"""``abstractruntime``: run workers and beat, and start, watch, answer and cancel runs.

Every option is also an environment variable (shown in ``--help``); the connection ones
are the ``ABSTRACTRUNTIME_*`` variables the workers read, so a shell set up for the
workers is set up for the CLI. Output is for people by default and JSON with ``--json``.

Exit codes: 0 success; 1 failure (doctor found a problem, a command failed, a run under
``start --wait`` ended failed or cancelled); 2 bad usage or bad input (malformed JSON, an
unknown workflow, a workflow module that does not import); 3 unknown run; 4 the run is not
in a state that allows it (not waiting, wrong wait key, a wait this command cannot end, run
id taken); 5 Redis or the broker cannot be reached; 6 a hash chain does not verify; 7 timed
out.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from runtime import RunState, RunStatus
from runtime.errors import (
    AbstractRuntimeError,
    CorruptRecordError,
    InvalidRunId,
    PayloadNotSerializable,
    RunAlreadyExists,
    RunNotFound,
    RunNotWaiting,
    VersionConflict,
    WaitKeyMismatch,
    WaitNotEnded,
    WorkflowNotRegistered,
)
from stores.redis.errors import RedisUnavailable

from .settings import QUEUE_KINDS, WorkerSettings

__all__ = ["cli", "main"]

EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNAVAILABLE, EXIT_UNVERIFIED, EXIT_TIMEOUT = \
    1, 2, 3, 4, 5, 6, 7


class CliError(Exception):
    """A failure to report in one line with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# -- shared state ----------------------------------------------------------------------------------


class State:
    """The options of the group, the settings they make, and a client made on first use."""

    def __init__(self, env: dict[str, str], as_json: bool) -> None:
        self.env = env
        self.as_json = as_json
        self._settings: WorkerSettings | None = None
        self._client: Any = None

    @property
    def settings(self) -> WorkerSettings:
        if self._settings is None:
            try:
                self._settings = WorkerSettings.from_env(self.env)
            except ValueError as exc:
                raise CliError(str(exc), EXIT_USAGE) from None
        return self._settings

    @property
    def client(self) -> Any:
        if self._client is None:
            from .client import Client

            try:
                self._client = Client(self.settings)
            except ImportError as exc:
                raise CliError(str(exc), EXIT_USAGE) from None
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def out(self, data: Any, human: Callable[[], None] | str | None = None) -> None:
        """Print ``data`` as JSON with ``--json``, else ``human`` (a text or a printer)."""
        if self.as_json:
            click.echo(json.dumps(data, default=str, ensure_ascii=False))
        elif callable(human):
            human()
        elif human is not None:
            click.echo(human)


pass_state = click.make_pass_decorator(State)


def _opt(*decls: str, env: str, **kwargs: Any) -> Any:
    """An option that is also the environment variable ``env`` (shown in ``--help``)."""
    return click.option(*decls, envvar=env, show_envvar=True, **kwargs)


def _json_arg(text: str, what: str) -> Any:
    """A JSON value from the command line; ``@path`` reads it from a file."""
    source = what
    if text.startswith("@"):
        path = Path(text[1:])
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{what}: cannot read {path}: {exc.strerror}", EXIT_USAGE) from None
        source = f"{what} ({path})"
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
                       EXIT_USAGE) from None


def _state_dict(run: RunState) -> dict[str, Any]:
    return run.to_dict()


def _describe(run: RunState) -> None:
    click.echo(f"run       {run.run_id}")
    click.echo(f"workflow  {run.workflow_id}")
    click.echo(f"status    {RunStatus(run.status).value}")
    click.echo(f"node      {run.current_node}")
    click.echo(f"updated   {run.updated_at}")
    if run.parent_run_id:
        click.echo(f"parent    {run.parent_run_id}")
    w = run.waiting
    if w is not None:
        click.echo(f"waits for {w.reason.value if hasattr(w.reason, 'value') else w.reason}"
                   + (f", key {w.wait_key}" if w.wait_key else "") + (f", until {w.until}" if w.until else ""))
        if w.prompt:
            click.echo(f"question  {w.prompt}" + (f"  choices: {', '.join(map(str, w.choices))}" if w.choices else ""))
    if run.output is not None:
        click.echo(f"output    {json.dumps(run.output, ensure_ascii=False)}")
    if run.error:
        click.echo(f"error     {run.error}")


def _record_line(i: int, rec: dict[str, Any]) -> str:
    what = rec.get("error") if rec.get("status") == "failed" else rec.get("result")
    text = json.dumps(what, ensure_ascii=False, default=str) if what is not None else ""
    if len(text) > 80:
        text = text[:77] + "..."
    effect = (rec.get("effect") or {}).get("type") or "-"
    return f"{i:>4}  {rec.get('node_id', ''):<16} {rec.get('status', ''):<9} {effect:<18} " \
           f"#{rec.get('attempt', 1)}  {text}"


# -- the group -------------------------------------------------------------------------------------


def _json_after_command(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        state = ctx.find_object(State)
        if state is not None:
            state.as_json = True


#: Commands that run processes in the foreground and print their logs, not a result.
_NO_JSON_OUTPUT = frozenset({"worker", "beat", "dev"})


class _Group(click.Group):
    """A group whose every command also takes ``--json`` after its name (``status ID --json``)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        if (not isinstance(cmd, click.Group) and cmd.name not in _NO_JSON_OUTPUT
                and not any(p.name == "json_after" for p in cmd.params)):
            cmd.params.append(click.Option(["--json", "json_after"], is_flag=True, expose_value=False,
                                           is_eager=True, callback=_json_after_command,
                                           help="Print JSON, for scripts (as abstractruntime --json)."))
        super().add_command(cmd, name)

    def group(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Group)
        return super().group(*args, **kwargs)


_EPILOG = """\b
Examples:
  abstractruntime dev                                  a local stack in the foreground (Ctrl-C stops it)
  abstractruntime start refund --vars '{"order_id": "A-17"}' --wait 10
  abstractruntime waiting                              who is being asked what
  abstractruntime respond RUN_ID yes
  abstractruntime status RUN_ID --json
  abstractruntime wake RUN_ID --now --reason "skip the cool-down for the hotfix"

\b
Exit codes: 0 ok; 1 failed (also a run that ended failed or cancelled under start --wait);
2 bad usage or input; 3 unknown run; 4 the run's state refuses it (not waiting, waits for
something else, run id taken); 5 Redis or the broker unreachable, or no deployment here;
6 a hash chain does not verify; 7 timed out.
"""


@click.group(cls=_Group, epilog=_EPILOG,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                                # Options without a variable of their own are ABSTRACTRUNTIME_<COMMAND>_<OPTION>.
                                "auto_envvar_prefix": "ABSTRACTRUNTIME"})
@_opt("--redis-url", env="ABSTRACTRUNTIME_REDIS_URL", metavar="URL",
              help="Redis keeping the runs (redis://, rediss://, unix://). Unset: the embedded redis-server.")
@_opt("--broker-url", env="ABSTRACTRUNTIME_BROKER_URL", metavar="URL",
              help="Celery broker. Unset: the Redis that keeps the runs.")
@_opt("--prefix", env="ABSTRACTRUNTIME_REDIS_PREFIX", help="Key prefix of the deployment [ar].")
@_opt("--imports", env="ABSTRACTRUNTIME_IMPORTS", metavar="MODULES",
              help="Comma-separated modules that register workflows.")
@_opt("--data-dir", env="ABSTRACTRUNTIME_DATA_DIR", type=click.Path(file_okay=False),
              help="Folder of the embedded Redis [./.abstractruntime].")
@_opt("--json", "as_json", is_flag=True, env="ABSTRACTRUNTIME_JSON", help="Print JSON, for scripts.")
@click.version_option(package_name="abstractruntime-celery", prog_name="abstractruntime")
@click.pass_context
def cli(ctx: click.Context, redis_url: str | None, broker_url: str | None, prefix: str | None,
        imports: str | None, data_dir: str | None, as_json: bool) -> None:
    """Durable workflows on Celery and Redis: workers, beat, and the runs they move."""
    env = dict(os.environ)
    for var, value in (("ABSTRACTRUNTIME_REDIS_URL", redis_url), ("ABSTRACTRUNTIME_BROKER_URL", broker_url),
                       ("ABSTRACTRUNTIME_REDIS_PREFIX", prefix), ("ABSTRACTRUNTIME_IMPORTS", imports),
                       ("ABSTRACTRUNTIME_DATA_DIR", data_dir)):
        if value:
            env[var] = value
    # Like `celery -A`: workflow modules named by ABSTRACTRUNTIME_IMPORTS are found in the current
    # directory (a console script has only its own folder on sys.path).
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    state = State(env, as_json)
    ctx.obj = state
    ctx.call_on_close(state.close)


# -- processes -------------------------------------------------------------------------------------


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


def _celery(state: State, argv: list[str], log_format: str) -> None:
    """Replace this process with ``celery -A workers.app ...`` (signals then reach Celery itself)."""
    os.environ.update(state.env)
    state.settings  # noqa: B018  (a bad setting fails here, with the variable named)
    _check_imports(state)
    os.environ["ABSTRACTRUNTIME_LOG_FORMAT"] = log_format
    # Celery puts the current folder on its own path, not on its children's: the
    # workflow modules found from here must be found by every process it starts.
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([os.getcwd(), path] if path else [os.getcwd()])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", "celery", "-A", "workers.app", *argv])


_LOG_FORMAT = _opt("--log-format", env="ABSTRACTRUNTIME_LOG_FORMAT", type=click.Choice(["text", "json"]),
                   default="text", show_default=True, help="Log lines as text or as one JSON object each.")

_WORKER_EPILOG = """\b
Options this command does not know go to Celery after `--`:
  abstractruntime worker --queues ticks -- --max-tasks-per-child 100 --autoscale 8,2
"""


@cli.command(epilog=_WORKER_EPILOG)
@_opt("--queues", "-Q", env="ABSTRACTRUNTIME_WORKER_QUEUES", default=",".join(QUEUE_KINDS),
              show_default=True, help="Queue kinds to consume, comma-separated.")
@_opt("--concurrency", "-c", env="ABSTRACTRUNTIME_WORKER_CONCURRENCY", type=click.IntRange(1),
              help="Pool size [the number of CPUs].")
@_opt("--pool", "-P", env="ABSTRACTRUNTIME_WORKER_POOL", default="prefork", show_default=True,
              type=click.Choice(["prefork", "solo", "threads"]), help="Celery pool.")
@_opt("--events", "-E", is_flag=True, env="ABSTRACTRUNTIME_WORKER_EVENTS", help="Send task events (for Flower).")
@_opt("--name", "-n", env="ABSTRACTRUNTIME_WORKER_NAME",
              help="Worker name [KINDS.PID@HOST: the queue kinds and the process id, unique per process].")
@_opt("--loglevel", "-l", env="ABSTRACTRUNTIME_LOGLEVEL", default="INFO", show_default=True)
@_LOG_FORMAT
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED, metavar="[-- CELERY_OPTIONS...]")
@pass_state
def worker(state: State, queues: str, concurrency: int | None, pool: str, events: bool, name: str | None,
           loglevel: str, log_format: str, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker on the given queues (runs in the foreground)."""
    kinds = [k.strip() for k in queues.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in QUEUE_KINDS]
    if unknown or not kinds:
        raise CliError(f"unknown queue kind(s) {', '.join(unknown) or '(none)'}; known: {', '.join(QUEUE_KINDS)}",
                       EXIT_USAGE)
    argv = ["worker", "-Q", ",".join(state.settings.queue(k) for k in kinds), "-P", pool, "-l", loglevel]
    if concurrency:
        argv += ["-c", str(concurrency)]
    if events:
        argv.append("-E")
    # Celery's default, celery@HOST, is the same for every worker of a host: on RabbitMQ the
    # second one's control queue (celery@HOST.celery.pidbox) is locked and it stops at start.
    # The pid stays the same through exec, so it is the worker's own.
    argv += ["-n", name or f"{'-'.join(kinds)}.{os.getpid()}@%h"]
    _celery(state, [*argv, *celery_args], log_format)


@cli.command()
@_opt("--loglevel", "-l", env="ABSTRACTRUNTIME_LOGLEVEL", default="INFO", show_default=True)
@_LOG_FORMAT
@pass_state
def beat(state: State, loglevel: str, log_format: str) -> None:
    """Run Celery beat: the recovery sweep every sweep period (run exactly one)."""
    _celery(state, ["beat", "-l", loglevel], log_format)


# -- runs ------------------------------------------------------------------------------------------


@cli.command()
@click.argument("workflow_id")
@click.option("--vars", "vars_", metavar="JSON|@FILE", help="Initial vars, a JSON object.")
@click.option("--run-id", help="The run's id; it must be free.")
@click.option("--wait", "wait_s", type=float, metavar="SECONDS",
              help="Wait up to SECONDS for the run to wait or end, and show it.")
@pass_state
def start(state: State, workflow_id: str, vars_: str | None, run_id: str | None, wait_s: float | None) -> None:
    """Start a run of WORKFLOW_ID."""
    _require_deployment(state)
    run_vars = _json_arg(vars_, "--vars") if vars_ is not None else None
    if run_vars is not None and not isinstance(run_vars, dict):
        raise CliError("--vars must be a JSON object", EXIT_USAGE)
    rid = state.client.start(workflow_id, vars=run_vars, run_id=run_id)
    if wait_s is None:
        state.out({"run_id": rid, "workflow_id": workflow_id}, f"started run {rid} ({workflow_id})")
        return
    from .client import WaitTimeout

    try:
        run = state.client.wait_for(rid, timeout=wait_s)
    except WaitTimeout as exc:
        # The run exists and goes on: its id is on stdout for the script to follow it up.
        seen = exc.state
        state.out({**_state_dict(seen), "timed_out": True}, lambda: _describe(seen))
        raise CliError(str(exc), EXIT_TIMEOUT) from None
    state.out(_state_dict(run), lambda: _describe(run))
    if run.status in (RunStatus.FAILED, RunStatus.CANCELLED):
        # Like `temporal workflow execute`: a run that did not succeed is a failed command.
        raise CliError(f"run {rid} {RunStatus(run.status).value}: {run.error}", EXIT_FAILURE)


@cli.command()
@click.argument("run_id")
@pass_state
def status(state: State, run_id: str) -> None:
    """Show a run: status, node, what it waits for, output or error, and its last failure."""
    _require_deployment(state)
    run = state.client.get_state(run_id)
    data = _state_dict(run)
    failure = state.client.last_failure(run_id)
    if failure is not None:
        data["last_failure"] = failure

    def human() -> None:
        _describe(run)
        if failure is not None:
            click.echo(f"failure   {failure.get('type')} in {failure.get('where')} of node {failure.get('node')} "
                       f"(attempt {failure.get('attempt')}, {failure.get('at')})")
            if run.status == RunStatus.FAILED:
                click.echo("traceback (most recent call last, as the worker logged it):")
                for line in str(failure.get("traceback") or "").rstrip().splitlines():
                    click.echo(f"  {line}")

    state.out(data, human)


@cli.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Print records as they are committed, until the run ends.")
@pass_state
def ledger(state: State, run_id: str, follow: bool) -> None:
    """Print a run's ledger (one line per record; JSON lines with --json --follow)."""
    _require_deployment(state)
    client = state.client
    client.get_state(run_id)  # unknown run: exit 3
    if not follow:
        records = client.get_ledger(run_id)
        state.out(records, "\n".join(_record_line(i, r) for i, r in enumerate(records)) or "(no records yet)")
        return
    for i, record in enumerate(client.follow_ledger(run_id, block_ms=1000)):
        if state.as_json:
            click.echo(json.dumps(record, default=str, ensure_ascii=False))
        else:
            click.echo(_record_line(i, record))
        sys.stdout.flush()


@cli.command()
@click.argument("run_id", required=False)
@click.option("--all", "all_runs", is_flag=True, help="Verify every run.")
@pass_state
def verify(state: State, run_id: str | None, all_runs: bool) -> None:
    """Check the hash chain of a run's ledger (or of every run); names the first bad record."""
    if bool(run_id) == all_runs:
        raise CliError("give a RUN_ID or --all", EXIT_USAGE)
    _require_deployment(state)
    client = state.client
    if run_id:
        client.get_state(run_id)
        ids = [run_id]
    else:
        ids = client.backend.run_ids()
    from stores.signing import SigningError, verifier_from_env

    try:
        verifier = verifier_from_env(state.env)
    except SigningError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    bad: list[dict[str, Any]] = []
    checked = 0
    with _progress(state, ids, "verifying") as items:
        for rid in items:
            report = client.verify(rid)
            errors = list(report["errors"])
            if verifier is not None:  # signatures too, when public keys are configured
                errors += verifier.verify(client.get_ledger(rid))["errors"]
                errors.sort(key=lambda e: e.get("index", 0))
            checked += 1
            if errors:
                bad.append({"run_id": rid, "first_bad_index": errors[0].get("index"), "errors": errors,
                            "count": report["count"], "first_error": errors[0]})
    result = {"ok": not bad, "checked": checked, "bad": bad, "signatures": verifier is not None}

    def human() -> None:
        for b in bad:
            e = b["first_error"]
            click.echo(f"run {b['run_id']}: chain broken at record {b['first_bad_index']} of {b['count']}: "
                       f"{e.get('type', '?')}")
        click.echo(f"{checked} run(s) checked, {len(bad)} with a broken chain" if all_runs or bad
                   else f"chain ok: {run_id}")

    state.out(result, human)
    if bad:
        raise click.exceptions.Exit(EXIT_UNVERIFIED)


@contextmanager
def _progress(state: State, items: list[str], label: str) -> Iterator[Any]:
    if state.as_json or len(items) < 2:
        yield items
        return
    with click.progressbar(items, label=label, file=sys.stderr, show_pos=True) as bar:
        yield bar


@cli.command()
@click.argument("run_id")
@click.option("--wait-key", required=True, help="The key the run waits on (its own; see `status`).")
@click.option("--payload", default="null", metavar="JSON|@FILE", help="What to deliver (JSON).")
@pass_state
def resume(state: State, run_id: str, wait_key: str, payload: str) -> None:
    """Deliver a payload to a run waiting on WAIT_KEY (an event or a question; never a timer)."""
    _require_deployment(state)
    value = _json_arg(payload, "--payload")
    run = state.client.resume(run_id, wait_key=wait_key, payload=value)
    state.out(_state_dict(run), f"resumed run {run_id}")


@cli.command()
@click.argument("run_id")
@click.argument("answer")
@pass_state
def respond(state: State, run_id: str, answer: str) -> None:
    """Answer a run's question. ANSWER is taken as JSON when it parses ('{"ok": true}', 3), else as text.

    Only a person's question (ask_user) is answered: a run waiting for an event, a timer or a
    child run is refused (exit 4) and left as it was.
    """
    _require_deployment(state)
    try:
        value: Any = json.loads(answer)
    except json.JSONDecodeError:
        value = answer
    run = state.client.respond(run_id, value)
    state.out(_state_dict(run), f"answered run {run_id}")


@cli.command()
@click.argument("run_id")
@click.option("--now", is_flag=True, help="Wake it now, before its time (required: the only way today).")
@click.option("--reason", help="Why (recorded in the ledger with who and when). Required.")
@pass_state
def wake(state: State, run_id: str, now: bool, reason: str | None) -> None:
    """Wake a run sleeping until a time, before that time; the ledger records who, when and why."""
    _require_deployment(state)
    if not now:
        raise CliError("say --now to wake the run before its time (a timer wakes it by itself when due)",
                       EXIT_USAGE)
    if not reason or not reason.strip():
        raise CliError("--reason is required: say why the timer is skipped (it goes into the ledger)", EXIT_USAGE)
    run = state.client.wake(run_id, reason=reason)
    state.out(_state_dict(run), f"woke run {run_id}; it moves on to node {run.current_node}")


@cli.command()
@click.argument("wait_key")
@click.option("--payload", default="null", metavar="JSON|@FILE", help="What to deliver (JSON).")
@pass_state
def emit(state: State, wait_key: str, payload: str) -> None:
    """Resume every run waiting on WAIT_KEY with a payload."""
    _require_deployment(state)
    value = _json_arg(payload, "--payload")
    ids = state.client.emit(wait_key, value)
    state.out({"wait_key": wait_key, "resumed": ids},
              lambda: click.echo(f"resumed {len(ids)} run(s)" + "".join(f"\n  {i}" for i in ids)))


@cli.command()
@click.argument("run_id")
@click.option("--reason", help="Why (stored as the run's error).")
@pass_state
def cancel(state: State, run_id: str, reason: str | None) -> None:
    """Cancel a run and its children."""
    _require_deployment(state)
    runs = state.client.cancel(run_id, reason=reason)
    ids = [r.run_id for r in runs]
    state.out({"cancelled": ids}, lambda: click.echo(
        f"cancelled {len(ids)} run(s)" + "".join(f"\n  {i}" for i in ids) if ids
        else f"run {run_id} had already ended; nothing cancelled"))


@cli.group()
def runs() -> None:
    """List and count runs (from the indexes, newest first)."""


_STATUS = click.Choice([s.value for s in RunStatus])


@runs.command("list")
@click.option("--status", type=_STATUS)
@click.option("--workflow", help="Workflow id.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@pass_state
def runs_list(state: State, status: str | None, workflow: str | None, limit: int) -> None:
    """List runs."""
    _require_deployment(state)
    found = state.client.list_runs(status=status, workflow_id=workflow, limit=limit)

    def human() -> None:
        if not found:
            click.echo("no runs")
        for r in found:
            click.echo(f"{r.run_id:<38} {r.workflow_id:<20} {RunStatus(r.status).value:<10} "
                       f"{str(r.current_node):<16} {r.updated_at}")

    state.out([{"run_id": r.run_id, "workflow_id": r.workflow_id, "status": RunStatus(r.status).value,
                "current_node": r.current_node, "updated_at": r.updated_at} for r in found], human)


@runs.command("count")
@click.option("--status", type=_STATUS)
@click.option("--workflow", help="Workflow id.")
@pass_state
def runs_count(state: State, status: str | None, workflow: str | None) -> None:
    """Count runs."""
    _require_deployment(state)
    if status is None and workflow is None:
        counts = {s.value: state.client.count(status=s.value) for s in RunStatus}
        state.out(counts, "\n".join(f"{k:<10} {v}" for k, v in counts.items()))
        return
    n = state.client.count(status=status, workflow_id=workflow)
    state.out({"count": n, "status": status, "workflow_id": workflow}, str(n))


@cli.command()
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@pass_state
def waiting(state: State, limit: int) -> None:
    """Runs waiting for a person: their questions and choices."""
    _require_deployment(state)
    found = state.client.list_runs(status="waiting", wait_reason="user", limit=limit)
    rows = [{"run_id": r.run_id, "workflow_id": r.workflow_id, "prompt": r.waiting.prompt if r.waiting else None,
             "choices": r.waiting.choices if r.waiting else None,
             "wait_key": r.waiting.wait_key if r.waiting else None} for r in found]

    def human() -> None:
        if not rows:
            click.echo("nobody is being asked anything")
        for row in rows:
            choices = f"  [{', '.join(map(str, row['choices']))}]" if row["choices"] else ""
            click.echo(f"{row['run_id']}  {row['workflow_id']}: {row['prompt']}{choices}")
        if rows:
            click.echo("answer with: abstractruntime respond RUN_ID ANSWER")

    state.out(rows, human)


@cli.command()
@pass_state
def doctor(state: State) -> None:
    """Check Redis, the broker, workers per queue, beat, overdue timers and stuck runs."""
    from .doctor import run_checks

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


@cli.command()
@click.option("--keep", is_flag=True, help="Leave Redis, the workers and beat running, and say how to reach them.")
@click.option("--wait-s", type=float, default=3.0, show_default=True, help="How long the timer run sleeps.")
@pass_state
def demo(state: State, keep: bool, wait_s: float) -> None:
    """Run example workflows through real workers, with nothing to configure."""
    from .demo import run_demo

    code = run_demo(state.env, keep=keep, wait_s=wait_s, as_json=state.as_json)
    if code:
        raise click.exceptions.Exit(code)


# -- the local stack -------------------------------------------------------------------------------


@cli.command()
@_opt("--concurrency", "-c", env="ABSTRACTRUNTIME_WORKER_CONCURRENCY", type=click.IntRange(1),
      help="Pool size of the worker [the number of CPUs].")
@_opt("--loglevel", "-l", env="ABSTRACTRUNTIME_LOGLEVEL", default="INFO", show_default=True)
@pass_state
def dev(state: State, concurrency: int | None, loglevel: str) -> None:
    """Run the local stack in the foreground: the embedded Redis, a worker on every queue and beat.

    Their output is interleaved, each line behind the name of its process. Ctrl-C (or
    `abstractruntime stop` in another shell) stops all of it and exits 0; a process that dies
    stops the rest and exits 1; a stack already running for the data folder exits 4.
    """
    from .dev import run_dev

    state.settings  # noqa: B018  (a bad setting fails here, with the variable named)
    code = run_dev(state.env, concurrency=concurrency, loglevel=loglevel)
    if code:
        raise click.exceptions.Exit(code)


@cli.command()
@pass_state
def stop(state: State) -> None:
    """Stop what `dev` or `demo --keep` left running for the data folder, and its embedded Redis."""
    from .dev import stop_stack

    folder = Path(state.settings.redis.data_dir).resolve()
    stopped = stop_stack(folder)
    state.out({"data_dir": str(folder), "stopped": stopped},
              "\n".join(f"stopped {s['name']} (pid {s['pid']})" for s in stopped) or f"nothing runs for {folder}")


#: What a read-only command says where there is nothing to read.
NO_DEPLOYMENT = "no deployment here: set ABSTRACTRUNTIME_REDIS_URL or run `abstractruntime dev`"


def _require_deployment(state: State) -> None:
    """Refuse a command where nothing runs, instead of starting a Redis by surprise.

    A run started, answered or cancelled against a server that this command alone would
    start and stop would be stranded there, so commands that change runs refuse too.

    With no Redis URL, the embedded server of the data folder must already run (``dev``,
    ``demo --keep``, a worker): it is used without being owned, so the command neither starts
    nor stops it, and creates no folder.
    """
    settings = state.settings
    if settings.redis.url is not None:
        return
    from stores.redis.embedded import shared_embedded

    if shared_embedded(settings.redis.data_dir).attach_running() is None:
        folder = Path(settings.redis.data_dir).resolve()
        raise CliError(f"{NO_DEPLOYMENT} (no embedded Redis runs for {folder})", EXIT_UNAVAILABLE)


# -- entry point -----------------------------------------------------------------------------------

_CODES: list[tuple[type[BaseException], int]] = [
    (RunNotFound, EXIT_NOT_FOUND),
    (InvalidRunId, EXIT_USAGE),
    (WorkflowNotRegistered, EXIT_USAGE),
    (PayloadNotSerializable, EXIT_USAGE),
    (RunAlreadyExists, EXIT_CONFLICT),
    (RunNotWaiting, EXIT_CONFLICT),
    (WaitKeyMismatch, EXIT_CONFLICT),
    (WaitNotEnded, EXIT_CONFLICT),
    (VersionConflict, EXIT_CONFLICT),
    (RedisUnavailable, EXIT_UNAVAILABLE),
    (CorruptRecordError, EXIT_FAILURE),
    (TimeoutError, EXIT_TIMEOUT),
    (AbstractRuntimeError, EXIT_FAILURE),
    # A workflow module that cannot be imported (the message names it and ABSTRACTRUNTIME_IMPORTS).
    (ImportError, EXIT_USAGE),
]


def _message(exc: BaseException) -> str:
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split())  # one line


def main(argv: list[str] | None = None) -> int:
    """The console script: run the CLI and turn errors into one line and an exit code."""
    try:
        # Without standalone mode, click returns the code of a click.exceptions.Exit raised inside.
        code = cli.main(args=argv, prog_name="abstractruntime", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return EXIT_FAILURE
    except click.exceptions.NoArgsIsHelpError as exc:
        # `abstractruntime` (or `abstractruntime runs`) alone: the help, readable, not an error line.
        click.echo(exc.ctx.get_help() if exc.ctx is not None else exc.format_message())
        return 0
    except click.UsageError as exc:
        hint = f" (try '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        click.echo(f"error: {_message(click.ClickException(exc.format_message()))}{hint}", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"error: {_message(click.ClickException(exc.format_message()))}", err=True)
        return exc.exit_code
    except CliError as exc:
        click.echo(f"error: {_message(exc)}", err=True)
        return exc.code
    except Exception as exc:
        for kind, code in _CODES:
            if isinstance(exc, kind):
                click.echo(f"error: {_message(exc)}", err=True)
                return code
        import redis
        from kombu.exceptions import OperationalError

        if isinstance(exc, OperationalError):
            click.echo(f"error: the broker cannot be reached: {_message(exc)}", err=True)
            return EXIT_UNAVAILABLE
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            click.echo(f"error: Redis cannot be reached: {type(exc).__name__}", err=True)
            return EXIT_UNAVAILABLE
        raise


if __name__ == "__main__":  # python -m workers.cli
    sys.exit(main())
