"""`vmorch jobs submit KIND --field value ...`: one flag per field of the kind's request
model (schemas.requests), generated from the model, so every kind the API takes has its
flags and a new field or kind needs no change here. The request is validated with the
API's own model, strictly as the API does, before it is sent: a bad value is refused here,
naming the field and its flag.

How a field becomes a flag (`memory_mib` -> `--memory-mib`):
  int, float, str          --field VALUE
  bool                     --field / --no-field
  Literal (an enum)        --field CHOICE, checked by argparse
  list of scalars          --field V (repeatable), or a JSON list
  list of models           --field JSON (repeatable: one object each), or a JSON list
  dict of scalars          --field KEY=VALUE (repeatable), or a JSON object
  anything else (models)   --field JSON
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import textwrap
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from orchestrator.cli.exitcodes import CliError, ExitCode
from schemas.requests import ClientJobRequest

Shape = Literal["scalar", "bool", "choice", "list", "map", "json"]
_SCALARS = (int, float, str)
_METAVARS = {int: "INT", float: "NUMBER", str: "TEXT"}


def _kind_of(model: type[BaseModel]) -> str:
    return str(get_args(model.model_fields["kind"].annotation)[0])


KINDS: dict[str, type[BaseModel]] = {
    _kind_of(m): m for m in get_args(get_args(ClientJobRequest)[0])
}
"""Every kind a client may submit, with its request model."""

_ADAPTER: TypeAdapter[Any] = TypeAdapter(ClientJobRequest)


def _strip(annotation: Any) -> tuple[Any, bool]:
    """The type under Annotated[...] and `| None`, and whether None is allowed."""
    nullable = False
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
            continue
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(get_args(annotation))
            if len(args) == 1:
                annotation = args[0]
                continue
        return annotation, nullable


def _scalar_type(annotation: Any) -> type | None:
    """int, float or str for a scalar (a Literal of strings is a str), else None."""
    t, _ = _strip(annotation)
    if t in _SCALARS:
        return t  # type: ignore[no-any-return]
    if get_origin(t) is Literal and all(isinstance(v, str) for v in get_args(t)):
        return str
    return None


@dataclass(frozen=True)
class FlagSpec:
    """How one request field is given on the command line."""

    field: str
    shape: Shape
    item: type | None = None  # scalar, list item or map value type
    choices: tuple[str, ...] = ()
    required: bool = False
    help: str = ""

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def dest(self) -> str:
        return "field_" + self.field  # apart from the command's own options (wait, json...)

    @property
    def metavar(self) -> str | None:
        if self.shape == "scalar":
            return _METAVARS[self.item or str]
        if self.shape == "list":
            return f"{_METAVARS[self.item]}|JSON" if self.item else "JSON"
        if self.shape == "map":
            return "KEY=VALUE|JSON"
        return None if self.shape in ("bool", "choice") else "JSON"


def _help(info: FieldInfo, shape: Shape) -> str:
    parts = ["required"] if info.is_required() else []
    if info.description:
        parts.append(info.description)
    if not info.is_required() and info.default not in (PydanticUndefined, None, "", [], {}):
        parts.append(f"default: {json.dumps(info.default)}")
    if shape in ("list", "map"):
        parts.append("repeatable")
    return "; ".join(parts).replace("%", "%%")


def describe(name: str, info: FieldInfo) -> FlagSpec:
    """The flag of one field, from its type."""
    t, _ = _strip(info.annotation)
    origin = get_origin(t)
    shape: Shape
    item: type | None = None
    choices: tuple[str, ...] = ()
    if t is bool:
        shape = "bool"
    elif origin is Literal and all(isinstance(v, str) for v in get_args(t)):
        shape, choices = "choice", tuple(get_args(t))
    elif t in _SCALARS:
        shape, item = "scalar", t
    elif origin is list:
        shape, item = "list", _scalar_type(get_args(t)[0])
    elif origin is dict and (value := _scalar_type(get_args(t)[1])) is not None:
        shape, item = "map", value
    else:
        shape = "json"
    return FlagSpec(name, shape, item, choices, info.is_required(), _help(info, shape))


@cache
def flag_specs(kind: str) -> tuple[FlagSpec, ...]:
    """The flags of a kind, in the model's field order (`kind` itself is the positional)."""
    fields = KINDS[kind].model_fields
    return tuple(describe(n, f) for n, f in fields.items() if n != "kind")


def add_flags(parser: argparse.ArgumentParser | argparse._ArgumentGroup, kind: str) -> None:
    """The kind's flags on `parser`, the required ones first."""
    for spec in sorted(flag_specs(kind), key=lambda s: not s.required):
        kw: dict[str, Any] = {"dest": spec.dest, "default": None, "help": spec.help}
        if spec.shape == "bool":
            parser.add_argument(spec.flag, action=argparse.BooleanOptionalAction, **kw)
        elif spec.shape == "choice":
            parser.add_argument(spec.flag, choices=spec.choices, **kw)
        elif spec.shape in ("list", "map"):
            parser.add_argument(spec.flag, action="append", metavar=spec.metavar, **kw)
        else:
            parser.add_argument(spec.flag, metavar=spec.metavar, **kw)


def describe_kind(kind: str) -> str:
    """The kind's model docstring, or the nearest request model's it inherits from (the
    VM operations share one)."""
    for cls in KINDS[kind].__mro__:
        doc = cls.__dict__.get("__doc__")
        if doc and cls.__module__ == KINDS[kind].__module__:
            return inspect.cleandoc(doc)
    return ""


def summary(kind: str, width: int = 72) -> str:
    """The first paragraph of the kind's description, shortened (its help in listings)."""
    first = describe_kind(kind).split("\n\n")[0]
    return textwrap.shorten(first, width, placeholder=" ...")


