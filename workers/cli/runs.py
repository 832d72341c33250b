"""The commands on runs: start, status, ledger, verify, resume, respond, wake, retry, emit, cancel,
and runs list / count.

Each one needs a deployment (``_require_deployment``), calls the client and prints the run
or what changed; ``workers.cli`` adds them to the ``abstractruntime`` group.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from runtime import RunState, RunStatus
from runtime._clock import iso_ms
from runtime.errors import RunNotFailed, UnknownNodeError
from runtime.waitset import open_names, wait_named
from stores.redis.attrs import attrs_of

from ._common import (
    EXIT_CONFLICT,
    EXIT_FAILURE,
    EXIT_TIMEOUT,
    EXIT_UNVERIFIED,
    EXIT_USAGE,
    CliError,
    State,
    _Group,
    _json_arg,
    _require_deployment,
    pass_state,
)

# -- showing a run ---------------------------------------------------------------------------------


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
    if attrs_of(run):
        click.echo(f"attrs     {', '.join(f'{k}={v}' for k, v in attrs_of(run).items())}")
    w = run.waiting
    if w is not None:
        click.echo(f"waits for {w.reason.value if hasattr(w.reason, 'value') else w.reason}"
                   + (f", key {w.wait_key}" if w.wait_key else "") + (f", until {w.until}" if w.until else ""))
        if w.prompt:
            click.echo(f"question  {w.prompt}" + (f"  choices: {', '.join(map(str, w.choices))}" if w.choices else ""))
        for name in open_names(w):  # a named wait set: each open wait (answer with `answer RUN_ID NAME`)
            wait = wait_named(w, name) or {}
            due = f", due {iso_ms(wait['deadline_ms'])}" if wait.get("deadline_ms") is not None else ""
            click.echo(f"wait      {name}: {wait.get('prompt') or wait.get('wait_key')}{due}")
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


def _attrs_arg(given: tuple[str, ...]) -> dict[str, str] | None:
    """The ``--attr NAME=VALUE`` options (repeatable) as a mapping; None when there are none."""
    out: dict[str, str] = {}
    for text in given:
        name, sep, value = text.partition("=")
        if not sep or not name.strip():
            raise CliError(f"--attr {text!r}: expected NAME=VALUE (customer=c-42)", EXIT_USAGE)
        name = name.strip()
        if name in out:
            raise CliError(f"--attr {name} is given twice", EXIT_USAGE)
        out[name] = value
    return out or None


def _attr_option(help_text: str) -> Any:
    return click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE", help=help_text)


# -- the commands ----------------------------------------------------------------------------------


@click.command()
@click.argument("workflow_id")
@click.option("--vars", "vars_", metavar="JSON|@FILE", help="Initial vars, a JSON object.")
@click.option("--run-id", help="The run's id; it must be free.")
@click.option("--wait", "wait_s", type=float, metavar="SECONDS",
              help="Wait up to SECONDS for the run to wait or end, and show it.")
@click.option("--tenant", help="Flow control: the tenant the run is admitted under.")
@click.option("--user", help="Flow control: the user the run is admitted under.")
@click.option("--agent", help="Flow control: the agent (default: the workflow id).")
@click.option("--priority", type=click.IntRange(1, 5), metavar="1-5",
              help="Flow control: where its deferred work stands in its queue (1 first, 5 last; default 3).")
@_attr_option("An indexed attribute of the run (repeatable; names from ABSTRACTRUNTIME_RUN_ATTRS).")
@pass_state
def start(state: State, workflow_id: str, vars_: str | None, run_id: str | None, wait_s: float | None,
          tenant: str | None, user: str | None, agent: str | None, priority: int | None,
          attrs: tuple[str, ...]) -> None:
    """Start a run of WORKFLOW_ID."""
    run_attrs = _attrs_arg(attrs)
    _require_deployment(state)
    run_vars = _json_arg(vars_, "--vars") if vars_ is not None else None
    if run_vars is not None and not isinstance(run_vars, dict):
        raise CliError("--vars must be a JSON object", EXIT_USAGE)
    rid = state.client.start(workflow_id, vars=run_vars, run_id=run_id, tenant=tenant, user=user, agent=agent,
                             priority=priority, attrs=run_attrs)
    if wait_s is None:
        state.out({"run_id": rid, "workflow_id": workflow_id}, f"started run {rid} ({workflow_id})")
        return
    from ..client import WaitTimeout

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


@click.command()
@click.argument("run_id")
@pass_state
def status(state: State, run_id: str) -> None:
    """Show a run: status, node, what it waits for, output or error, and its last failure."""
    _require_deployment(state)
    run = state.client.get_state(run_id)
    data = {**_state_dict(run), "attrs": attrs_of(run)}
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


@click.command()
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


@click.command()
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
    from stores.signing import SigningError

    try:
        verifier = state.settings.signing.verifier()
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


@click.command()
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


@click.command()
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


@click.command()
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


@click.command()
@click.argument("run_id")
@click.option("--from-node", metavar="NODE", help="Continue at this node instead of the one that failed.")
@click.option("--reason", help="Why (recorded in the ledger with who and when). Required.")
@pass_state
def retry(state: State, run_id: str, from_node: str | None, reason: str | None) -> None:
    """Set a failed run running again at the node that failed, once a fix is deployed.

    Earlier steps are not run again. A run failed by its failed child is retried through that
    child and waits on it again. A run that did not fail (or was cancelled) is refused (exit 4).
    """
    _require_deployment(state)
    if not reason or not reason.strip():
        raise CliError("--reason is required: say what was fixed (it goes into the ledger)", EXIT_USAGE)
    try:
        run = state.client.retry(run_id, reason=reason, from_node=from_node)
    except RunNotFailed as exc:
        raise CliError(str(exc), EXIT_CONFLICT) from None
    except UnknownNodeError as exc:
        raise CliError(str(exc.args[0]), EXIT_USAGE) from None
    state.out(_state_dict(run), f"retried run {run_id}; it is {RunStatus(run.status).value} at node {run.current_node}")


@click.command()
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


@click.command()
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


@click.group(cls=_Group)
def runs() -> None:
    """List and count runs (from the indexes, newest first)."""


_STATUS = click.Choice([s.value for s in RunStatus])


@runs.command("list")
@click.option("--status", type=_STATUS)
@click.option("--workflow", help="Workflow id.")
@_attr_option("Only runs started with this attribute (repeatable: all of them); newest created first.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True)
@pass_state
def runs_list(state: State, status: str | None, workflow: str | None, attrs: tuple[str, ...], limit: int) -> None:
    """List runs."""
    wanted = _attrs_arg(attrs)
    _require_deployment(state)
    found = state.client.list_runs(status=status, workflow_id=workflow, attrs=wanted, limit=limit)

    def human() -> None:
        if not found:
            click.echo("no runs")
        for r in found:
            shown = " ".join(f"{k}={v}" for k, v in attrs_of(r).items())
            click.echo(f"{r.run_id:<38} {r.workflow_id:<20} {RunStatus(r.status).value:<10} "
                       f"{str(r.current_node):<16} {r.updated_at}" + (f"  {shown}" if shown else ""))

    state.out([{"run_id": r.run_id, "workflow_id": r.workflow_id, "status": RunStatus(r.status).value,
                "current_node": r.current_node, "updated_at": r.updated_at, "created_at": r.created_at,
                "attrs": attrs_of(r)} for r in found], human)


@runs.command("count")
@click.option("--status", type=_STATUS)
@click.option("--workflow", help="Workflow id.")
@_attr_option("Only runs started with this attribute (repeatable: all of them).")
@pass_state
def runs_count(state: State, status: str | None, workflow: str | None, attrs: tuple[str, ...]) -> None:
    """Count runs."""
    wanted = _attrs_arg(attrs)
    _require_deployment(state)
    if status is None and workflow is None and wanted is None:
        counts = {s.value: state.client.count(status=s.value) for s in RunStatus}
        state.out(counts, "\n".join(f"{k:<10} {v}" for k, v in counts.items()))
        return
    n = state.client.count(status=status, workflow_id=workflow, attrs=wanted)
    out: dict[str, Any] = {"count": n, "status": status, "workflow_id": workflow}
    if wanted is not None:
        out["attrs"] = wanted
    state.out(out, str(n))
