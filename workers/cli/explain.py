"""``abstractruntime explain RUN_ID``: why a run is where it is, in one sentence and what to do.

The diagnosis is :func:`workers.explain.diagnose`'s (the one place that knows it); this
command only prints it, with ``--tree`` the child runs it looked into, with ``--json`` all of it.
"""

from __future__ import annotations

import click

from ._common import State, _require_deployment, pass_state

__all__ = ["explain"]


def _print(d: object, tree: bool, indent: str = "") -> None:
    from ..explain import Diagnosis

    assert isinstance(d, Diagnosis)
    click.echo(f"{indent}{d.evidence.get('run_id', '')}  {d.code.value}  {d.sentence}")
    if not indent:
        if d.since:
            click.echo(f"  since   {d.since}")
        if d.action:
            click.echo(f"  do      {d.action}")
    if tree and d.cause is not None:
        _print(d.cause, tree, indent + "  └ ")


@click.command()
@click.argument("run_id")
@click.option("--tree", is_flag=True, help="Also show the child runs it waits on.")
@pass_state
def explain(state: State, run_id: str, tree: bool) -> None:
    """Why RUN_ID does not move (or that it does): a code, a sentence, since when, what to do."""
    _require_deployment(state)
    diagnosis = state.client.explain(run_id)
    state.out(diagnosis.to_dict(), lambda: _print(diagnosis, tree))
