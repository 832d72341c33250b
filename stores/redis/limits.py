"""The flow-control registry in Redis: the limit rules and the price table, editable at runtime.

:class:`RedisLimits` reads and writes two hashes (``stores/redis/flowkeys.py``):

* ``FlowKeys.limits()``: rule id (``tenant:acme|*|limit``) -> the rule's JSON. A rule written
  again with the same key, scope and name replaces the old one (one ``HSET``).
* ``FlowKeys.prices()``: model -> ``{"input_usd_per_mtok", "output_usd_per_mtok"}`` (US dollars
  per million tokens). Field ``*`` is the price of every model not listed.

Unknown models: :meth:`RedisLimits.price_of` gives the model's own price, else the ``*`` price,
else raises :class:`UnknownModelPrice` naming the model. Nothing is priced by default: a
deployment that counts dollars sets ``*`` (``abstractruntime prices set '*' ...``) or every model
it calls (``docs/flow-control.md``).

The rules' own type lives with the workers (``workers.flow.rules.LimitRule``; imports point
down, so this module does not import it): a registry is made with the function that turns a
rule's JSON into a rule and validates it (``LimitRule.from_dict``); ``workers.flow.resolve.
registry(backend)`` makes one. Every rule is validated before it is written, and again when
read: a rule edited by hand into something invalid raises
:class:`~runtime.errors.CorruptRecordError` naming its field of the hash.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from runtime.errors import AbstractRuntimeError, CorruptRecordError

from .flowkeys import FlowKeys, rule_id

__all__ = ["RedisLimits", "Price", "Rule", "InvalidPrice", "UnknownModelPrice", "DEFAULT_PRICE_FIELD", "check_model"]

#: The price table's field holding the price of every model not listed.
DEFAULT_PRICE_FIELD = "*"
#: A model name: 1 to 200 characters, no spaces or control characters (``*``: the default).
_MODEL = re.compile(r"^[^\s\x00-\x1f]{1,200}$")


class InvalidPrice(AbstractRuntimeError, ValueError):
    """Raised when a price-table entry is malformed; ``field`` names what is wrong."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"price table: {field}: {problem}")


