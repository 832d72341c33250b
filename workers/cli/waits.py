"""The commands on what runs wait for from people: ``waiting`` lists the runs waiting for a
person, ``waits`` the open named waits (``runtime/waitset.py``) from their indexes, and
``answer`` answers one of them by name."""

from __future__ import annotations

import uuid
from typing import Any

import click

from runtime import RunStatus
from runtime.waits import describe_wait
from runtime.waitset import open_names

from ._common import EXIT_USAGE, CliError, State, _json_arg, _require_deployment, pass_state
from .runs import _state_dict

__all__ = ["waiting", "waits", "answer"]


def _line(w: dict[str, Any]) -> str:
    due = f"due {w['deadline']}" + (" OVERDUE" if w["overdue"] else "") if w["deadline"] else "no deadline"
    level = f", escalated x{w['level']}" if w["level"] else ""
    who = ", ".join(w["assignees"]) or "anyone"
    what = w["prompt"] or f"(event {w['wait_key']})"
    return f"{w['run_id']}  {w['wait']:<16} {who:<24} {due}{level}\n    {what}"


@click.command()
@click.option("--assignee", metavar="ID", help="Only the waits assigned to this user or group id.")
@click.option("--overdue", is_flag=True, help="Only the waits past their deadline.")
@click.option("--workflow", metavar="ID", help="Only the waits of this workflow's runs.")
@click.option("--root", "root_run_id", metavar="RUN_ID", help="The waits of this run and of every run below it.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50, show_default=True)
@click.option("--offset", type=click.IntRange(0), default=0, show_default=True)
@pass_state
def waits(state: State, assignee: str | None, overdue: bool, workflow: str | None, root_run_id: str | None,
          limit: int, offset: int) -> None:
    """List open named waits: soonest deadline first for an assignee or --overdue, else oldest first."""
    _require_deployment(state)
    found = state.client.list_waits(assignee=assignee, overdue=overdue, workflow=workflow, root_run_id=root_run_id,
                                    limit=limit, offset=offset)

    def human() -> None:
        if not found:
            click.echo("no open waits" + (f" for {assignee}" if assignee else ""))
        for w in found:
            click.echo(_line(w))

    state.out(found, human)


@click.command()
@click.argument("run_id")
@click.argument("wait")
@click.option("--payload", required=True, metavar="JSON|@FILE", help="The answer, as JSON (checked against the "
              "wait's schema before anything is written).")
@click.option("--by", "answered_by", envvar="ABSTRACTRUNTIME_ACTOR", metavar="ID",
              help="Who answers (recorded in the ledger). Default: ABSTRACTRUNTIME_ACTOR, else user@host.")
@click.option("--answer-id", metavar="ID", help="The submit's id: a retry with the same one is not a second answer. "
              "Default: a new one.")
@pass_state
def answer(state: State, run_id: str, wait: str, payload: str, answered_by: str | None, answer_id: str | None) -> None:
    """Answer the open wait WAIT of a run (exit 2: the answer does not fit its schema; 3: no such
    open wait; 4: answered already, by whom and when)."""
    _require_deployment(state)
    value = _json_arg(payload, "--payload")
    if answered_by is not None and not answered_by.strip():
        raise CliError("--by must name who answers", EXIT_USAGE)
    from ..client import operator_actor

    run = state.client.answer(run_id, wait, value, answered_by or operator_actor(),
                              answer_id=answer_id or uuid.uuid4().hex)
    resumed = RunStatus(run.status) != RunStatus.WAITING
    state.out(_state_dict(run), f"answered {wait!r} of run {run_id}" + (": the run goes on" if resumed else
                                                                         f"; still waiting: {_open(run)}"))


def _open(run: Any) -> str:
    return ", ".join(open_names(run.waiting)) or "nothing"


@click.command()
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@pass_state
def waiting(state: State, limit: int) -> None:
    """Runs waiting for a person: their questions and choices."""
    _require_deployment(state)
    found = state.client.list_runs(status="waiting", wait_reason="user", limit=limit)
    rows = []
    for r in found:
        w = r.waiting
        named = open_names(w)
        if named:  # a named wait set: its questions (answer each with `answer RUN_ID WAIT`)
            rows.append({"run_id": r.run_id, "workflow_id": r.workflow_id, "prompt": describe_wait(w),  # type: ignore[arg-type]
                         "choices": None, "wait_key": None, "waits": named})
            continue
        rows.append({"run_id": r.run_id, "workflow_id": r.workflow_id, "prompt": w.prompt if w else None,
                     "choices": w.choices if w else None, "wait_key": w.wait_key if w else None})

    def human() -> None:
        if not rows:
            click.echo("nobody is being asked anything")
        for row in rows:
            choices = f"  [{', '.join(map(str, row['choices']))}]" if row["choices"] else ""
            click.echo(f"{row['run_id']}  {row['workflow_id']}: {row['prompt']}{choices}")
        if rows:
            click.echo("answer with: abstractruntime respond RUN_ID ANSWER (named waits: abstractruntime answer "
                       "RUN_ID WAIT --payload JSON; list them with abstractruntime waits)")

    state.out(rows, human)
