"""Stage configs: dataclasses filled from YAML plus `key=value` overrides; unknown keys are errors.

Each stage keeps its own config dataclass next to its `run(config)` (torchtune-style recipes), so a stage
reads top to bottom in one file. This module holds only the generic machinery shared by all of them.
A field documents itself with `field(..., metadata={"help": "..."})`; `posttrain STAGE --help` prints it.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import UserError


def doc(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its help text; mutable defaults are copied per instance."""
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def _closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check/convert a YAML value to the field's annotated type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key, where)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{where}: '{key}' has an invalid value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # `--rewards math,code` on the command line
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]  # `--pass_k 1,4`: ints
        if not isinstance(value, list):
            raise UserError(f"{where}: '{key}' must be a list, got {value!r}")
        return [_coerce(v, item_tp, key, where) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise UserError(f"{where}: '{key}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise UserError(f"{where}: '{key}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{where}: '{key}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{where}: '{key}' must be a string, got {value!r}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{where}: '{key}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls, data: dict, where: str):
    """Build a config dataclass from a mapping, refusing unknown keys with the closest valid one."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a mapping of config keys, got {type(data).__name__}")
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise UserError(f"{where}: unknown config key '{key}'{_closest(key, list(types_))}")
        kwargs[key] = _coerce(value, types_[key], key, where)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load(cls, path: str | Path | None, overrides: list[str] = ()):
    """YAML file (optional) + `key=value` overrides -> a validated `cls` instance."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise UserError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(data, dict):
            raise UserError(f"{path}: the top level must be a mapping of config keys")
    for text in overrides:
        key, value = parse_override(text)
        data[key] = value
    return from_dict(cls, data, str(path) if path is not None else "config")


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def help_text(cls) -> str:
    """One line per field: name, type, default, help."""
    lines = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tp = getattr(types_[f.name], "__name__", None) or str(types_[f.name]).replace("typing.", "")
        lines.append(f"  {f.name} ({tp}, default {default!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
