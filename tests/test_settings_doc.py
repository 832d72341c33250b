"""docs/configuration.md lists every ``ABSTRACTRUNTIME_*`` variable, with the defaults the code has.

The variables "named in code" are those the settings classes read (their ``ENV_VARS``), the
ones the CLI's options read, and every other ``ABSTRACTRUNTIME_*`` name written in the
package, the examples or the tests. Each must be a row of the page's tables, and each row
must be one of them. The CLI's automatic ``ABSTRACTRUNTIME_<COMMAND>_<OPTION>`` variables are
one row, as a pattern.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import click
import pytest

from stores import signing
from stores.redis import settings as redis_settings
from stores.redis.settings import RedisSettings
from stores.signing import SigningSettings
from workers import settings as worker_settings
from workers.cli import cli
from workers.settings import WorkerSettings

REPO = Path(__file__).resolve().parents[1]
PAGE = REPO / "docs" / "configuration.md"
CLASSES: dict[str, type[Any]] = {"RedisSettings": RedisSettings, "WorkerSettings": WorkerSettings,
                                 "SigningSettings": SigningSettings}
#: Variable -> "Class.field", from the settings classes themselves.
SETTINGS_VARS = {
    **{var: f"RedisSettings.{f}" for var, f in redis_settings.ENV_VARS.items()},
    **{var: f"WorkerSettings.{f}" for var, f in worker_settings.ENV_VARS.items()},
    **{var: f"SigningSettings.{f}" for var, f in signing.ENV_VARS.items()},
}
#: Fields that hold another settings object, not a value.
NESTED = {"WorkerSettings.redis", "WorkerSettings.signing"}
AUTO_ROW = "ABSTRACTRUNTIME_<COMMAND>_<OPTION>"
NAME = re.compile(r"\bABSTRACTRUNTIME_[A-Z0-9_]*[A-Z0-9]\b")


def table_rows() -> dict[str, list[str]]:
    """First cell (without backticks) -> the other cells, for every table row of the page."""
    rows = {}
    for line in PAGE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("| `"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert cells[0] not in rows, f"{cells[0]} is listed twice"
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def env_rows() -> dict[str, list[str]]:
    return {k: v for k, v in table_rows().items() if k.startswith("ABSTRACTRUNTIME_")}


def cli_options() -> list[tuple[click.Option, str | None, str]]:
    """Every option of the CLI: ``(option, its own variable or None, its automatic variable)``."""
    found = []

    def walk(command: click.Command, prefix: str) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                own = param.envvar if isinstance(param.envvar, str) else None
                found.append((param, own, f"{prefix}_{param.name.upper()}"))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{prefix}_{name.upper().replace('-', '_')}")

    walk(cli, "ABSTRACTRUNTIME")
    return found


def names_written_in(*folders: str) -> set[str]:
    found: set[str] = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            if path.name != Path(__file__).name:
                found |= set(NAME.findall(path.read_text(encoding="utf-8")))
    return found


def shown(value: Any) -> str:
    """How the page writes a default."""
    if _unset(value):
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if value in ("", ()):
        return "empty"
    return f"`{value}`"


def test_every_variable_in_code_is_on_the_page():
    auto = {a for _, own, a in cli_options() if own is None}
    in_code = set(SETTINGS_VARS) | {own for _, own, _ in cli_options() if own}
    in_code |= names_written_in("runtime", "stores", "workers", "docs/examples", "tests") - auto
    missing = sorted(in_code - set(env_rows()))
    assert missing == [], f"add these to docs/configuration.md: {missing}"
    # The automatic variables of the CLI are one row; the test's own example is one of them.
    assert AUTO_ROW in env_rows() and "ABSTRACTRUNTIME_RUNS_LIST_LIMIT" in auto


def test_every_variable_on_the_page_is_read_somewhere():
    read = set(SETTINGS_VARS) | {own for _, own, _ in cli_options() if own}
    read |= names_written_in("runtime", "stores", "workers", "docs/examples", "tests")
    unknown = sorted(set(env_rows()) - read - {AUTO_ROW})
    assert unknown == [], f"the page lists variables nothing reads: {unknown}"


def test_every_variable_the_other_pages_name_exists():
    # A typo in another page (or a variable renamed in code) shows here.
    named = set()
    for path in [*(REPO / "docs").glob("*.md"), REPO / "README.md"]:
        named |= set(NAME.findall(path.read_text(encoding="utf-8")))
    auto = {a for _, own, a in cli_options() if own is None}
    assert sorted(named - set(env_rows()) - auto) == []


@pytest.mark.parametrize("var", sorted(SETTINGS_VARS))
def test_a_settings_row_names_its_field_and_its_default(var):
    setting, default, _meaning = env_rows()[var]
    assert setting == f"`{SETTINGS_VARS[var]}`"
    cls_name, field = SETTINGS_VARS[var].split(".")
    assert default.startswith(shown(_default(CLASSES[cls_name], field))), (var, default)


def test_every_settings_field_is_on_the_page():
    # Each field is read from a variable (a row above) or listed under "Settings without a variable".
    rows = table_rows()
    with_var = set(SETTINGS_VARS.values())
    for cls_name, cls in CLASSES.items():
        for f in dataclasses.fields(cls):
            name = f"{cls_name}.{f.name}"
            if name in NESTED or name in with_var:
                continue
            assert name in rows, f"{name} has no variable: list it under 'Settings without a variable'"
            assert rows[name][0].startswith(shown(_default(cls, f.name))), (name, rows[name])


def test_cli_rows_give_the_options_defaults():
    rows = env_rows()
    for option, own, _ in cli_options():
        if own is None or own in SETTINGS_VARS:
            continue
        default = rows[own][1]
        assert default.startswith(shown(False if option.is_flag and _unset(option.default) else option.default)), \
            (own, default, option.default)


def _unset(value: Any) -> bool:
    """None, or click's marker of an option without a default (click 8.2+)."""
    return value is None or type(value).__name__ == "Sentinel"


def _default(cls: type[Any], name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
