"""Sizes written as text ('256MB', '1GiB', '4096'), for the converters' flags and the MDS writer."""

from __future__ import annotations

import re

from foundry.data.errors import DataError

__all__ = ['parse_size']


def parse_size(text: str) -> int:
    """'256MB', '1GiB', '4096' -> bytes."""
    match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*', str(text), re.IGNORECASE)
    if not match:
        raise DataError(f'cannot read size {text!r}; write e.g. 256MB or 1GB.')
    number, unit = float(match.group(1)), (match.group(2) or '').lower().rstrip('b')
    scale = {'': 1, 'k': 1e3, 'm': 1e6, 'g': 1e9, 't': 1e12,
             'ki': 1 << 10, 'mi': 1 << 20, 'gi': 1 << 30, 'ti': 1 << 40}[unit]
    value = int(number * scale)
    if value < 1:
        raise DataError(f'size {text!r} must be positive.')
    return value
