"""Small helpers shared by foundry's name -> builder registries.

Used by the optimizer/scheduler builders (`foundry.optim`), `foundry.callbacks` and
`foundry.loggers`, so that every registry reports bad names and keys the same way.
Key tables are read off the builders' signatures so they cannot drift from the
Composer/torch versions we pin.
"""

from __future__ import annotations

import copy
import difflib
import inspect
from typing import Any, Callable, Iterable, Mapping


def signature_keys(builder: Callable[..., Any], skip: Iterable[str] = ()) -> dict[str, Any]:
    """Keyword arguments of `builder` mapped to their defaults.

    A parameter without a default maps to None: the config validator reads a None
    default as "accept any value", and `check_kwargs` reports it as required.
    """
    skip = set(skip)
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in _params(builder)
        if name not in skip
    }


def required_keys(builder: Callable[..., Any], skip: Iterable[str] = ()) -> tuple[str, ...]:
    """Keyword arguments of `builder` that have no default."""
    skip = set(skip)
    return tuple(name for name, p in _params(builder) if name not in skip and p.default is inspect.Parameter.empty)


def nearest(word: str, choices: Iterable[str]) -> str | None:
    """The closest of `choices` to `word`, or None when nothing is close."""
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def check_name(name: str, registry: Mapping[str, Any], what: str) -> None:
    """Raise ValueError for a name the registry does not hold, suggesting the nearest."""
    if name in registry:
        return
    valid = ', '.join(sorted(registry))
    guess = nearest(name, registry)
    hint = f" (did you mean '{guess}'?)" if guess else ''
    raise ValueError(f"unknown {what} '{name}'{hint}. Valid {what}s: {valid}")


def check_kwargs(name: str, kwargs: Mapping[str, Any], keys: Mapping[str, Any], required: Iterable[str], what: str) -> None:
    """Raise ValueError for an unknown or missing key of registered builder `name`."""
    valid = ', '.join(sorted(keys))
    for key in kwargs:
        if key not in keys:
            guess = nearest(key, keys)
            hint = f" (did you mean '{guess}'?)" if guess else ''
            raise ValueError(f"unknown key '{key}' for {what} '{name}'{hint}. Valid keys for '{name}': {valid}")
    missing = [k for k in required if k not in kwargs]
    if missing:
        raise ValueError(f"{what} '{name}' needs {', '.join(repr(k) for k in missing)}. Valid keys for '{name}': {valid}")


def build_each(cfg: Mapping[str, Mapping[str, Any] | None] | None, registry: Mapping[str, Callable[..., Any]],
               keys: Mapping[str, Mapping[str, Any]], what: str) -> list[Any]:
    """One object per `name: {kwargs}` entry of `cfg`, in config order; an entry may be empty.

    Raises ValueError for an unknown name or key, suggesting the nearest valid one. The kwargs are
    deep-copied: builders keep and even write into dicts they are given (WandBLogger's init_kwargs,
    MemoryMonitor's memory_keys), which must never alias the config.
    """
    built = []
    for name, kwargs in (cfg or {}).items():
        check_name(name, registry, what)
        kwargs = copy.deepcopy(dict(kwargs or {}))
        check_kwargs(name, kwargs, keys[name], required_keys(registry[name]), what)
        built.append(registry[name](**kwargs))
    return built


def _params(builder: Callable[..., Any]) -> Iterable[tuple[str, inspect.Parameter]]:
    # Classes report their __init__ signature without `self`; *args/**kwargs are not config keys.
    for name, p in inspect.signature(builder).parameters.items():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            yield name, p
