"""``abstractruntime console``: the run console, a small web app (``docs/console.md``)."""

from __future__ import annotations

import errno
import getpass
import socket
import sys

import click

from ._common import EXIT_USAGE, CliError, State, _require_deployment

__all__ = ["console"]


@click.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True, help="The address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8470, show_default=True)
@click.option("--auth-file", envvar="ABSTRACTRUNTIME_CONSOLE_AUTH", type=click.Path(dir_okay=False),
              help="Users, tokens and the cookie secret (JSON; docs/console.md). Required unless --no-auth.")
@click.option("--no-auth", is_flag=True, help="No login: anyone who reaches the port is an operator "
                                              "(only with --host 127.0.0.1, on your own machine).")
@click.option("--redact", envvar="ABSTRACTRUNTIME_CONSOLE_REDACT", default="password,secret,token,api_key",
              show_default=True, help="Comma-separated key names whose values payload views hide.")
@click.pass_context
def console(ctx: click.Context, host: str, port: int, auth_file: str | None, no_auth: bool, redact: str) -> None:
    """Serve the run console: find runs, watch them move, answer them, check their ledgers.

    \b
    Examples:
      abstractruntime console hash-password          # a line for the auth file
      abstractruntime console --auth-file console-auth.json --port 8470
    """
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    try:
        import uvicorn

        from ..console import AuthFile, AuthFileError, make_app
    except ImportError as exc:
        raise CliError(f"the console needs its extra ({exc.name} is missing): "
                       "pip install 'abstractruntime-celery[console]'", EXIT_USAGE) from None
    if no_auth and auth_file:
        raise CliError("--no-auth and --auth-file exclude each other", EXIT_USAGE)
    if no_auth and host not in ("127.0.0.1", "localhost", "::1"):
        raise CliError(f"--no-auth serves only on this machine (--host 127.0.0.1), not on {host}", EXIT_USAGE)
    if not no_auth and not auth_file:
        raise CliError("the console needs --auth-file (users and tokens, docs/console.md) or --no-auth",
                       EXIT_USAGE)
    try:
        auth = AuthFile.load(auth_file) if auth_file else None
    except AuthFileError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    _require_deployment(state)
    state.client.import_workflows()
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise CliError(f"port {port} on {host} is in use; pick another with --port", EXIT_USAGE) from None
            raise CliError(f"cannot listen on {host}:{port}: {exc}", EXIT_USAGE) from None
    app = make_app(state.client, auth, secret_keys=tuple(k.strip() for k in redact.split(",") if k.strip()))
    click.echo(f"console on http://{host}:{port}/ ({'no login' if auth is None else 'login required'})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


@console.command("hash-password")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (scripts).")
def hash_password_command(password_stdin: bool) -> None:
    """Print a password hash for the auth file's users.NAME.password."""
    from ..console.auth import hash_password

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("the passwords differ", EXIT_USAGE)
    if len(password) < 8:
        raise CliError("a password needs at least 8 characters", EXIT_USAGE)
    click.echo(hash_password(password))
