"""``abstractruntime schedule add|list|pause|resume|delete|trigger|backfill``: cron schedules in
Redis (``docs/schedules.md``), fired by beat's sweep once per time however many beats run."""

from __future__ import annotations

from typing import Any

import click

from ._common import EXIT_USAGE, CliError, State, _Group, _json_arg, _require_deployment, pass_state
from .stuck import parse_duration

__all__ = ["schedule"]

_EPILOG = """\b
Examples:
  abstractruntime schedule add nightly --cron '0 2 * * *' --timezone Europe/Paris --workflow report
  abstractruntime schedule add poll --cron '*/10 * * * * *' --workflow poll --overlap skip --catchup 1m
  abstractruntime schedule list
  abstractruntime schedule backfill nightly 2026-11-01T00:00:00Z 2026-11-07T00:00:00Z
"""


def _line(s: dict[str, Any]) -> str:
    state = "paused" if s["paused"] else f"next {s['next_fire']}"
    last = f"last {s['last_fire']} ({s['last_outcome']})" if s["last_fire"] else "never fired"
    return (f"{s['name']:<20} {s['cron']:<18} {s['timezone']:<14} {s['workflow_id']:<16} {state}; {last}; "
            f"overlap {s['overlap']}")


@click.group(cls=_Group, epilog=_EPILOG)
def schedule() -> None:
    """Cron schedules: start a workflow's run at each time, once, however many beats run."""


@schedule.command("add")
@click.argument("name")
@click.option("--cron", required=True, help="5 fields (minute hour day month weekday) or 6 with the second "
              "first ('*/2 * * * * *': every 2 s).")
@click.option("--workflow", "workflow_id", required=True, help="The workflow each fire starts.")
@click.option("--timezone", default="UTC", show_default=True, help="The IANA time zone the cron is read in.")
@click.option("--vars", "vars_", default="{}", metavar="JSON|@FILE", help="The runs' vars.")
@click.option("--overlap", default="skip", show_default=True, metavar="skip|buffer_one|allow_all|cancel_other",
              help="What a fire does while the previous run is active.")
@click.option("--catchup", default="60s", show_default=True, metavar="DURATION",
              help="How old a missed fire (beats down) may be and still run.")
@click.option("--jitter", default="0", show_default=True, metavar="DURATION", help="Each fire is due up to this "
              "much after its time.")
@click.option("--paused", is_flag=True, help="Add it paused.")
@click.option("--replace", is_flag=True, help="Replace a schedule of this name (its fires start afresh).")
@pass_state
def schedule_add(state: State, name: str, cron: str, workflow_id: str, timezone: str, vars_: str, overlap: str,
                 catchup: str, jitter: str, paused: bool, replace: bool) -> None:
    """Add a schedule; prints it with its next fire."""
    _require_deployment(state)
    value = _json_arg(vars_, "--vars")
    try:
        catchup_s, jitter_s = parse_duration(catchup), parse_duration(jitter)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    out = state.client.add_schedule(name, cron, workflow_id, timezone=timezone, vars=value, overlap=overlap,
                                    catchup_s=catchup_s, jitter_s=jitter_s, paused=paused, replace=replace)
    state.out(out, _line(out))


@schedule.command("list")
@pass_state
def schedule_list(state: State) -> None:
    """Every schedule: its cron, next fire, last fire and what it did."""
    _require_deployment(state)
    found = state.client.schedules()

    def human() -> None:
        if not found:
            click.echo("no schedules")
        for s in found:
            click.echo(_line(s))

    state.out(found, human)


@schedule.command("pause")
@click.argument("name")
@pass_state
def schedule_pause(state: State, name: str) -> None:
    """Stop a schedule's fires until it is resumed."""
    _require_deployment(state)
    out = state.client.pause_schedule(name)
    state.out(out, f"paused {name}")


@schedule.command("resume")
@click.argument("name")
@pass_state
def schedule_resume(state: State, name: str) -> None:
    """Fire again, from the first time after now (the paused fires are not caught up)."""
    _require_deployment(state)
    out = state.client.resume_schedule(name)
    state.out(out, f"resumed {name}: next fire {out['next_fire']}")


@schedule.command("delete")
@click.argument("name")
@pass_state
def schedule_delete(state: State, name: str) -> None:
    """Delete a schedule (its runs stay)."""
    _require_deployment(state)
    state.client.delete_schedule(name)
    state.out({"deleted": name}, f"deleted {name}")


@schedule.command("trigger")
@click.argument("name")
@pass_state
def schedule_trigger(state: State, name: str) -> None:
    """Start one run of the schedule's workflow now."""
    _require_deployment(state)
    run_id = state.client.trigger_schedule(name)
    state.out({"run_id": run_id}, run_id)


@schedule.command("backfill")
@click.argument("name")
@click.argument("start", metavar="FROM")
@click.argument("end", metavar="TO")
@pass_state
def schedule_backfill(state: State, name: str, start: str, end: str) -> None:
    """Start the runs of the fire times from FROM to TO (ISO 8601) that have none."""
    _require_deployment(state)
    out = state.client.backfill_schedule(name, start, end)
    state.out(out, f"{out['fires']} fire(s) from {start} to {end}: {len(out['started'])} started, "
                   f"{out['existing']} had run already")
