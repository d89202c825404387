"""Where documents come from, split into restartable parts.

Every source turns its input into an ordered list of :class:`Part` s. A part is the unit of
restartable work: conversion writes each part as its own MDS sub-dataset and marks it done
only once it is complete, so an interrupted run resumes at the first unfinished part. A part
is a group of small input files, one file, or a line-aligned byte range of a large
uncompressed file, aiming at ``part_bytes`` of input each. Its ``fingerprint`` (sizes and
modification times or ETags) lets a resumed run refuse to mix outputs of changed inputs.

A part yields *tasks* (see ``encode_worker``): batches of about ``TASK_BYTES`` of raw input
that a worker process decodes, parses and tokenizes, so the main process only moves bytes.

Sources: JSON / JSON Lines (also ``.gz`` and ``.zst``, local or ``s3://``), folders of
``.txt`` files (local or ``s3://``), Parquet files, and an in-memory iterable of strings; any
Hugging Face dataset (streamed) in foundry/data/prep/hf_source.py.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from dataclasses import dataclass
from typing import IO, Callable, Iterable, Iterator

from foundry.data import objstore
from foundry.data.errors import DataError
from foundry.data.prep.encode_worker import text_of

__all__ = ['Part', 'Source', 'JsonSource', 'TextSource', 'ParquetSource', 'digest',
           'IterableSource', 'DEFAULT_PART_BYTES', 'TASK_BYTES', 'JSON_SUFFIXES',
           'TEXT_SUFFIXES', 'PARQUET_SUFFIXES']

DEFAULT_PART_BYTES = 256 << 20   # input bytes per restartable part
TASK_BYTES = 1 << 20             # input bytes per worker task
TASK_DOCS = 4096                 # documents per worker task (for sources of decoded strings)
MIN_RANGE_BYTES = 1 << 20        # a large file is split into byte ranges no smaller than this

JSON_SUFFIXES = tuple(base + comp for base in ('.jsonl', '.json', '.ndjson')
                      for comp in ('', '.gz', '.zst', '.zstd'))
TEXT_SUFFIXES = ('.txt',)
PARQUET_SUFFIXES = ('.parquet',)

_GZIP_MAGIC = b'\x1f\x8b'
_ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'


@dataclass
class Part:
    """One restartable unit of input."""
    key: str                                   # stable, human-readable identity
    fingerprint: str                           # changes when the input content may have changed
    size: int | None                           # input bytes, when known (for progress)
    tasks: Callable[[], Iterator[tuple]]       # opens the input lazily and yields tasks


class Source:
    """Base class: ``parts()`` lists the work, ``description`` names it in messages."""
    kind = 'documents'
    description = 'documents'

    def parts(self) -> list[Part]:
        raise NotImplementedError

    def identity(self) -> dict:
        """What the conversion manifest records about this source (a resume must match it)."""
        return {'source': self.kind, 'description': self.description}


# -- helpers ---------------------------------------------------------------------------------

def digest(items: Iterable[object]) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(repr(item).encode())
        h.update(b'\0')
    return h.hexdigest()[:16]


def _input_files(path: str, suffixes: tuple[str, ...], what: str) -> list[objstore.FileEntry]:
    if not objstore.is_url(path) and not os.path.exists(os.path.expanduser(path)):
        raise DataError(f'input path {path!r} does not exist. Pass --path an existing file or '
                        'folder.')
    entries = objstore.list_files(path)
    single = len(entries) == 1 and (entries[0].path == os.path.expanduser(path) or
                                    entries[0].path == path)
    found = [e for e in entries if single or e.path.lower().endswith(suffixes)]
    if not found:
        raise DataError(f'no {what} files ({"/".join(suffixes)}) under {path!r}. Check --path.')
    return found


def _display(path: str, root: str) -> str:
    """How messages name an input file: its full path or URL, so it can be opened as is."""
    return path


class _Prepend(io.RawIOBase):
    """A readable stream that yields ``head`` and then the rest of ``raw``."""

    def __init__(self, head: bytes, raw: IO[bytes]) -> None:
        self._head = head
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head:
            n = min(len(b), len(self._head))
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._raw.read(len(b))
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        try:
            self._raw.close()
        finally:
            super().close()


def open_input(path: str) -> IO[bytes]:
    """A binary stream of the file's content, decompressing gzip and zstd (by magic bytes)."""
    try:
        raw = objstore.open_binary(path)
    except FileNotFoundError:
        raise DataError(f'input file {path} does not exist (it was listed a moment ago).') \
            from None
    head = raw.read(4)
    stream: IO[bytes] = io.BufferedReader(_Prepend(head, raw), buffer_size=1 << 20)
    if head[:2] == _GZIP_MAGIC:
        import gzip
        return gzip.GzipFile(fileobj=stream, mode='rb')  # type: ignore[return-value]
    if head == _ZSTD_MAGIC:
        import zstandard
        reader = zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)
        return io.BufferedReader(reader, buffer_size=1 << 20)  # type: ignore[arg-type]
    return stream


