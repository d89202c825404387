"""Read and check MDS ``index.json`` files, and count the tokens a dataset holds.

Used before training (so a missing or truncated shard is an error naming its path instead of
garbage or a hang in a background thread) and by ``foundry info`` (so a mixture can be sized
in tokens from the index alone, without downloading shards).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from foundry.data import objstore
from foundry.data.errors import DataError

__all__ = ['load_index', 'check_local_dataset', 'IndexStats', 'index_stats', 'dataset_stats',
           'shard_files']

_INT_DTYPES = {'int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64'}


def load_index(path: str) -> dict:
    """The parsed index.json at ``path`` (a file path or URL), or a DataError naming it."""
    try:
        raw = objstore.read_bytes(path)
    except FileNotFoundError:
        raise DataError(f'no MDS index at {path} (index.json missing). Check remote/local/split, '
                        'or convert data with data_prep/convert_dataset_json.py.') from None
    try:
        index = json.loads(raw)
    except ValueError as err:
        raise DataError(f'{path} is not valid JSON ({err}); the index is corrupt or was '
                        'written partially. Re-create the dataset.') from None
    if not isinstance(index, dict) or not isinstance(index.get('shards'), list):
        raise DataError(f'{path} is not an MDS index (no "shards" list).')
    if index.get('version') != 2:
        raise DataError(f'{path} has index version {index.get("version")!r}; streaming reads '
                        'version 2.')
    return index


def shard_files(shard: dict) -> list[tuple[str, int, bool]]:
    """(basename, bytes, is_zip) of each file that makes up a shard."""
    out = []
    for key in ('raw_data', 'zip_data', 'raw_meta', 'zip_meta'):
        info = shard.get(key)
        if info:
            out.append((info['basename'], int(info['bytes']), key.startswith('zip')))
    return out


def check_local_dataset(folder: str) -> dict:
    """Check that every shard the index names is on disk with the size the index records.

    Streaming itself only checks that a shard file exists, so a truncated or overwritten shard
    would be read as garbage (or crash a background thread). A shard may be present raw or,
    for compressed datasets, only compressed (streaming decompresses it on first use).
    """
    index_path = os.path.join(folder, 'index.json')
    if not os.path.isfile(index_path):
        raise DataError(f'no MDS dataset at {folder!r} (index.json missing). Check local/split, '
                        'or convert data with data_prep/convert_dataset_json.py.')
    index = load_index(index_path)
    if not index['shards']:
        raise DataError(f'{index_path} lists no shards: the dataset is empty.')
    missing, wrong = [], []
    for shard in index['shards']:
        raw = shard.get('raw_data') or {}
        zipped = shard.get('zip_data') or {}
        candidates = [(raw.get('basename'), raw.get('bytes')),
                      (zipped.get('basename'), zipped.get('bytes'))]
        candidates = [(b, n) for b, n in candidates if b]
        sizes = []
        for basename, expected in candidates:
            path = os.path.join(folder, basename)
            size = os.path.getsize(path) if os.path.isfile(path) else None
            if size == expected:
                break
            sizes.append((path, size, expected))
        else:
            present = [s for s in sizes if s[1] is not None]
            (wrong if present else missing).append(present[0] if present else sizes[0])
    if missing:
        path = missing[0][0]
        raise DataError(f'{len(missing)} of {len(index["shards"])} shards named by {index_path} '
                        f'are missing, e.g. {path}. The dataset is incomplete (an interrupted '
                        'copy or conversion?); re-copy or re-convert it.')
    if wrong:
        path, size, expected = wrong[0]
        raise DataError(f'shard {path} is {size:,} bytes but {index_path} says {expected:,}: '
                        f'the shard is truncated or corrupt, or the index does not belong to '
                        f'these shards ({len(wrong)} shard(s) affected). Re-copy or re-convert '
                        'the dataset.')
    return index


@dataclass
class IndexStats:
    """Size of an MDS dataset, from its index."""
    samples: int
    tokens: int | None        # None when the index cannot tell (e.g. raw text samples)
    exact: bool               # tokens counted exactly (conversion summary) or estimated
    token_dtype: str | None
    shards: int
    bytes: int


def _shape_bytes(n: int) -> int:
    return 1 if n < (1 << 8) else 2 if n < (1 << 16) else 4 if n < (1 << 32) else 8


def index_stats(index: dict, token_encoding_type: str | None = None) -> IndexStats:
    """Samples and tokens of a dataset from its index alone (no shard is read).

    For a ``tokens`` column the token count follows from the shard sizes: an MDS shard is a
    4-byte sample count, 4-byte offsets, the writer config (JSON) and the samples; a variable
    column adds a 4-byte size per sample; a dynamically shaped 1-D ndarray adds a
    1-byte (ndim | shape dtype) header and its length. The result is exact when every sample of
    a shard has the same length class (all < 256, < 65,536 ... tokens), which holds for
    concatenated token datasets.
    """
    shards = index['shards']
    samples = sum(int(s.get('samples', 0)) for s in shards)
    total_bytes = sum(sum(n for _, n, z in shard_files(s) if not z) or
                      sum(n for _, n, _ in shard_files(s)) for s in shards)
    tokens = 0
    dtype_name = None
    for shard in shards:
        names = shard.get('column_names') or []
        if 'tokens' not in names:
            return IndexStats(samples, None, False, None, len(shards), total_bytes)
        col = names.index('tokens')
        encoding = shard['column_encodings'][col]
        sizes = shard.get('column_sizes') or [None] * len(names)
        n = int(shard['samples'])
        raw = int(shard['raw_data']['bytes'])
        config = {k: shard.get(k) for k in ('version', 'format', 'compression', 'hashes',
                                              'size_limit', 'column_names', 'column_encodings',
                                              'column_sizes')}
        overhead = 4 + 4 * (n + 1) + len(json.dumps(config, sort_keys=True).encode())
        variable = sum(1 for s in sizes if s is None)
        data = raw - overhead - 4 * n * variable
        other = sum(int(s) * n for i, s in enumerate(sizes) if s is not None and i != col)
        data -= other
        parts = encoding.split(':')
        if parts[0] == 'ndarray' and len(parts) >= 2 and parts[1] in _INT_DTYPES:
            dtype = np.dtype(parts[1])
            if len(parts) >= 3:  # static shape
                count = int(np.prod([int(x) for x in parts[2].split(',')])) * n
            else:
                per_sample = data / max(n, 1)
                count = None
                for shape_bytes in (1, 2, 4, 8):
                    tokens_each = (per_sample - 1 - shape_bytes) / dtype.itemsize
                    if tokens_each > 0 and _shape_bytes(round(tokens_each)) == shape_bytes:
                        count = round((data - n * (1 + shape_bytes)) / dtype.itemsize)
                        break
                if count is None:
                    count = max(data // dtype.itemsize, 0)
        elif parts[0] == 'bytes' and token_encoding_type in _INT_DTYPES:
            dtype = np.dtype(token_encoding_type)
            count = data // dtype.itemsize
        else:
            return IndexStats(samples, None, False, None, len(shards), total_bytes)
        dtype_name = dtype.name
        tokens += int(count)
    return IndexStats(samples, tokens, False, dtype_name, len(shards), total_bytes)


def dataset_stats(root: str, split: str | None = None,
                  token_encoding_type: str | None = None) -> IndexStats:
    """Stats of the dataset at ``root/split`` (local folder or URL); exact for our conversions."""
    folder = objstore.join(root, split) if split else root
    index = load_index(objstore.join(folder, 'index.json'))
    stats = index_stats(index, token_encoding_type)
    try:
        manifest = json.loads(objstore.read_bytes(objstore.join(folder, 'conversion.json')))
    except (FileNotFoundError, ValueError, DataError):
        return stats
    summary: Any = manifest.get('summary') if isinstance(manifest, dict) else None
    if manifest.get('complete') and isinstance(summary, dict) and \
            summary.get('samples') == stats.samples:
        stats.tokens = int(summary['tokens'])
        stats.exact = True
    return stats
