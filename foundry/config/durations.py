"""Composer time strings ('240ba', '1ep', '0.1dur', '3e4tok') read without importing Composer.

The grammar is Composer's `Time.from_timestring` (a number then a unit, case-insensitive;
whole numbers except for `dur`; `1h30m0s` style wall-clock strings for `sec`), so anything
accepted here is accepted by Composer, and a mistake is reported with its key before launch
instead of as Composer's `Invalid time string` traceback.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Optional

from foundry.config.errors import ConfigError

UNITS = ('iter', 'ep', 'ba', 'sp', 'tok', 'dur', 'sec')
_TIME = re.compile(r'^(.+?)(' + '|'.join(UNITS) + r')$', re.IGNORECASE)
_WALL_CLOCK = re.compile(r'^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$')
EXAMPLES = "e.g. '240ba' (batches), '1ep', '10000sp', '2e6tok'"


@dataclass(frozen=True)
class Duration:
    value: float
    unit: str

    def __str__(self) -> str:
        value = int(self.value) if self.unit != 'dur' else self.value
        return f'{value}{self.unit}'


def parse_time(value: Any, path: str, int_unit: str = 'ep', allowed: Iterable[str] = UNITS,
               positive: bool = True) -> Duration:
    """`value` (a time string, or an integer meaning `int_unit`) as a Duration, or a ConfigError naming `path`."""
    allowed = tuple(allowed)
    hint = f"{EXAMPLES}{', or a fraction of max_duration such as 0.1dur' if 'dur' in allowed else ''}"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f'`{path}` is {value!r}; expected a duration, {hint}')
    if isinstance(value, int):
        duration = Duration(float(value), int_unit)
    else:
        duration = _parse_string(value.strip(), path, hint)
    if duration.unit not in allowed:
        raise ConfigError(f'`{path}` is {value!r}: the unit {duration.unit!r} is not allowed here; use one of '
                          f'{", ".join(allowed)} ({hint})')
    if duration.unit == 'dur' and not 0 < duration.value <= 1:
        raise ConfigError(f'`{path}` is {value!r}: a `dur` value is a fraction of max_duration, in (0, 1]')
    if positive and duration.value <= 0:
        raise ConfigError(f'`{path}` is {value!r}; it must be greater than zero ({hint})')
    if duration.value < 0:
        raise ConfigError(f'`{path}` is {value!r}; it must not be negative ({hint})')
    return duration


def _parse_string(text: str, path: str, hint: str) -> Duration:
    wall = _WALL_CLOCK.match(text)
    if text and wall and any(wall.groups()):
        h, m, s = (int(g or 0) for g in wall.groups())
        return Duration(float(h * 3600 + m * 60 + s), 'sec')
    match = _TIME.match(text)
    number: Optional[float] = None
    if match:
        try:
            number = float(match.group(1))
        except ValueError:
            number = None
    if match is None or number is None or number != number:
        raise ConfigError(f'`{path}` is {text!r}, which is not a duration; write a number and a unit, {hint}')
    unit = match.group(2).lower()
    if unit != 'dur' and not number.is_integer():
        raise ConfigError(f'`{path}` is {text!r}: {unit} counts must be whole numbers ({hint})')
    return Duration(number, unit)


def in_batches(duration: Duration, global_batch: int, seq_len: Optional[int]) -> Optional[float]:
    """The duration in batches where that follows from the config alone (not epochs, not wall clock)."""
    if duration.unit == 'ba':
        return duration.value
    if duration.unit == 'sp':
        return duration.value / global_batch
    if duration.unit == 'tok' and seq_len:
        return duration.value / (global_batch * seq_len)
    return None