def _is_compressed(path: str) -> bool:
    return path.lower().endswith(('.gz', '.zst', '.zstd'))


# Text compresses about 4x with gzip or zstd, and about as much in Parquet's columns. A part's size
# estimates the text it holds: it decides how many files a part takes and whether a conversion is
# small enough to encode in-process (a 4 MB .json.gz is ~16 MB of text: worker processes pay off).
COMPRESSED_TEXT_RATIO = 4


def _text_bytes(entry: objstore.FileEntry) -> int:
    compressed = _is_compressed(entry.path) or entry.path.lower().endswith(PARQUET_SUFFIXES)
    return max(entry.size, 1) * (COMPRESSED_TEXT_RATIO if compressed else 1)


def _group(units: list[tuple], part_bytes: int, describe: Callable[[list[tuple]], str],
           sizes: Callable[[tuple], int], reader: Callable[[list[tuple]], Iterator[tuple]],
           identity: Callable[[tuple], object]) -> list[Part]:
    """Consecutive units, packed into parts of about ``part_bytes`` input bytes."""
    parts: list[Part] = []
    group: list[tuple] = []
    total = 0

    def close() -> None:
        nonlocal group, total
        if group:
            units_ = group
            parts.append(Part(key=describe(units_), fingerprint=digest(map(identity, units_)),
                              size=total, tasks=lambda: reader(units_)))
        group, total = [], 0

    for unit in units:
        size = sizes(unit)
        if group and total + size > part_bytes:
            close()
        group.append(unit)
        total += size
    close()
    return parts


# -- JSON / JSON Lines -----------------------------------------------------------------------

class JsonSource(Source):
    """JSON Lines (one object per line) or JSON arrays, optionally gzip/zstd compressed.

    Each record's ``text_field`` is one document. Large local uncompressed files are split
    into line-aligned byte ranges (a line belongs to the range holding its first byte), so
    even a single huge file restarts part by part.
    """

    kind = 'json'

    def __init__(self, path: str, text_field: str = 'text',
                 part_bytes: int = DEFAULT_PART_BYTES) -> None:
        if not text_field:
            raise DataError('--text_field must name the field that holds each document.')
        self.path = path
        self.text_field = text_field
        self.part_bytes = max(int(part_bytes), 1)
        self.description = f'JSON records ({text_field!r} field) from {path}'

    def identity(self) -> dict:
        return {**super().identity(), 'text_field': self.text_field}

    def parts(self) -> list[Part]:
        units = []  # (entry, start, end or None)
        for entry in _input_files(self.path, JSON_SUFFIXES, 'JSON / JSON Lines'):
            splittable = (not objstore.is_url(entry.path) and not _is_compressed(entry.path)
                          and not entry.path.lower().endswith('.json'))
            step = max(self.part_bytes, MIN_RANGE_BYTES)
            if splittable and entry.size > step:
                for start in range(0, entry.size, step):
                    units.append((entry, start, min(start + step, entry.size)))
            else:
                units.append((entry, 0, None))

        def describe(group: list[tuple]) -> str:
            entry, start, end = group[0]
            name = _display(entry.path, self.path)
            if end is not None:
                name += f'[{start}:{end}]'
            return name if len(group) == 1 else f'{name} (+{len(group) - 1} more files)'

        return _group(units, self.part_bytes, describe,
                      sizes=lambda u: (u[2] - u[1]) if u[2] is not None else _text_bytes(u[0]),
                      reader=self._tasks,
                      identity=lambda u: (u[0].path, u[0].size, u[0].version, u[1], u[2]))

    def _tasks(self, units: list[tuple]) -> Iterator[tuple]:
        for entry, start, end in units:
            name = _display(entry.path, self.path)
            # Byte ranges exist only for local uncompressed files, which can seek.
            opened = open(entry.path, 'rb') if end is not None else open_input(entry.path)
            with opened as f:
                if start == 0 and end is None and _looks_like_array(f):
                    yield from self._array_tasks(f, name)
                    continue
                yield from _jsonl_tasks(f, entry.path, name, start, end, self.text_field)

    def _array_tasks(self, f: IO[bytes], name: str) -> Iterator[tuple]:
        raw = f.read()
        try:
            text = raw.decode('utf-8')
        except UnicodeDecodeError as err:
            raise DataError(f'{name}: byte {err.start:,}: invalid UTF-8 in a JSON array file; '
                            're-encode it as UTF-8.') from None
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f'{name}:{err.lineno}: invalid JSON ({err.msg}).') from None
        if not isinstance(records, list):
            records = [records]
        docs = [text_of(r, self.text_field, f'{name}: item {i}') for i, r in enumerate(records)]
        for i in range(0, len(docs), TASK_DOCS):
            yield ('docs', docs[i:i + TASK_DOCS], name)


