"""JSON Schema (2020-12, as OpenAPI 3.1 uses it) from Kernex's wire types.

The wire types are the dataclasses of the device protocol (``kernex_core.protocol``) and
the ``TypedDict`` answers of the admin API (``kernex_server.wire``). ``Components.of``
turns a type annotation into a schema; each dataclass or TypedDict becomes a named
component (``#/components/schemas/<class name>``) the first time it is met.

``Annotated[T, {...}]`` adds keywords to ``T``'s schema (``{"format": "date-time"}``,
``{"minimum": 1}``); ``Annotated[T, "text"]`` adds a description.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from collections import abc
from typing import Any, Literal, NotRequired, Required, Union, get_args, get_origin

Schema = dict[str, Any]
REF_PREFIX = "#/components/schemas/"

_SCALARS: dict[Any, Schema] = {
    bool: {"type": "boolean"},
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bytes: {"type": "string", "format": "binary"},
}
_SEQUENCES = (list, tuple, abc.Sequence, abc.Iterable, frozenset, set)
_MAPPINGS = (dict, abc.Mapping)


def ref(name: str) -> Schema:
    return {"$ref": REF_PREFIX + name}


class Components:
    """The named schemas met so far; ``of`` converts one annotation."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}
        self._owners: dict[str, type] = {}

    def of(self, tp: Any) -> Schema:
        if isinstance(tp, dict):  # a schema written out already
            return tp
        origin, args = get_origin(tp), get_args(tp)
        if origin is typing.Annotated:
            out = dict(self.of(args[0]))
            for extra in args[1:]:
                if isinstance(extra, dict):
                    out.update(extra)
                elif isinstance(extra, str):
                    out["description"] = extra
            return out
        if origin in (NotRequired, Required):
            return self.of(args[0])
        if tp is Any or tp is object:
            return {}
        if tp is None or tp is type(None):
            return {"type": "null"}
        if origin in (Union, types.UnionType):
            return _union([self.of(a) for a in args])
        if origin is Literal:
            return _literal(args)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return _literal(tuple(m.value for m in tp))
        if tp in _SCALARS:
            return dict(_SCALARS[tp])
        if origin in _SEQUENCES or tp in _SEQUENCES:
            return {"type": "array", "items": self.of(args[0]) if args else {}}
        if origin in _MAPPINGS or tp in _MAPPINGS:
            out = {"type": "object"}
            value = self.of(args[1]) if len(args) == 2 else {}
            if value:
                out["additionalProperties"] = value
            return out
        if typing.is_typeddict(tp) or dataclasses.is_dataclass(tp):
            return self._component(tp)
        raise TypeError(f"no JSON schema for {tp!r}")

    def _component(self, tp: Any) -> Schema:
        name = tp.__name__
        owner = self._owners.setdefault(name, tp)
        if owner is not tp:
            raise TypeError(f"two wire types named {name}: {owner!r} and {tp!r}")
        if name in self.schemas:
            return ref(name)
        self.schemas[name] = {}  # a type that names itself finds its reference
        hints = typing.get_type_hints(tp, include_extras=True)
        if dataclasses.is_dataclass(tp):
            fields = [f for f in dataclasses.fields(tp) if f.init]
            names = [f.name for f in fields]
            required = [
                f.name
                for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
        else:  # read the markers here: under postponed annotations 3.11 cannot see them
            names = list(hints)
            total = getattr(tp, "__total__", True)
            required = [
                n
                for n in names
                if get_origin(hints[n]) is Required
                or (total and get_origin(hints[n]) is not NotRequired)
            ]
        out: Schema = {"type": "object", "properties": {n: self.of(hints[n]) for n in names}}
        if required:
            out["required"] = required
        doc = (tp.__doc__ or "").strip()
        if doc and not doc.startswith(f"{name}("):  # not the dataclass's generated one
            out["description"] = " ".join(doc.split())
        self.schemas[name] = out
        return ref(name)


def _literal(values: tuple[Any, ...]) -> Schema:
    out: Schema = {"enum": list(values)}
    kinds = {type(v) for v in values}
    if kinds == {str}:
        out["type"] = "string"
    elif kinds == {int}:
        out["type"] = "integer"
    return out


def _union(parts: list[Schema]) -> Schema:
    """``T | None`` of a plain type is ``{"type": [T, "null"]}``; anything else anyOf."""
    plain = all(set(p) <= {"type", "format"} and isinstance(p.get("type"), str) for p in parts)
    if plain and len({p.get("format") for p in parts if "format" in p}) <= 1:
        out: Schema = {"type": [p["type"] for p in parts]}
        for p in parts:
            if "format" in p:
                out["format"] = p["format"]
        return out
    return {"anyOf": parts}