# --- from flags to a request --------------------------------------------------------------


def _refused(details: list[tuple[list[str | int], str]], what: str = "job request") -> CliError:
    return CliError(
        ExitCode.REFUSED,
        f"the {what} is not valid (checked before sending)",
        error_code="validation_error",
        details=details,
    )


def _scalar(raw: str, item: type | None) -> Any:
    """A command-line value as the JSON value its field takes; left as text when it is
    not one (validation then names the field and what it should be)."""
    if item is int:
        try:
            return int(raw)
        except ValueError:
            return raw
    if item is float:
        try:
            number = float(raw)
        except ValueError:
            return raw
        if not math.isfinite(number):
            return raw
        return int(number) if number.is_integer() and "." not in raw else number
    return raw


def _json(spec: FlagSpec, raw: str) -> Any:
    try:
        return json.loads(raw)
    except ValueError as e:
        msg = f"{spec.flag}: not JSON ({e}): {raw!r}"
        raise _refused([(["body", spec.field], msg)]) from None


def convert(spec: FlagSpec, raw: Any) -> Any:
    """The field's JSON value from what argparse collected for its flag."""
    if spec.shape in ("bool", "choice"):
        return raw
    if spec.shape == "scalar":
        return _scalar(raw, spec.item)
    if spec.shape == "json":
        return _json(spec, raw)
    if spec.shape == "list":
        items: list[Any] = []
        for one in raw:
            if one.lstrip().startswith("[") or spec.item is None:
                value = _json(spec, one)
                items.extend(value if isinstance(value, list) else [value])
            else:
                items.append(_scalar(one, spec.item))
        return items
    mapping: dict[str, Any] = {}
    for one in raw:
        if one.lstrip().startswith("{"):
            value = _json(spec, one)
            if not isinstance(value, dict):
                raise _refused([(["body", spec.field], f"{spec.flag}: not a JSON object")])
            mapping.update(value)
        elif "=" in one:
            key, _, value = one.partition("=")
            mapping[key] = _scalar(value, spec.item)
        else:
            msg = f"{spec.flag}: give KEY=VALUE or a JSON object, not {one!r}"
            raise _refused([(["body", spec.field], msg)])
    return mapping


def build_request(
    kind: str, values: Mapping[str, Any], base: Mapping[str, Any] | None
) -> dict[str, Any]:
    """The request body: `base` (a file's request, if any) with the fields whose flags
    were given (`values`: argparse's namespace as a dict) set over it."""
    if kind not in KINDS:
        raise _refused([(["body", "kind"], f"unknown kind {kind!r}")])
    given = dict(base or {})
    if given.get("kind", kind) != kind:
        msg = f"the file's kind is {given['kind']!r}, not {kind!r}"
        raise _refused([(["body", "kind"], msg)])
    body: dict[str, Any] = {"kind": kind, **given}
    for spec in flag_specs(kind):
        raw = values.get(spec.dest)
        if raw is not None:
            body[spec.field] = convert(spec, raw)
    return body


def validate(body: Any) -> None:
    """Refuse (naming each field, and its flag) a request the API would refuse for its
    shape: the same model, validated as strictly as the API does."""
    try:
        _ADAPTER.validate_python(body, strict=True)
    except ValidationError as e:
        kind = body.get("kind") if isinstance(body, dict) else None
        flags = {s.field: s.flag for s in flag_specs(kind)} if kind in KINDS else {}
        details: list[tuple[list[str | int], str]] = []
        for err in e.errors(include_url=False):
            loc = list(err["loc"])
            if kind is not None and loc and loc[0] == kind:
                loc = loc[1:]  # the union's tag, which the client did not write as a field
            msg = err["msg"]
            if loc and (flag := flags.get(str(loc[0]))):
                msg += f" ({flag})"
            details.append((["body", *loc], msg))
        raise _refused(details) from None


def load_request(text: str, source: str) -> dict[str, Any]:
    """A request from JSON text (a file, stdin or the command line)."""
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise _refused([(["body"], f"{source} is not JSON: {e}")]) from None
    if not isinstance(doc, dict):
        raise _refused([(["body"], f"{source} is not a JSON object")])
    return doc


def to_argv(request: Mapping[str, Any]) -> list[str]:
    """The command line that submits `request`: KIND then a flag per field (the inverse of
    build_request, for tests and for showing how a job was asked for)."""
    kind = str(request["kind"])
    argv = [kind]
    for spec in flag_specs(kind):
        if spec.field not in request:
            continue
        value = request[spec.field]
        if spec.shape in ("list", "map") and not value:
            argv += [spec.flag, json.dumps(value)]  # an empty one, given: "[]" or "{}"
        elif spec.shape == "bool" and isinstance(value, bool):
            argv.append(spec.flag if value else "--no-" + spec.flag[2:])
        elif spec.shape in ("scalar", "choice") and value is not None:
            argv += [spec.flag, str(value)]
        elif spec.shape == "list" and isinstance(value, list) and spec.item is not None:
            for item in value:
                argv += [spec.flag, str(item)]
        elif spec.shape == "list" and isinstance(value, list):
            for item in value:
                argv += [spec.flag, json.dumps(item)]
        elif spec.shape == "map" and isinstance(value, dict):
            for k, v in value.items():
                argv += [spec.flag, f"{k}={v}"]
        else:
            argv += [spec.flag, json.dumps(value)]
    return argv


def kinds_epilog(kinds: Sequence[str] | None = None) -> str:
    lines = [f"  {k:<28} {summary(k)}" for k in kinds or sorted(KINDS)]
    return "kinds (`vmorch jobs submit KIND --help` for its flags):\n" + "\n".join(lines)
