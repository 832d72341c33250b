"""Opening a named wait set: the ``open_waits`` payload, checked field by field.

``open_set`` turns the payload of an ``OPEN_WAITS`` effect (or an ``ASK_USER`` with a ``waits``
list) into the waiting state of the set (``runtime/waitset.py`` reads and changes it); a
malformed payload raises :class:`InvalidWaitSpec` naming the field (``waits[1].deadline``),
and ``handle_open_waits`` turns that into a failed effect. The fields are listed in
``docs/waits.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any

from ._clock import parse_iso
from ._json import ensure_json
from .answers import InvalidAnswer, InvalidAnswerSchema, check_answer, check_schema
from .errors import InvalidTimeError, WorkflowError
from .models import Effect, EffectOutcome, RunState, WaitReason, WaitState

__all__ = ["n_of", "InvalidWaitSpec", "open_set", "handle_open_waits"]

_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}
_WAIT_FIELDS = {"name", "kind", "prompt", "choices", "allow_free_text", "schema", "assignees", "enforce_assignees",
                "deadline", "reminders", "escalation", "on_timeout", "wait_key"}


def n_of(k: int) -> dict[str, int]:
    """The mode "resume once ``k`` of the waits are closed (answered or expired)"."""
    return {"n_of": k}



class InvalidWaitSpec(WorkflowError, ValueError):
    """A wait set a node asked for is malformed: ``field`` names where (``waits[1].deadline``)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"open_waits: {field}: {problem}")


