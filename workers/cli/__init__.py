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

The commands live by what they act on: :mod:`workers.cli.runs` (start, status, ledger, verify,
resume, respond, wake, emit, cancel, runs), :mod:`workers.cli.waits` (waiting, waits, answer)
and :mod:`workers.cli.processes` (worker,
beat, dev, stop, demo, doctor); :mod:`workers.cli._common` holds what they share. This module
is the group, which adds them, and :func:`main`, which turns errors into exit codes.
"""

from __future__ import annotations

import os
import sys

import click

from runtime.answers import InvalidAnswer
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
from runtime.waitset import AmbiguousWait, AnswerTooLarge, NotAssignee, UnknownWait, WaitClosed
from stores.redis.errors import RedisUnavailable
from stores.redis.schedules import ScheduleExists

from ..attrs import InvalidRunAttribute
from ..flow.rules import InvalidLimitRule
from ..schedules import InvalidSchedule, UnknownSchedule
from . import console, explain, limits, metrics, processes, runs, schedules, stuck, waits
from ._common import (
    EXIT_CONFLICT,
    EXIT_FAILURE,
    EXIT_NOT_FOUND,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliError,
    State,
    _Group,
    _opt,
)

__all__ = ["cli", "main"]

# -- the group -------------------------------------------------------------------------------------


_EPILOG = """\b
Examples:
  abstractruntime dev                                  a local stack in the foreground (Ctrl-C stops it)
  abstractruntime start refund --vars '{"order_id": "A-17"}' --wait 10
  abstractruntime waiting                              who is being asked what
  abstractruntime respond RUN_ID yes
  abstractruntime waits --assignee legal-team          open named waits, soonest deadline first
  abstractruntime answer RUN_ID legal --payload true   answer one of them by name
  abstractruntime status RUN_ID --json
  abstractruntime runs list --attr customer=c-42 --status waiting   runs by an indexed attribute
  abstractruntime wake RUN_ID --now --reason "skip the cool-down for the hotfix"
  abstractruntime retry RUN_ID --reason "fixed in 1.4.2"       a failed run again, after a fix
  abstractruntime stuck --older-than 10m               runs without progress, grouped by cause
  abstractruntime schedule add nightly --cron '0 2 * * *' --workflow report   a cron schedule, HA

\b
Exit codes: 0 ok; 1 failed (also a run that ended failed or cancelled under start --wait);
2 bad usage or input; 3 unknown run or wait; 4 the run's state refuses it (not waiting, waits
for something else, answered already, run id taken); 5 Redis or the broker unreachable, or no
deployment here; 6 a hash chain does not verify; 7 timed out.
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


# The order they were written in (``--help`` lists them alphabetically).
for _command in (processes.worker, processes.beat,
                 runs.start, runs.status, runs.ledger, runs.verify, runs.resume, runs.respond, runs.wake, runs.emit,
                 runs.cancel, runs.retry, runs.runs, waits.waiting,
                 processes.doctor, processes.demo, processes.dev, processes.stop, explain.explain,
                 stuck.stuck, limits.limits, limits.prices, waits.waits, waits.answer, schedules.schedule,
                 metrics.metrics, console.console):
    cli.add_command(_command)
del _command


# -- entry point -----------------------------------------------------------------------------------

_CODES: list[tuple[type[BaseException], int]] = [
    (RunNotFound, EXIT_NOT_FOUND),
    (InvalidRunId, EXIT_USAGE),
    (WorkflowNotRegistered, EXIT_USAGE),
    (PayloadNotSerializable, EXIT_USAGE),
    (InvalidLimitRule, EXIT_USAGE),  # a malformed --tenant, --user or --agent
    (InvalidRunAttribute, EXIT_USAGE),  # an --attr not allowed or malformed (nothing stored)
    (InvalidAnswer, EXIT_USAGE),  # an answer its question's schema refuses (nothing written)
    (AmbiguousWait, EXIT_USAGE),  # respond with several questions open: name one (answer RUN WAIT)
    (AnswerTooLarge, EXIT_USAGE),
    (UnknownWait, EXIT_NOT_FOUND),  # no such open wait (the message lists the open ones)
    (WaitClosed, EXIT_CONFLICT),  # answered already (by whom, when), expired or superseded
    (NotAssignee, EXIT_CONFLICT),
    (InvalidSchedule, EXIT_USAGE),  # a cron, time zone, overlap... naming the field
    (UnknownSchedule, EXIT_NOT_FOUND),
    (ScheduleExists, EXIT_CONFLICT),
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