def _looks_like_array(f: IO[bytes]) -> bool:
    head = f.peek(4096)[:4096] if hasattr(f, 'peek') else b''
    return head.lstrip()[:1] == b'['


def _count_lines_before(path: str, offset: int) -> int:
    count = 0
    with open(path, 'rb') as f:
        remaining = offset
        while remaining > 0:
            block = f.read(min(1 << 24, remaining))
            if not block:
                break
            count += block.count(b'\n')
            remaining -= len(block)
    return count


def _jsonl_tasks(f: IO[bytes], path: str, name: str, start: int, end: int | None,
                 text_field: str) -> Iterator[tuple]:
    line = 1
    offset = start
    if start > 0:
        # Skip the line that began before our range; the previous range owns it.
        f.seek(start - 1)
        skipped = f.readline()
        offset = start - 1 + len(skipped)
        line = 1 + _count_lines_before(path, offset)
    remaining = None if end is None else end - offset
    pending = b''
    while True:
        want = TASK_BYTES if remaining is None else min(TASK_BYTES, max(remaining, 0))
        block = f.read(want) if want > 0 else b''
        if remaining is not None:
            remaining -= len(block)
        if not block:
            if end is not None and pending and not pending.endswith(b'\n'):
                pending += f.readline()  # finish the last line we own
            if pending.strip():
                yield ('jsonl', pending, name, line, text_field, offset)
            return
        data = pending + block
        cut = data.rfind(b'\n') + 1
        if cut == 0:
            pending = data
            continue
        chunk, pending = data[:cut], data[cut:]
        yield ('jsonl', chunk, name, line, text_field, offset)
        line += chunk.count(b'\n')
        offset += len(chunk)


def _whole_file_parts(source: 'TextSource | ParquetSource', suffixes: tuple[str, ...],
                      what: str) -> list[Part]:
    """Parts of whole input files, grouped up to ``source.part_bytes`` (files are never split)."""
    units = [(e,) for e in _input_files(source.path, suffixes, what)]

    def describe(group: list[tuple]) -> str:
        name = _display(group[0][0].path, source.path)
        return name if len(group) == 1 else f'{name} (+{len(group) - 1} more files)'

    return _group(units, source.part_bytes, describe, sizes=lambda u: _text_bytes(u[0]),
                  reader=source._tasks, identity=lambda u: (u[0].path, u[0].size, u[0].version))


# -- text files ------------------------------------------------------------------------------

