"""Read documents from text folders and JSON / JSON Lines files (optionally gzipped).

Readers are lazy generators so conversion memory stays flat, and they raise DataError naming
the file and line of a bad record, because "KeyError: 'text'" after an hour of tokenizing
tells nobody which of ten thousand files to fix.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import IO, Iterator

from foundry.data.errors import DataError

__all__ = ['list_files', 'iter_text_documents', 'iter_json_documents', 'TEXT_SUFFIXES',
           'JSON_SUFFIXES']

TEXT_SUFFIXES = ('.txt',)
JSON_SUFFIXES = ('.jsonl', '.json', '.jsonl.gz', '.json.gz')


def list_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """``path`` itself if it is a file, else every file under it ending in ``suffixes``, sorted.

    Sorting makes conversions deterministic: the same folder always gives the same samples.
    """
    path = os.path.expanduser(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise DataError(f'input path {path!r} does not exist. Pass --path an existing file or '
                        'folder.')
    found = []
    for root, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith('.')]  # skip .git and friends
        found.extend(os.path.join(root, f) for f in files
                     if f.endswith(suffixes) and not f.startswith('.'))
    if not found:
        raise DataError(f'no {"/".join(suffixes)} files under {path!r}. Check --path.')
    return sorted(found)


def iter_text_documents(path: str) -> Iterator[str]:
    """One document per ``.txt`` file under ``path`` (or the single file ``path``)."""
    for file in list_files(path, TEXT_SUFFIXES):
        try:
            with open(file, encoding='utf-8') as f:
                yield f.read()
        except UnicodeDecodeError as err:
            raise DataError(f'{file} is not valid UTF-8 ({err.reason} at byte {err.start}). '
                            'Re-encode it as UTF-8 or remove it.') from err


def iter_json_documents(path: str, text_field: str = 'text') -> Iterator[str]:
    """The ``text_field`` of every record in the JSON / JSON Lines files at ``path``.

    A ``.json`` file may hold a JSON array of records or one record per line; ``.jsonl`` holds
    one record per line. Blank lines are skipped.
    """
    for file in list_files(path, JSON_SUFFIXES):
        try:
            with _open_text(file) as f:
                yield from _records(f, file, text_field)
        except UnicodeDecodeError as err:
            raise DataError(f'{file} is not valid UTF-8 ({err.reason}). Re-encode it as UTF-8.') \
                from err
        except (gzip.BadGzipFile, EOFError) as err:
            raise DataError(f'{file} is not a complete gzip file ({err}). Re-create it or '
                            'remove it.') from err


def _open_text(file: str) -> IO[str]:
    with open(file, 'rb') as raw:
        magic = raw.read(2)
    if magic == b'\x1f\x8b':  # gzip, whatever the file is named
        return gzip.open(file, 'rt', encoding='utf-8')
    return open(file, encoding='utf-8')


def _records(f: IO[str], file: str, text_field: str) -> Iterator[str]:
    first = _first_char(f)
    if first == '[':
        try:
            records = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f'{file}:{err.lineno}: invalid JSON ({err.msg}).') from err
        for i, record in enumerate(records):
            yield _text_of(record, text_field, f'{file}: item {i}')
        return
    for lineno, line in enumerate(f, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f'{file}:{lineno}: invalid JSON ({err.msg}); expected one JSON '
                            'object per line (JSON Lines) or a single JSON array.') from err
        yield _text_of(record, text_field, f'{file}:{lineno}')


def _first_char(f: IO[str]) -> str:
    """The first non-space character, leaving the stream at the start."""
    while True:
        chunk = f.read(4096)
        if not chunk:
            char = ''
            break
        stripped = chunk.lstrip()
        if stripped:
            char = stripped[0]
            break
    f.seek(0)
    return char


def _text_of(record: object, text_field: str, where: str) -> str:
    if not isinstance(record, dict):
        raise DataError(f'{where}: expected a JSON object with a {text_field!r} field, got '
                        f'{type(record).__name__}.')
    if text_field not in record:
        fields = ', '.join(sorted(map(str, record))[:10]) or 'none'
        raise DataError(f'{where}: record has no {text_field!r} field (its fields: {fields}). '
                        'Pass --text_field with the right name, or fix the record.')
    text = record[text_field]
    if not isinstance(text, str):
        raise DataError(f'{where}: field {text_field!r} is {type(text).__name__}, not a string.')
    return text
