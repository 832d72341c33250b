"""Reading a settings dataclass from ``ABSTRACTRUNTIME_*`` variables, the same way for all of them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, TypeVar

__all__ = ["settings_from_env"]

T = TypeVar("T")


def settings_from_env(cls: type[T], env_vars: Mapping[str, str], env: Mapping[str, str], *,
                      values: dict[str, Any] | None = None,
                      convert: Mapping[str, Callable[[str], Any]] | None = None) -> T:
    """A settings dataclass from environment variables (``env_vars``: variable -> field).

    An unset or empty variable keeps the default; booleans, whole numbers and numbers are
    parsed by the field's type, ``convert`` parses other fields. A bad value, or one the
    class refuses (``ValueError`` naming ``<Class>.<field>``), raises ValueError naming the
    variable.
    """
    types = {f.name: f.type for f in fields(cls)}  # type: ignore[arg-type]
    out: dict[str, Any] = dict(values or {})
    for var, name in env_vars.items():
        raw = env.get(var, "").strip()
        if not raw:
            continue
        kind = types[name]
        if convert and name in convert:
            out[name] = convert[name](raw)
        elif kind == "bool":
            if raw.lower() not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
                raise ValueError(f"{var} must be true or false, got {raw!r}")
            out[name] = raw.lower() in ("1", "true", "yes", "on")
        else:
            try:
                out[name] = int(raw) if kind == "int" else float(raw) if kind == "float" else raw
            except ValueError:
                what = "a whole number" if kind == "int" else "a number"
                raise ValueError(f"{var} must be {what}, got {raw!r}") from None
    try:
        return cls(**out)
    except ValueError as exc:
        bad = next((v for v, n in env_vars.items() if f"{cls.__name__}.{n} " in str(exc)), None)
        if bad is None:
            raise
        raise ValueError(f"{bad}: {exc}") from None
