"""Documents of a source, decoded and parsed but not tokenized (for inspection and tests).

The converters read inputs through ``foundry.data.prep.sources``; these helpers iterate the very same
documents in this process, with the same rules: sorted recursive file lists, JSON / JSON Lines
(also gzip/zstd), ``file:line`` in every error about a record, invalid UTF-8 replaced by U+FFFD
(``strict_utf8=True`` raises instead, naming file and byte offset).
"""

from __future__ import annotations

from typing import Iterator

from foundry.data.prep.encode_worker import parse_task
from foundry.data.prep.sources import JsonSource, Source, TextSource

__all__ = ['iter_documents', 'iter_text_documents', 'iter_json_documents']


def iter_documents(source: Source, strict_utf8: bool = False) -> Iterator[str]:
    """Every document of ``source``, in conversion order."""
    for part in source.parts():
        for task in part.tasks():
            yield from parse_task(task, strict_utf8)[0]


def iter_text_documents(path: str, strict_utf8: bool = False) -> Iterator[str]:
    """One document per ``.txt`` file under ``path`` (or the single file ``path``)."""
    return iter_documents(TextSource(path), strict_utf8)


def iter_json_documents(path: str, text_field: str = 'text',
                        strict_utf8: bool = False) -> Iterator[str]:
    """The ``text_field`` of every record in the JSON / JSON Lines files at ``path``."""
    return iter_documents(JsonSource(path, text_field), strict_utf8)
