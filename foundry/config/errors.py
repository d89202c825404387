"""One error type for everything wrong with a run's configuration.

A ConfigError carries a single message written for the user: it names the key by its
full dotted path, says what is wrong, and says how to fix it. Entry points print the
message alone (no traceback) and exit with status 2.
"""

from __future__ import annotations

import difflib
from typing import Iterable


class ConfigError(ValueError):
    """A configuration problem the user can fix by editing the YAML or an override."""


def closest_match(name: str, candidates: Iterable[str]) -> str | None:
    """The candidate nearest to `name`, or None when nothing is reasonably close."""
    candidates = list(candidates)
    matches = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if matches:
        return matches[0]
    # Prefix and case slips ("LR", "optim") are common and difflib scores them low.
    lowered = {c.lower(): c for c in candidates}
    if name.lower() in lowered:
        return lowered[name.lower()]
    prefixed = [c for c in candidates if c.startswith(name) or name.startswith(c)]
    return prefixed[0] if len(prefixed) == 1 else None


def join_path(parent: str, key: str | int) -> str:
    if isinstance(key, int):
        return f'{parent}[{key}]'
    return f'{parent}.{key}' if parent else str(key)


def unknown_key_error(path: str, key: str, valid: Iterable[str], what: str = 'key') -> ConfigError:
    valid = sorted(valid)
    full = join_path(path, key)
    suggestion = closest_match(key, valid)
    if suggestion is not None:
        return ConfigError(f'unknown {what} `{full}`: did you mean `{join_path(path, suggestion)}`?')
    listing = ', '.join(valid) if len(valid) <= 30 else ', '.join(valid[:30]) + ', ...'
    return ConfigError(f'unknown {what} `{full}`. Valid {what}s here: {listing}')
