"""Dataclasses to JSON and back, checked against their type hints.

One codec for everything the load generator writes or ships (summary.json, a
worker's snapshot): a document read back is rebuilt into the same types it was
written from, and a field of the wrong type or a missing one is an error that
names where it is (`summary.totals.requests: expected int, got 'x'`)."""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class SchemaError(ValueError):
    """A document does not match the types it should be read into."""


def json_name(f: dataclasses.Field[Any]) -> str:
    """A field's key in JSON (metadata "json" where the key is not an identifier, e.g. p99.9)."""
    return str(f.metadata.get("json", f.name))


def to_json(obj: Any) -> Any:
    """Plain JSON data (dicts, lists, numbers, strings) from dataclasses; a
    float that is not finite becomes null, as JSON has no NaN."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        floats = _float_fields(type(obj))
        return {
            json_name(f): to_json(
                _as_float(getattr(obj, f.name)) if f.name in floats else getattr(obj, f.name)
            )
            for f in dataclasses.fields(obj)
        }
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


@functools.cache
def _float_fields(cls: type) -> frozenset[str]:
    """Fields typed float (or float | None): an int there is written as a float,
    so a document reads back to the same text it was written as."""
    hints = typing.get_type_hints(cls)
    return frozenset(
        name for name, tp in hints.items() if tp is float or set(typing.get_args(tp)) == {float, type(None)}
    )


def _as_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def from_json(cls: type[T], data: Any, where: str) -> T:
    """`data` (parsed JSON) as an instance of the dataclass `cls`."""
    result: T = _read(cls, data, where)
    return result


def _read(tp: Any, data: Any, where: str) -> Any:
    if tp is Any or tp is object:
        return data
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if data is None and type(None) in args:
            return None
        errors = []
        for inner in (a for a in args if a is not type(None)):
            try:
                return _read(inner, data, where)
            except SchemaError as exc:
                errors.append(str(exc))
        raise SchemaError(" / ".join(errors))
    if dataclasses.is_dataclass(tp):
        return _read_dataclass(tp, data, where)
    if origin is list:
        if not isinstance(data, list):
            raise SchemaError(f"{where}: expected a list, got {data!r:.60}")
        return [_read(args[0], v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise SchemaError(f"{where}: expected a mapping, got {data!r:.60}")
        return {str(k): _read(args[1], v, f"{where}.{k}") for k, v in data.items()}
    if origin is typing.Literal:
        if data not in args:
            raise SchemaError(f"{where}: expected one of {list(args)}, got {data!r:.60}")
        return data
    return _read_scalar(tp, data, where)


def _read_scalar(tp: Any, data: Any, where: str) -> Any:
    if tp is float:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return float(data)
    elif tp is int:
        if isinstance(data, int) and not isinstance(data, bool):
            return data
    elif tp in (str, bool):
        if isinstance(data, tp):
            return data
    else:
        raise SchemaError(f"{where}: cannot read type {tp!r}")
    raise SchemaError(f"{where}: expected {tp.__name__}, got {data!r:.60}")


@functools.cache
def _hints(tp: type) -> dict[str, Any]:
    """A dataclass's resolved field types (evaluating them costs more than reading a small document)."""
    return typing.get_type_hints(tp)


def _read_dataclass(tp: Any, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"{where}: expected a mapping, got {data!r:.60}")
    hints = _hints(tp)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(tp):
        key = json_name(f)
        if key in data:
            kwargs[f.name] = _read(hints[f.name], data[key], f"{where}.{key}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError(f"{where}: missing {key!r}")
    return tp(**kwargs)