class TextSource(Source):
    """Folders of ``.txt`` files (local or ``s3://``): one document per file, sorted by path."""

    kind = 'text'

    def __init__(self, path: str, part_bytes: int = DEFAULT_PART_BYTES) -> None:
        self.path = path
        self.part_bytes = max(int(part_bytes), 1)
        self.description = f'text files from {path}'

    def parts(self) -> list[Part]:
        return _whole_file_parts(self, TEXT_SUFFIXES, 'text')

    def _tasks(self, units: list[tuple]) -> Iterator[tuple]:
        blobs: list[bytes] = []
        names: list[str] = []
        size = 0
        for (entry,) in units:
            try:
                data = objstore.read_bytes(entry.path)
            except FileNotFoundError:
                raise DataError(f'input file {entry.path} disappeared during conversion.') \
                    from None
            blobs.append(data)
            names.append(_display(entry.path, self.path))
            size += len(data)
            if size >= TASK_BYTES or len(blobs) >= TASK_DOCS:
                yield ('blobs', blobs, names)
                blobs, names, size = [], [], 0
        if blobs:
            yield ('blobs', blobs, names)


# -- Parquet ---------------------------------------------------------------------------------

class ParquetSource(Source):
    """Parquet files (local or ``s3://``); ``text_field`` names the string column."""

    kind = 'parquet'

    def __init__(self, path: str, text_field: str = 'text',
                 part_bytes: int = DEFAULT_PART_BYTES) -> None:
        self.path = path
        self.text_field = text_field
        self.part_bytes = max(int(part_bytes), 1)
        self.description = f'Parquet column {text_field!r} from {path}'

    def identity(self) -> dict:
        return {**super().identity(), 'text_field': self.text_field}

    def parts(self) -> list[Part]:
        return _whole_file_parts(self, PARQUET_SUFFIXES, 'Parquet')

    def _tasks(self, units: list[tuple]) -> Iterator[tuple]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        for (entry,) in units:
            name = _display(entry.path, self.path)
            source = (pa.BufferReader(objstore.read_bytes(entry.path))
                      if objstore.is_url(entry.path) else entry.path)
            try:
                pf = pq.ParquetFile(source)
            except (pa.ArrowInvalid, OSError) as err:
                raise DataError(f'{name}: not a readable Parquet file ({err}).') from None
            columns = pf.schema_arrow.names
            if self.text_field not in columns:
                raise DataError(f'{name}: no column {self.text_field!r} (its columns: '
                                f'{", ".join(columns[:20]) or "none"}). Pass --text_field with '
                                'the right name.')
            row = 0
            for batch in pf.iter_batches(batch_size=TASK_DOCS, columns=[self.text_field]):
                texts = batch.column(0).to_pylist()
                for i, text in enumerate(texts):
                    if not isinstance(text, str):
                        raise DataError(f'{name}: row {row + i}: column {self.text_field!r} is '
                                        f'{type(text).__name__}, not a string.')
                row += len(texts)
                yield ('docs', texts, name)


# -- in-memory ------------------------------------------------------------------------------

class IterableSource(Source):
    """Documents from any iterable of strings, as one part (it cannot be re-opened)."""

    kind = 'iterable'

    def __init__(self, documents: Iterable[str], description: str = 'documents') -> None:
        self._documents = documents
        self.description = description
        self._used = False

    def parts(self) -> list[Part]:
        return [Part(key=self.description, fingerprint='', size=None, tasks=self._tasks)]

    def _tasks(self) -> Iterator[tuple]:
        if self._used:
            raise DataError('an iterable of documents can be converted only once.')
        self._used = True
        it = iter(self._documents)
        n = 0
        while batch := list(itertools.islice(it, TASK_DOCS)):
            yield ('docs', batch, f'documents #{n}..#{n + len(batch) - 1}')
            n += len(batch)


def source_for_path(path: str, text_field: str = 'text',
                    part_bytes: int = DEFAULT_PART_BYTES) -> Source:
    """Pick a file source by extension (used by convert_dataset_json's --path)."""
    lower = path.lower().rstrip('/')
    if lower.endswith(PARQUET_SUFFIXES):
        return ParquetSource(path, text_field, part_bytes)
    if lower.endswith(TEXT_SUFFIXES):
        return TextSource(path, part_bytes)
    return JsonSource(path, text_field, part_bytes)
