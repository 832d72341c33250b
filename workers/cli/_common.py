"""What every command shares: the exit codes, the group's state, options, and the deployment check.

:class:`State` holds the group's options, the :class:`~workers.settings.WorkerSettings` they
make and a client made on first use; ``pass_state`` hands it to a command. A command fails
with :class:`CliError` (one line and an exit code, see ``EXIT_*``); ``workers.cli.main``
turns the other errors into codes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..settings import WorkerSettings

#: Exit codes other than 0 (success); what each means is in the ``workers.cli`` docstring and ``--help``.
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
            from ..client import Client

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


# -- where the runs are ----------------------------------------------------------------------------


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