class UnknownModelPrice(AbstractRuntimeError, KeyError):
    """Raised when a model has no price and the price table has no ``*`` default either."""

    def __init__(self, model: str) -> None:
        self.model = model
        super().__init__(f"no price for model {model!r} and no default price (`*`) in the price table: "
                         f"abstractruntime prices set {model!r} --input-per-mtok X --output-per-mtok Y")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class Price:
    """What one model costs, in US dollars per million tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float

    def __post_init__(self) -> None:
        for name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise InvalidPrice(name, f"must be a number of 0 or more, got {value!r}")

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """Dollars for one call of ``input_tokens`` in and ``output_tokens`` out."""
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidPrice(name, f"must be a whole number of 0 or more, got {value!r}")
        return (input_tokens * self.input_usd_per_mtok + output_tokens * self.output_usd_per_mtok) / 1_000_000

    def to_dict(self) -> dict[str, float]:
        return {"input_usd_per_mtok": self.input_usd_per_mtok, "output_usd_per_mtok": self.output_usd_per_mtok}

    @classmethod
    def from_dict(cls, data: Any) -> Price:
        if not isinstance(data, dict):
            raise InvalidPrice("price", f"must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"input_usd_per_mtok", "output_usd_per_mtok"})
        if unknown:
            raise InvalidPrice(unknown[0], "unknown field (known: input_usd_per_mtok, output_usd_per_mtok)")
        for name in ("input_usd_per_mtok", "output_usd_per_mtok"):
            if name not in data:
                raise InvalidPrice(name, "missing")
        return cls(data["input_usd_per_mtok"], data["output_usd_per_mtok"])


class Rule(Protocol):
    """What the registry needs of a rule (``workers.flow.rules.LimitRule`` is one)."""

    @property
    def key(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def name(self) -> str: ...
    def to_dict(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Rule)


def check_model(model: Any) -> str:
    """``model`` if it can name a price-table entry, else :class:`InvalidPrice` on ``model``."""
    if not isinstance(model, str) or not _MODEL.match(model):
        raise InvalidPrice("model", f"must be 1 to 200 characters without spaces, got {model!r}")
    return model


class RedisLimits(Generic[R]):
    """The limits registry and the price table of one deployment (one prefix).

    ``parse`` turns a rule's JSON object into a rule, validating it (raising ValueError, an
    ``InvalidLimitRule``, naming the field); it is also how a rule is checked before it is written.
    """

    def __init__(self, client: Any, keys: FlowKeys, parse: Callable[[Any], R]) -> None:
        self.client = client
        self.keys = keys
        self._parse = parse

    # -- rules -------------------------------------------------------------------------------------

    def set_rule(self, rule: R | dict[str, Any]) -> str:
        """Write ``rule`` (a rule or its JSON object), replacing the rule of the same id; its id.

        The rule is validated first (by ``parse``; its error names the field): nothing is
        written when it is refused.
        """
        checked = self._parse(rule if isinstance(rule, dict) else rule.to_dict())
        rid = rule_id(checked.key, checked.scope, checked.name)
        self.client.hset(self.keys.limits(), rid, json.dumps(checked.to_dict(), sort_keys=True))
        return rid

    def delete_rule(self, rid: str) -> bool:
        """Remove the rule ``rid`` (``tenant:acme|*|limit``); False when there was none.

        Its state (slot holders, bucket, budget window) is left to expire: holders admitted
        under it release as usual.
        """
        return bool(self.client.hdel(self.keys.limits(), rid))

    def rules(self) -> list[R]:
        """Every rule of the registry, by id; :class:`CorruptRecordError` for one that does not decode."""
        raw = self.client.hgetall(self.keys.limits())
        return [self._decode_rule(_text(rid), value) for rid, value in sorted(raw.items())]

    def rule(self, rid: str) -> R | None:
        """The rule ``rid``, or None."""
        value = self.client.hget(self.keys.limits(), rid)
        return None if value is None else self._decode_rule(rid, value)

    def _decode_rule(self, rid: str, value: Any) -> R:
        location = f"{self.keys.limits()} field {rid!r}"
        try:
            rule = self._parse(json.loads(value))
        except json.JSONDecodeError as exc:
            raise CorruptRecordError(location=location, reason=f"not JSON: {exc.msg}") from None
        except (ValueError, TypeError) as exc:
            raise CorruptRecordError(location=location, reason=str(exc)) from None
        if rule_id(rule.key, rule.scope, rule.name) != rid:
            raise CorruptRecordError(location=location, reason=f"holds the rule of id "
                                     f"{rule_id(rule.key, rule.scope, rule.name)!r}")
        return rule

    # -- prices ------------------------------------------------------------------------------------

    def set_price(self, model: str, input_usd_per_mtok: float, output_usd_per_mtok: float) -> Price:
        """Set what ``model`` costs (``*``: every model not listed); validated, nothing written if refused."""
        price = Price(input_usd_per_mtok, output_usd_per_mtok)
        self.client.hset(self.keys.prices(), check_model(model), json.dumps(price.to_dict()))
        return price

    def delete_price(self, model: str) -> bool:
        """Remove ``model``'s price; False when it had none."""
        return bool(self.client.hdel(self.keys.prices(), check_model(model)))

    def prices(self) -> dict[str, Price]:
        """The whole price table, by model (``*``: the default, when set)."""
        raw = self.client.hgetall(self.keys.prices())
        return {_text(model): self._decode_price(_text(model), value) for model, value in sorted(raw.items())}

    def price_of(self, model: str) -> Price:
        """``model``'s price, else the ``*`` price; :class:`UnknownModelPrice` when neither is set."""
        own, default = self.client.hmget(self.keys.prices(), [check_model(model), DEFAULT_PRICE_FIELD])
        if own is not None:
            return self._decode_price(model, own)
        if default is not None:
            return self._decode_price(DEFAULT_PRICE_FIELD, default)
        raise UnknownModelPrice(model)

    def cost_usd(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """Dollars of one call to ``model`` (by :meth:`price_of`, so unknown models as it says)."""
        return self.price_of(model).cost_usd(input_tokens, output_tokens)

    def _decode_price(self, model: str, value: Any) -> Price:
        location = f"{self.keys.prices()} field {model!r}"
        try:
            return Price.from_dict(json.loads(value))
        except json.JSONDecodeError as exc:
            raise CorruptRecordError(location=location, reason=f"not JSON: {exc.msg}") from None
        except InvalidPrice as exc:
            raise CorruptRecordError(location=location, reason=str(exc)) from None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