def _ms_of(value: Any, where: str) -> int:
    """A duration: seconds as a number, or ``"500ms"``, ``"10s"``, ``"5m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, bool):
        raise InvalidWaitSpec(where, "a duration is a number of seconds or a text like '10s', '5m', '2h'")
    if isinstance(value, (int, float)):
        if value < 0 or value != value:
            raise InvalidWaitSpec(where, "a duration cannot be negative")
        return int(value * 1000)
    if isinstance(value, str):
        m = _DURATION.fullmatch(value)
        if m:
            return int(float(m.group(1)) * _UNIT_MS[m.group(2)])
    raise InvalidWaitSpec(where, f"{value!r} is not a duration (a number of seconds, or '10s', '5m', '2h', '1d')")


def _deadline_ms(value: Any, opened_ms: int, where: str) -> int:
    """A deadline: a duration from the opening, or an ISO 8601 time with its offset."""
    if isinstance(value, str) and ("T" in value or value.count("-") >= 2):
        try:
            return int(parse_iso(value, field=where).timestamp() * 1000)
        except InvalidTimeError as exc:
            raise InvalidWaitSpec(where, str(exc)) from None
    return opened_ms + _ms_of(value, where)


def _ids(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise InvalidWaitSpec(where, "a list of user or group ids (non-empty texts)")
    return list(dict.fromkeys(value))


def _on_timeout(value: Any, schema: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {"do": "mark"}
    if value == "fail":
        return {"do": "fail"}
    if isinstance(value, Mapping) and set(value) == {"answer"}:
        if schema is not None:
            try:
                check_answer(schema, value["answer"])
            except InvalidAnswer as exc:
                raise InvalidWaitSpec(f"{where}.answer", f"the default does not match the schema: {exc}") from None
        ensure_json(value["answer"], f"{where}.answer")
        return {"do": "answer", "answer": value["answer"]}
    if isinstance(value, Mapping) and set(value) == {"goto"} and isinstance(value["goto"], str) and value["goto"]:
        return {"do": "goto", "node": value["goto"]}
    raise InvalidWaitSpec(where, "'fail', {'answer': <default>} or {'goto': <node id>}")


def _one_wait(run: RunState, spec: Any, i: int, opened_ms: int) -> dict[str, Any]:
    at = f"waits[{i}]"
    if not isinstance(spec, Mapping):
        raise InvalidWaitSpec(at, "each wait is a mapping with at least a name")
    unknown = sorted(set(spec) - _WAIT_FIELDS)
    if unknown:
        raise InvalidWaitSpec(f"{at}.{unknown[0]}", f"unknown field; a wait has {', '.join(sorted(_WAIT_FIELDS))}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidWaitSpec(f"{at}.name", "1-64 letters, digits or . _ : - (it names the wait in answers)")
    kind = spec.get("kind", "user")
    if kind not in ("user", "event"):
        raise InvalidWaitSpec(f"{at}.kind", f"{kind!r}: a wait is of kind 'user' or 'event'")
    prompt = spec.get("prompt")
    if kind == "user" and (not isinstance(prompt, str) or not prompt):
        raise InvalidWaitSpec(f"{at}.prompt", "a person's wait needs a prompt (the question)")
    schema = spec.get("schema")
    if schema is not None:
        try:
            check_schema(schema)
        except InvalidAnswerSchema as exc:
            raise InvalidWaitSpec(f"{at}.schema", str(exc)) from None
    choices = spec.get("choices")
    if choices is not None and not isinstance(choices, list):
        raise InvalidWaitSpec(f"{at}.choices", "a list of the answers offered")
    timers: list[dict[str, Any]] = []
    deadline_ms = None
    if spec.get("deadline") is not None:
        deadline_ms = _deadline_ms(spec["deadline"], opened_ms, f"{at}.deadline")
    reminders = spec.get("reminders") or []
    if not isinstance(reminders, list):
        raise InvalidWaitSpec(f"{at}.reminders", "a list of offsets from the opening ('4s', 3600...)")
    for j, offset in enumerate(reminders):
        timers.append({"id": f"{name}/reminder/{j + 1}", "kind": "reminder",
                       "at_ms": opened_ms + _ms_of(offset, f"{at}.reminders[{j}]"), "fired": False})
    steps = spec.get("escalation") or []
    if not isinstance(steps, list):
        raise InvalidWaitSpec(f"{at}.escalation", "a list of steps {'after': D, 'reassign': [...], 'notify': [...]}")
    for j, esc in enumerate(steps):
        where = f"{at}.escalation[{j}]"
        if not isinstance(esc, Mapping) or "after" not in esc or set(esc) - {"after", "reassign", "notify"}:
            raise InvalidWaitSpec(where, "a step is {'after': D, 'reassign': [ids], 'notify': [ids]}")
        reassign, notify = _ids(esc.get("reassign"), f"{where}.reassign"), _ids(esc.get("notify"), f"{where}.notify")
        if not reassign and not notify:
            raise InvalidWaitSpec(where, "a step reassigns, notifies, or both")
        timers.append({"id": f"{name}/escalation/{j + 1}", "kind": "escalation", "level": j + 1,
                       "at_ms": opened_ms + _ms_of(esc["after"], f"{where}.after"), "fired": False,
                       "reassign": reassign, "notify": notify})
    if deadline_ms is not None:
        timers.append({"id": f"{name}/deadline", "kind": "deadline", "at_ms": deadline_ms, "fired": False})
    timers.sort(key=lambda t: t["at_ms"])
    wait_key = spec.get("wait_key")
    if wait_key is not None and (not isinstance(wait_key, str) or not wait_key):
        raise InvalidWaitSpec(f"{at}.wait_key", "a non-empty text (the key an event is emitted with)")
    assignees = _ids(spec.get("assignees"), f"{at}.assignees")
    enforce = spec.get("enforce_assignees", False)
    if not isinstance(enforce, bool) or (enforce and not assignees):
        raise InvalidWaitSpec(f"{at}.enforce_assignees", "true or false; true needs assignees")
    return {
        "kind": kind, "prompt": prompt, "choices": choices, "schema": schema,
        "allow_free_text": bool(spec.get("allow_free_text", True)),
        "wait_key": wait_key or f"{kind}:{run.run_id}:{name}",
        "assignees": assignees, "enforce": enforce, "level": 0, "opened_ms": opened_ms, "deadline_ms": deadline_ms,
        "on_timeout": _on_timeout(spec.get("on_timeout"), schema, f"{at}.on_timeout"), "timers": timers,
        "state": "open", "closed": None,
    }


def _mode(value: Any, count: int) -> tuple[str, int]:
    if value is None or value == "all":
        return "all", count
    if value == "any":
        return "any", 1
    k = value.get("n_of") if isinstance(value, Mapping) and set(value) == {"n_of"} else None
    if isinstance(k, int) and not isinstance(k, bool) and 1 <= k <= count:
        return "n_of", k
    raise InvalidWaitSpec("mode", f"{value!r}: 'all', 'any' or n_of(k) with 1 <= k <= {count} (the waits opened)")


def open_set(run: RunState, effect: Effect, default_next_node: str | None, now_ms: int) -> WaitState:
    """The waiting state of the set ``effect`` opens; :class:`InvalidWaitSpec` naming the field."""
    payload = effect.payload
    waits = payload.get("waits")
    if not isinstance(waits, list) or not waits:
        raise InvalidWaitSpec("waits", "a non-empty list of waits")
    built: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(waits):
        w = _one_wait(run, spec, i, now_ms)
        name = spec["name"]
        if name in built:
            raise InvalidWaitSpec(f"waits[{i}].name", f"duplicate name {name!r}: names are unique in a set")
        built[name] = w
    keys = [w["wait_key"] for w in built.values()]
    if len(set(keys)) != len(keys):
        raise InvalidWaitSpec("waits", "two waits share a wait_key")
    mode, need = _mode(payload.get("mode"), len(built))
    reason = WaitReason.USER if any(w["kind"] == "user" for w in built.values()) else WaitReason.EVENT
    return WaitState(reason=reason, resume_to_node=payload.get("resume_to_node") or default_next_node,
                     result_key=effect.result_key,
                     details={"set": 1, "mode": mode, "need": need, "order": list(built), "waits": built,
                              "answers": {}})


def _wall_ms() -> int:
    return int(datetime.now(timezone.utc).timestamp() * 1000)


def handle_open_waits(run: RunState, effect: Effect, default_next_node: str | None,
                      now_ms: Callable[[], int] = _wall_ms) -> EffectOutcome:
    """The ``open_waits`` effect (and ``ask_user`` with ``waits``): park on a named wait set.

    A malformed set fails the effect, naming the field (nothing parks). A wait whose deadline
    has passed already expires at the first timer check, right after the park."""
    try:
        return EffectOutcome.waiting(open_set(run, effect, default_next_node, now_ms()))
    except (InvalidWaitSpec, InvalidTimeError) as exc:
        return EffectOutcome.failed(str(exc), retryable=False)
    except Exception as exc:  # a default answer that is not JSON
        return EffectOutcome.failed(f"open_waits: {exc}", retryable=False)
