"""Stage configs: dataclasses, possibly nested, filled from YAML plus dotted `key=value` overrides.

Each stage keeps its own config dataclass next to its `run(config)` (torchtune-style recipes); sections that
several stages share (`rewards:`, `lora:`) are dataclasses of their own, and a field whose type is a dataclass
is a nested section (`inner.steps=8`, `rewards.timeout=30`). This module is only the generic machinery: a
field documents itself with `doc(default, help)`, `posttrain STAGE --help` prints every field, unknown keys
name the closest valid key, a single value for a list field is a one-element list, a section may name one
field it stands for when given a plain value (`SHORTHAND`: `rewards=math,code` sets `rewards.names`), and every
error names where the bad value came from (`file.yaml: 'inner.steps' ...` or `command line 'inner.steps=x'`).

Why not OmegaConf (docs/ARCHITECTURE.md): its structured configs convert silently where we refuse (`bf16: 3`
and `bf16: yes` become true, an int becomes a string), know no `Literal` or source of a value, and would still
need this module's help, closest-key and single-value-list code around them. The syntax is OmegaConf's and
Hydra's: dotted keys, `key=[a,b]` (or `key=a,b`) lists, YAML values.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from posttrain.errors import UserError


def doc(default: Any, help: str, **kw) -> Any:
    """A dataclass field with its help text; mutable defaults (lists, dicts, sections) are copied per instance."""
    if isinstance(default, (list, dict)) or dataclasses.is_dataclass(default):
        return dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


def closest(key: str, valid: list[str]) -> str:
    match = difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _section(tp: Any):
    """The dataclass a field's type names (a nested section), else None."""
    return tp if isinstance(tp, type) and dataclasses.is_dataclass(tp) else None


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Check/convert one YAML or command-line value to the field's annotated type."""
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
        if isinstance(value, str):  # `rewards.names=math,code` on the command line; `1,4` are ints
            value = [yaml.safe_load(v) for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]  # a single value is a one-element list (`reward_weights=1.0`)
        return [_coerce(v, item_tp, key, where) for v in value]
    if origin is dict or tp is dict:
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
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise UserError(f"{where}: '{key}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    return value


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_paths(cls, prefix: str = "", shorthands: bool = False) -> list[str]:
    """Every settable key, sections expanded: ["steps", ..., "rewards.names", "rewards.weights", ...]; with
    `shorthands`, also the sections that stand for one of their fields ("rewards")."""
    out = []
    for name, tp in _field_types(cls).items():
        section = _section(tp)
        if section is None:
            out.append(prefix + name)
            continue
        if shorthands and getattr(section, "SHORTHAND", None):
            out.append(prefix + name)
        out += field_paths(section, f"{prefix}{name}.", shorthands)
    return out


def _merge(cls, tree: dict, data: Any, where: str, prefix: str = "") -> None:
    """Check `data` (a mapping of this section's keys) against `cls` and write the coerced values into `tree`."""
    if not isinstance(data, dict):
        what = f"section '{prefix[:-1]}'" if prefix else "config"
        raise UserError(f"{where}: expected a mapping of {what} keys, got {type(data).__name__}")
    types_ = _field_types(cls)
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in types_:
            valid = [prefix + k for k in types_] + field_paths(cls, prefix)
            raise UserError(f"{where}: unknown config key '{path}'{closest(path, valid)}")
        section = _section(types_[key])
        if section is not None:
            if not isinstance(value, dict) and getattr(section, "SHORTHAND", None):
                value = {section.SHORTHAND: value}  # `rewards: [math, code]` is `rewards: {names: [math, code]}`
            if not isinstance(value, dict):
                keys = ", ".join(f"{path}.{k}" for k in list(_field_types(section))[:3])
                raise UserError(f"{where}: '{path}' is a section ({keys}, ...): set its keys, got {value!r}")
            _merge(section, tree.setdefault(key, {}), value, where, path + ".")
        else:
            tree[key] = _coerce(value, types_[key], path, where)


def _build(cls, tree: dict):
    types_ = _field_types(cls)
    return cls(**{k: _build(_section(types_[k]), v) if _section(types_[k]) else v for k, v in tree.items()})


def from_dict(cls, data: dict, where: str):
    """Build a config dataclass from a (nested) mapping, refusing unknown keys with the closest valid one."""
    tree: dict = {}
    _merge(cls, tree, data, where)
    return _build(cls, tree)


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise UserError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _leaf_type(cls, dotted: str) -> Any:
    """The annotated type of a dotted key, or None where the key names nothing (its error comes later)."""
    tp: Any = cls
    for part in dotted.split("."):
        section = _section(tp)
        if section is None or part not in _field_types(section):
            return None
        tp = _field_types(section)[part]
    return tp


def _as_text(raw: str, tp: Any) -> bool:
    """A string field takes the command line's text as it is (`template=Hint: {x}` is no YAML mapping)."""
    return tp is str or (
        typing.get_origin(tp) in (typing.Union, types.UnionType)
        and str in typing.get_args(tp)
        and raw not in ("null", "None", "~", "")
    )


def _nest(dotted: str, value: Any) -> dict:
    """`inner.steps`, 8 -> {"inner": {"steps": 8}}."""
    out: Any = value
    for part in reversed(dotted.split(".")):
        out = {part: out}
    return out


def read_yaml(path: str | Path) -> dict:
    """A config file's top-level mapping, with one clear error if it is missing or not YAML."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of config keys")
    return data


def load(cls, path: str | Path | None, overrides: list = ()):
    """YAML file (optional) + `key=value` overrides (dotted keys reach into sections) -> a `cls` instance.

    An override is a string, or a (string, where) pair naming where it came from (the CLI passes `--flag`)."""
    tree: dict = {}
    if path is not None:
        _merge(cls, tree, read_yaml(path), str(path))
    for item in overrides:
        text, where = item if isinstance(item, tuple) else (item, f"command line '{item}'")
        key, value = parse_override(text)
        raw = text.split("=", 1)[1]
        if _as_text(raw, _leaf_type(cls, key)):
            value = raw
        _merge(cls, tree, _nest(key, value), where)
    return _build(cls, tree)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def help_text(cls, prefix: str = "", defaults=None) -> str:
    """One entry per field (sections expanded as dotted names): name, type, default, help. A section's
    defaults are the stage's (e.g. eval's `rewards.timeout` differs from rl's)."""
    defaults = cls() if defaults is None else defaults
    lines = []
    types_ = _field_types(cls)
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name)
        section = _section(types_[f.name])
        if section is not None:
            short = (
                f" ({prefix}{f.name}=X sets {prefix}{f.name}.{section.SHORTHAND})"
                if getattr(section, "SHORTHAND", None)
                else ""
            )
            lines.append(f"  {prefix}{f.name}: section{short}\n      {f.metadata.get('help', '')}")
            lines.append(help_text(section, f"{prefix}{f.name}.", default))
            continue
        tp = getattr(types_[f.name], "__name__", None) or str(types_[f.name]).replace("typing.", "")
        lines.append(f"  {prefix}{f.name} ({tp}, default {default!r})\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)
