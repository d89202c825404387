"""A conversion source for any Hugging Face ``datasets`` dataset, streamed shard by shard.

Kept apart from foundry/data/prep/sources.py because it is the one source that needs the
``datasets`` library (imported only when a conversion uses it).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from foundry.data import objstore
from foundry.data.errors import DataError
from foundry.data.prep.hf_local import local_split_files
from foundry.data.prep.sources import TASK_DOCS, JsonSource, ParquetSource, Part, Source, digest

__all__ = ['HFSource']


class HFSource(Source):
    """Any ``datasets`` dataset, streamed (never fully downloaded): one part per data shard.

    ``path`` is a hub name (``allenai/c4``), a packaged builder (``json``, ``parquet``,
    ``text``, ``csv``) with ``data_files``, or a local folder of data files.
    """

    kind = 'huggingface'

    def __init__(self, path: str, name: str | None = None, split: str = 'train',
                 text_field: str = 'text', data_files: Sequence[str] | str | None = None,
                 trust_remote_code: bool = False) -> None:
        self.path = path
        self.name = name
        self.split = split
        self.text_field = text_field
        self.data_files = data_files
        self.trust_remote_code = trust_remote_code
        self.description = (f'Hugging Face dataset {path}' + (f' ({name})' if name else '') +
                            f', split {split!r}, field {text_field!r}')

    def identity(self) -> dict:
        return {**super().identity(), 'path': self.path, 'name': self.name, 'split': self.split,
                'text_field': self.text_field, 'data_files': self.data_files}

    def _load(self):
        import datasets

        kwargs = {}
        if self.data_files is not None:
            kwargs['data_files'] = self.data_files
        if self.trust_remote_code:
            kwargs['trust_remote_code'] = True
        try:
            ds = datasets.load_dataset(self.path, self.name, split=self.split, streaming=True,
                                       **kwargs)
        except DataError:
            raise
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise DataError(f'could not load Hugging Face dataset {self.path!r}'
                            + (f' config {self.name!r}' if self.name else '')
                            + f' split {self.split!r}: {type(err).__name__}: {first}') from err
        if isinstance(ds, dict):
            raise DataError(f'{self.path!r} has several splits ({", ".join(ds)}); pass --split.')
        return ds

    def _local_fingerprint(self) -> str:
        roots = [self.path] if os.path.exists(os.path.expanduser(self.path)) else []
        if isinstance(self.data_files, str):
            roots.append(self.data_files)
        elif self.data_files:
            roots.extend(self.data_files)
        items = []
        for root in roots:
            if os.path.exists(os.path.expanduser(root)):
                items.extend((e.path, e.size, e.version) for e in objstore.list_files(root))
        return digest(items)

    def local_files(self) -> tuple[str, list[str]] | None:
        """(json or parquet, the split's files) where the dataset is local JSON/Parquet files read with
        the builder's default options; None otherwise (hub data, scripts, csv/text, options set).

        `datasets` still resolves what the dataset is (its README's configs, data_files patterns,
        the split's files in order), except for the plain layouts hf_local.py reads without
        importing it; the reading is foundry's: its JSON and Parquet readers
        give the same documents in the same order several times faster than datasets' streaming
        iterator, and each file becomes restartable parts like any local input.
        """
        if self.trust_remote_code:
            return None
        found = local_split_files(self.path, self.name, self.split, self.data_files)
        if found is not None:  # a plain local layout: no need to import datasets (hf_local.py)
            return found
        import datasets

        try:
            builder = datasets.load_dataset_builder(self.path, self.name, data_files=self.data_files)
        except Exception:  # whatever it is, the streaming path below reports it
            return None
        config = builder.config
        files = (getattr(config, 'data_files', None) or {}).get(self.split)
        if builder.name not in ('json', 'parquet') or not files or getattr(config, 'features', None) is not None:
            return None
        if any(getattr(config, option, None) is not None for option in ('field', 'columns', 'filters')):
            return None
        files = [str(f) for f in files]
        if any(objstore.is_url(f) or '::' in f or not os.path.isfile(f) for f in files):
            return None
        return builder.name, files

    def parts(self) -> list[Part]:
        local = self.local_files()
        if local is not None:
            kind, files = local
            self._require_field(_first_record_fields(kind, files[0]))
            reader = JsonSource if kind == 'json' else ParquetSource
            return [part for f in files for part in reader(f, self.text_field).parts()]
        ds = self._load()
        self._check_field(ds)
        n = max(int(getattr(ds, 'num_shards', 1) or 1), 1)
        local = self._local_fingerprint()
        parts = []
        for i in range(n):
            parts.append(Part(key=f'{self.path}:{self.name or ""}:{self.split} shard {i}/{n}',
                              fingerprint=digest([self.path, self.name, self.split, i, n,
                                                   local]),
                              size=None, tasks=lambda i=i: self._tasks(i, n)))
        return parts

    def _check_field(self, ds) -> None:
        features = getattr(ds, 'features', None)
        columns = list(features) if features else None
        if columns is None:
            first = next(iter(ds.take(1)), None)
            if first is None:
                raise DataError(f'{self.description}: the split is empty; nothing to convert.')
            columns = list(first)
        self._require_field(columns)

    def _require_field(self, columns: list | None) -> None:
        if columns is not None and self.text_field not in columns:
            raise DataError(f'{self.description}: no field {self.text_field!r} (its fields: '
                            f'{", ".join(map(str, columns[:20])) or "none"}). Pass --text_field '
                            'with the right name (e.g. text or content).')

    def _tasks(self, index: int, num_shards: int) -> Iterator[tuple]:
        ds = self._load()
        if num_shards > 1:
            ds = ds.shard(num_shards=num_shards, index=index)
        try:
            ds = ds.select_columns([self.text_field])
        except Exception:
            pass
        where = f'{self.path} shard {index}/{num_shards}'
        row = 0
        for batch in ds.iter(batch_size=TASK_DOCS):
            texts = batch[self.text_field]
            for i, text in enumerate(texts):
                if not isinstance(text, str):
                    raise DataError(f'{where}: row {row + i}: field {self.text_field!r} is '
                                    f'{type(text).__name__}, not a string.')
            row += len(texts)
            yield ('docs', list(texts), where)


def _first_record_fields(kind: str, path: str) -> list | None:
    """The field names of a local file's first record (None where that takes more than a peek)."""
    import json

    from foundry.data.prep.sources import open_input

    if kind == 'parquet':
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    with open_input(path) as f:
        for line in f:
            if line.strip():
                try:
                    record = json.loads(line)
                except ValueError:  # a JSON array or a bad line: the reader names it
                    return None
                return list(record) if isinstance(record, dict) else None
    return None
