"""`tool_schema`: the JSON an LLM_CALL payload carries for a Python function.

This module uses postponed annotations on purpose: every annotation below is text until
`tool_schema` resolves it, which is what broke the first version (everything became
"string"). Where AbstractCore builds its own definition of the same function
(`ToolDefinition.from_function`, and the native-lane schema its handler sends), the tests say
where the two agree and where we deliberately go further.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import logging
from typing import Annotated, Any, Literal, NewType, Optional, TypedDict, Union

import pytest

from runtime.integrations.abstractcore import LocalAbstractCoreLLMClient, RemoteAbstractCoreLLMClient, tool_schema
from runtime.integrations.abstractcore.llm_client import import_abstractcore
from runtime.integrations.abstractcore.tool_schema import type_schema

from support.fake_openai import FakeOpenAI


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


class Place(TypedDict):
    """A place on the map.

    Attributes:
        city: The city name.
        country: Its ISO code.
    """

    city: str
    country: str


class Partial(TypedDict, total=False):
    zoom: int


@dataclasses.dataclass
class Window:
    """A time window.

    Args:
        days: How many days.
    """

    days: int
    hourly: bool = False
    tags: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Node:
    name: str
    children: list[Node] = dataclasses.field(default_factory=list)


UserId = NewType("UserId", int)


def search(query: str, limit: int, ratio: float, exact: bool, tags: list[str], grid: list[list[int]],
           extra: dict[str, Any], scores: dict[str, float], lang: str = "en", retries: int = 2) -> str:
    """Search the catalogue.

    Args:
        query: What to look for.
        limit (int): How many results,
            at most 50.
        tags: Labels to match.
    """
    return query


def forecast(city: str, unit: Unit = Unit.C, mode: Literal["fast", "slow"] = "fast", note: Optional[str] = None,
             days: int | None = None, place: Place | None = None, window: Optional[Window] = None) -> str:
    """Get the forecast for a city."""
    return city


def test_postponed_annotations_and_generics_get_their_json_types():
    fn = tool_schema(search)["function"]
    props = fn["parameters"]["properties"]
    assert fn["name"] == "search" and fn["description"] == "Search the catalogue."
    assert props["query"] == {"type": "string", "description": "What to look for."}
    assert props["limit"] == {"type": "integer", "description": "How many results, at most 50."}
    assert props["ratio"] == {"type": "number"}
    assert props["exact"] == {"type": "boolean"}
    assert props["tags"] == {"type": "array", "items": {"type": "string"}, "description": "Labels to match."}
    assert props["grid"] == {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}}
    assert props["extra"] == {"type": "object"}  # dict[str, Any]: any values
    assert props["scores"] == {"type": "object", "additionalProperties": {"type": "number"}}
    # Defaults are shown and make a parameter optional.
    assert props["lang"] == {"type": "string", "default": "en"}
    assert props["retries"] == {"type": "integer", "default": 2}
    assert fn["parameters"]["required"] == ["query", "limit", "ratio", "exact", "tags", "grid", "extra", "scores"]
    json.dumps(tool_schema(search))  # it goes into an effect payload


def test_optional_literal_and_enum():
    props = tool_schema(forecast)["function"]["parameters"]["properties"]
    assert props["unit"] == {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}
    assert props["mode"] == {"type": "string", "enum": ["fast", "slow"], "default": "fast"}
    assert props["note"] == {"type": ["string", "null"], "default": None}
    assert props["days"] == {"type": ["integer", "null"], "default": None}  # PEP 604 spelling
    assert tool_schema(forecast)["function"]["parameters"]["required"] == ["city"]


def test_typeddict_and_dataclass_become_objects_with_their_fields():
    props = tool_schema(forecast)["function"]["parameters"]["properties"]
    assert props["place"] == {
        "type": ["object", "null"], "default": None, "required": ["city", "country"],
        "properties": {"city": {"type": "string", "description": "The city name."},
                       "country": {"type": "string", "description": "Its ISO code."}}}
    assert props["window"] == {
        "type": ["object", "null"], "default": None, "required": ["days"],
        "properties": {"days": {"type": "integer", "description": "How many days."},
                       "hourly": {"type": "boolean", "default": False},
                       "tags": {"type": "array", "items": {"type": "string"}}}}
    assert type_schema(Partial) == {"type": "object", "properties": {"zoom": {"type": "integer"}}, "required": []}
    # A type that contains itself stops at the second level instead of recursing forever.
    assert type_schema(Node) == {"type": "object", "required": ["name"], "properties": {
        "name": {"type": "string"}, "children": {"type": "array", "items": {"type": "object"}}}}


@pytest.mark.parametrize(("annotation", "expected"), [
    (set[int], {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}),
    (tuple[int, ...], {"type": "array", "items": {"type": "integer"}}),
    (tuple[int, str], {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "minItems": 2,
                       "maxItems": 2}),
    (list, {"type": "array"}),
    (dict, {"type": "object"}),
    (Union[int, str], {"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    (Optional[Union[int, str]], {"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}),
    (Optional[Literal["a", "b"]], {"type": ["string", "null"], "enum": ["a", "b", None]}),
    (Literal[1, "x"], {"enum": [1, "x"]}),
    (Annotated[int, "how many"], {"type": "integer", "description": "how many"}),
    (datetime.datetime, {"type": "string", "format": "date-time"}),
    (UserId, {"type": "integer"}),
    (Any, {}),
    (Optional[Any], {}),
])
def test_type_mapping(annotation, expected):
    assert type_schema(annotation) == expected


def rest_style(a: int, b: str = "x") -> None:
    """Do it, reST style.

    :param a: The first.
    :param str b: The second,
        on two lines.
    :returns: nothing
    """


def numpy_style(a: int, b: str = "x") -> None:
    """Do it, NumPy style.

    Parameters
    ----------
    a : int
        The first.
    b : str
        The second.

    Returns
    -------
    None
    """


def odd(a: int, b: NoSuchType, c: Annotated[str, "from the annotation"], d, e=3, *args, **kwargs):  # noqa: F821
    """Odd.

    Args:
        c: from the docstring
    """


@pytest.mark.parametrize("fn", [rest_style, numpy_style])
def test_rest_and_numpy_docstrings(fn):
    schema = tool_schema(fn)["function"]
    assert schema["description"].startswith("Do it, ")
    described = {k: v.get("description") for k, v in schema["parameters"]["properties"].items()}
    assert described == ({"a": "The first.", "b": "The second, on two lines."} if fn is rest_style
                         else {"a": "The first.", "b": "The second."})


def test_unresolvable_or_missing_annotations_cost_only_their_parameter():
    props = tool_schema(odd)["function"]["parameters"]["properties"]
    assert props["a"] == {"type": "integer"}  # resolved although `NoSuchType` is not
    assert props["b"] == {"type": "string"}  # unknown: text, as AbstractCore does
    assert props["c"] == {"type": "string", "description": "from the annotation"}
    assert props["d"] == {}  # no annotation: any value
    assert props["e"] == {"type": "integer", "default": 3}  # no annotation, typed by its default
    assert list(props) == ["a", "b", "c", "d", "e"]  # *args and **kwargs are not named arguments


def test_schema_dicts_are_kept():
    given = {"type": "function", "function": {"name": "x", "parameters": {"type": "object", "properties": {}}}}
    assert tool_schema(given) == given
    assert tool_schema({"name": "x"}) == {"type": "function", "function": {"name": "x"}}


# -- against AbstractCore's own definitions ------------------------------------------------------


@pytest.fixture(scope="module")
def ac():
    pytest.importorskip("abstractcore", reason="the abstractcore package is in the dev extra")
    return import_abstractcore()


def test_where_abstractcore_agrees_and_where_we_go_further(ac):
    from abstractcore.tools.core import ToolDefinition
    from abstractcore.tools.handler import UniversalToolHandler

    # Plain types: the same JSON types, defaults and required list as AbstractCore's native schema.
    theirs = UniversalToolHandler("gpt-4o-mini").prepare_tools_for_native([search])[0]["function"]
    ours = tool_schema(search)["function"]
    assert ours["name"] == theirs["name"]
    assert ours["parameters"]["required"] == theirs["parameters"]["required"]
    same = ["query", "limit", "ratio", "exact", "tags", "grid", "lang", "retries"]
    for name in same:
        mine = {k: v for k, v in ours["parameters"]["properties"][name].items() if k not in ("description", "default")}
        assert mine == theirs["parameters"]["properties"][name], name
    defaults = {k: v["default"] for k, v in ToolDefinition.from_function(search).parameters.items() if "default" in v}
    assert defaults == {k: v["default"] for k, v in ours["parameters"]["properties"].items() if "default" in v}
    # Further: parameter descriptions from the docstring (AbstractCore sends none) and dict values.
    assert "description" not in theirs["parameters"]["properties"]["query"]
    assert theirs["parameters"]["properties"]["scores"] == {"type": "object"}

    # Further: AbstractCore types Enum, Literal, TypedDict and dataclass parameters as "string",
    # drops the null of Optional, and keeps an Enum default as the member (not JSON).
    definition = ToolDefinition.from_function(forecast).parameters
    assert {name: definition[name]["type"] for name in ("unit", "mode", "note", "place", "window")} == dict.fromkeys(
        ("unit", "mode", "note", "place", "window"), "string")
    assert definition["unit"]["default"] is Unit.C
    ours = tool_schema(forecast)["function"]["parameters"]["properties"]
    assert [ours[n]["type"] for n in ("unit", "mode", "note", "place", "window")] == [
        "string", "string", ["string", "null"], ["object", "null"], ["object", "null"]]
    assert ours["unit"]["default"] == "celsius"

    # An unannotated parameter: AbstractCore says "string" even when the default is an int.
    assert ToolDefinition.from_function(odd).parameters["e"]["type"] == "string"


def test_abstractcore_tool_decorator_names_and_describes(ac):
    @ac.tool(name="lookup", description="Look a word up.")
    def anything(word: str, strict: bool = False) -> str:
        return word

    schema = tool_schema(anything)["function"]
    assert (schema["name"], schema["description"]) == ("lookup", "Look a word up.")
    assert schema["parameters"]["properties"]["strict"] == {"type": "boolean", "default": False}
    # AbstractCore's ToolDefinition itself is accepted too.
    assert tool_schema(anything._tool_definition) == tool_schema(anything)


def test_our_schema_reaches_the_provider_through_both_clients(ac):
    """The remote client sends the schema as is; AbstractCore's local client rebuilds the
    native schema from ours: its `required` comes from which properties carry a default, so
    the defaults we include keep optional parameters optional, and our types get through."""
    with FakeOpenAI() as fake:
        remote = RemoteAbstractCoreLLMClient(server_base_url=fake.base_url, model="gpt-4o-mini")
        remote.generate(prompt="weather?", tools=[tool_schema(forecast)])
        assert fake.requests[-1]["body"]["tools"] == [tool_schema(forecast)]

        root = logging.getLogger()
        before = (list(root.handlers), root.level)
        local = LocalAbstractCoreLLMClient(provider="openai-compatible", model="gpt-4o-mini",
                                           llm_kwargs={"base_url": fake.base_url, "api_key": "", "timeout": 30})
        result = local.generate(prompt="weather?", tools=[tool_schema(forecast)])
        assert (list(root.handlers), root.level) == before
        assert [c["name"] for c in result["tool_calls"]] == ["add", "shout"]  # the fake's tool calls
        sent = fake.requests[-1]["body"]["tools"][0]["function"]["parameters"]
        assert sent["required"] == ["city"]
        ours = tool_schema(forecast)["function"]["parameters"]["properties"]
        assert sent["properties"]["unit"] == {k: v for k, v in ours["unit"].items() if k != "default"}
        assert sent["properties"]["place"]["properties"] == ours["place"]["properties"]
