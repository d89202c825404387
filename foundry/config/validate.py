"""Turn plain nested dicts (from omegaconf) into typed config dataclasses.

Every field of every config dataclass is checked here: unknown keys (with the nearest
valid key), wrong types (with the expected type), missing required keys (with where).
Sections whose keys are owned by a registry (a model's, an optimizer's) are checked with
`check_keys` against that registry's key/default table instead.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Mapping, Union

from foundry.config.errors import ConfigError, join_path, unknown_key_error

MISSING = dataclasses.MISSING


def type_name(tp: Any) -> str:
    """A short, user-facing spelling of a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return 'any value'
    if origin is Literal:
        return ' | '.join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        names = ' | '.join(type_name(a) for a in args)
        return f'{names} or null' if len(args) < len(typing.get_args(tp)) else names
    if origin in (list, tuple):
        args = typing.get_args(tp)
        return f'a list of {type_name(args[0])}' if args else 'a list'
    if origin is dict or tp is dict:
        return 'a mapping'
    if dataclasses.is_dataclass(tp):
        return 'a mapping'
    return {int: 'an integer', float: 'a number', str: 'a string', bool: 'true or false'}.get(tp, getattr(tp, '__name__', str(tp)))


def _is_instance(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, tp)


def convert(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against annotation `tp` and return it in that type's shape."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f'`{path}` is {value!r}; expected one of {", ".join(repr(c) for c in choices)}')
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f'`{path}` is null; expected {type_name(tp)}')
        candidates = [a for a in args if a is not type(None)]
        errors = []
        for arg in candidates:
            try:
                return convert(value, arg, path)
            except ConfigError as e:
                errors.append((arg, e))
        # Optional[Section] with a bad key inside: the section's own message is the useful one.
        nested = [e for a, e in errors if isinstance(value, Mapping) and dataclasses.is_dataclass(a)]
        if len(candidates) == 1 or nested:
            raise (nested or [errors[0][1]])[0]
        raise ConfigError(f'`{path}` is {value!r} ({type(value).__name__}); expected {type_name(tp)}')
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, path)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f'`{path}` is {value!r}; expected {type_name(tp)}')
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        return [convert(v, item_tp, join_path(path, i)) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f'`{path}` is {value!r}; expected a mapping of keys to values')
        args = typing.get_args(tp)
        value_tp = args[1] if len(args) == 2 else Any
        return {k: convert(v, value_tp, join_path(path, k)) for k, v in value.items()}
    if value is None:
        raise ConfigError(f'`{path}` is null; expected {type_name(tp)}')
    if not _is_instance(value, tp):
        raise ConfigError(f'`{path}` is {value!r} ({type(value).__name__}); expected {type_name(tp)}')
    return float(value) if tp is float else value


def from_mapping(cls: type, data: Any, path: str = '') -> Any:
    """Build dataclass `cls` from `data`, checking keys and types recursively."""
    where = f'`{path}`' if path else 'the config'
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f'{where} must be a mapping of keys to values, not {data!r}')
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unsupported = getattr(cls, 'UNSUPPORTED_KEYS', {})
    for key in data:
        if key in unsupported:
            raise ConfigError(f'`{join_path(path, key)}` is not supported by foundry yet: {unsupported[key]}')
        if key not in fields:
            raise unknown_key_error(path, str(key), fields)
    kwargs = {}
    for name, field in fields.items():
        if name in data:
            kwargs[name] = convert(data[name], hints[name], join_path(path, name))
        elif field.default is MISSING and field.default_factory is MISSING:
            raise ConfigError(f'missing required key `{join_path(path, name)}` ({type_name(hints[name])}); add it to the YAML '
                              f'or pass `{join_path(path, name)}=...` on the command line')
    obj = cls(**kwargs)
    check = getattr(obj, 'check', None)
    if callable(check):
        check(path)
    return obj


def check_keys(data: Mapping[str, Any], defaults: Mapping[str, Any], path: str, what: str = 'key') -> dict[str, Any]:
    """Check a registry-owned section: every key known, and typed like its default.

    `defaults` maps each valid key to its default; a default of None accepts any value.
    Returns the section with defaults filled in.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f'`{path}` must be a mapping of keys to values, not {data!r}')
    out = dict(defaults)
    for key, value in data.items():
        if key not in defaults:
            raise unknown_key_error(path, str(key), defaults, what)
        default = defaults[key]
        if default is not None and value is not None:
            expected = float if isinstance(default, float) else type(default)
            if expected in (list, tuple):
                expected = (list, tuple)
            if isinstance(expected, tuple):
                ok = isinstance(value, expected)
            else:
                ok = _is_instance(value, expected)
            if not ok:
                name = type_name(expected) if not isinstance(expected, tuple) else 'a list'
                raise ConfigError(f'`{join_path(path, key)}` is {value!r} ({type(value).__name__}); expected {name}')
            if expected is float:
                value = float(value)
        out[key] = value
    return out
