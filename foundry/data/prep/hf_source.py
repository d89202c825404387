"""A conversion source for any Hugging Face ``datasets`` dataset, streamed shard by shard.

Kept apart from foundry/data/prep/sources.py because it is the one source that needs the
``datasets`` library (imported only when a conversion uses it).
"""

from __future__ import annotations

import os
from typing import Iterator, Sequence

from foundry.data import objstore
from foundry.data.errors import DataError
from foundry.data.prep.sources import TASK_DOCS, Part, Source, digest

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

    def parts(self) -> list[Part]:
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
        if self.text_field not in columns:
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
