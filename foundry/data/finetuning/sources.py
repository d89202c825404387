"""Read raw finetuning examples, each with where it came from (``file:line`` or a row number).

``dataset.hf_name`` may be:
  * a file: ``.jsonl`` (one object per line), ``.json`` (an array, or JSON Lines), ``.parquet``;
  * a folder: ``{split}.jsonl|json|parquet`` in it, else the data files of ``{split}/``, else
    every data file in it (sorted); a folder written by ``datasets.save_to_disk`` is loaded
    with ``datasets``;
  * a ``datasets`` packaged builder (``json``, ``parquet``, ``csv``) with
    ``dataset.hf_kwargs.data_files``, or a hub name: both through ``datasets.load_dataset``.

Our own readers are used for local files so that errors can name the line.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Any, Iterator, Mapping

from foundry.data.errors import DataError

__all__ = ['iter_raw_examples', 'describe_source']

_EXTENSIONS = ('.jsonl', '.json', '.parquet')
_PACKAGED = ('json', 'parquet', 'csv', 'arrow', 'text')


def describe_source(hf_name: str, split: str | None) -> str:
    return f'{hf_name}' + (f' [split {split}]' if split and not os.path.isfile(hf_name) else '')


def iter_raw_examples(hf_name: str, split: str | None,
                      hf_kwargs: Mapping[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """``(where, example)`` for every example of the source, in order."""
    path = os.path.expanduser(hf_name)
    if os.path.isfile(path):
        yield from _iter_file(path)
    elif os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, n)) for n in ('state.json', 'dataset_dict.json')):
            yield from _iter_saved(path, split)
            return
        for file in _folder_files(path, split):
            yield from _iter_file(file)
    else:
        yield from _iter_hf(hf_name, split, dict(hf_kwargs or {}))


def _folder_files(folder: str, split: str | None) -> list[str]:
    if split:
        for ext in _EXTENSIONS:
            candidate = os.path.join(folder, split + ext)
            if os.path.isfile(candidate):
                return [candidate]
        sub = os.path.join(folder, split)
        if os.path.isdir(sub):
            files = _data_files(sub)
            if files:
                return files
    files = _data_files(folder)
    if not files:
        raise DataError(f'dataset.hf_name {folder!r} is a folder with no .jsonl, .json or .parquet '
                        f'files{f" for split {split!r}" if split else ""}; point it at a file or a '
                        'folder of them.')
    return files


def _data_files(folder: str) -> list[str]:
    return sorted(f for ext in _EXTENSIONS for f in glob.glob(os.path.join(folder, '*' + ext)))


def _iter_file(path: str) -> Iterator[tuple[str, Any]]:
    if path.endswith('.parquet'):
        yield from _iter_parquet(path)
        return
    if not path.endswith(('.jsonl', '.json')):
        raise DataError(f'{path}: unsupported file type; finetuning data is .jsonl, .json or '
                        '.parquet.')
    with open(path, encoding='utf-8') as handle:
        head = handle.read(4096).lstrip()
        handle.seek(0)
        if path.endswith('.json') and head.startswith('['):
            try:
                rows = json.load(handle)
            except ValueError as err:
                raise DataError(f'{path}: not valid JSON ({err}).') from err
            for i, row in enumerate(rows):
                yield f'{path} item {i}', row
            return
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise DataError(f'{path}:{number}: not a JSON object ({err.args[0] if err.args else err}); '
                                'JSON Lines files hold one object per line.') from err
            yield f'{path}:{number}', row


def _iter_parquet(path: str) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except Exception as err:
        raise DataError(f'{path}: not a readable Parquet file ({err}).') from err
    row = 0
    for batch in table.iter_batches(batch_size=1024):
        for item in batch.to_pylist():
            yield f'{path} row {row}', item
            row += 1


def _iter_saved(path: str, split: str | None) -> Iterator[tuple[str, Any]]:
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f'{path} has splits {", ".join(ds)}; set dataset.split to one of them.')
        ds = ds[split]
    for i, row in enumerate(ds):
        yield f'{path} row {i}', row


def _iter_hf(name: str, split: str | None, kwargs: dict) -> Iterator[tuple[str, Any]]:
    if name in _PACKAGED and not kwargs.get('data_files'):
        raise DataError(f'dataset.hf_name {name!r} is a datasets builder that needs files: set '
                        'dataset.hf_kwargs.data_files.')
    if os.sep in name.strip('/') and name.count('/') > 1 or name.startswith(('.', '/', '~')):
        raise DataError(f'dataset.hf_name {name!r} does not exist (no such file or folder).')
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or 'train', **kwargs)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f'could not load Hugging Face dataset {name!r} split {split or "train"!r}: '
                        f'{first}') from err
    label = f'{name}' + (f' {kwargs["data_files"]}' if kwargs.get('data_files') else '')
    for i, row in enumerate(ds):
        yield f'{label} [{split or "train"}] row {i}', row
