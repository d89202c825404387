"""Write an MDS dataset of one token column, byte for byte as streaming's MDSWriter would.

Conversion only ever writes ``{'tokens': ndarray}`` samples, and importing streaming's writer
imports all of streaming and torch (seconds of start-up on every conversion, more than the
tokenization of a small corpus). This writer produces the identical files (same sample
encoding, same shard cut points, same ``index.json``; checked against MDSWriter by the tests)
with numpy alone, compresses with streaming's own compression code (loaded without the rest
of streaming), and uploads shards to ``s3://`` in background threads as MDSWriter does, with
``index.json`` last.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from foundry.data import objstore
from foundry.data.errors import DataError

__all__ = ['TokenShardWriter', 'compression_module', 'check_compression']

_SHAPE_DTYPES = ((1 << 8, np.uint8, 0), (1 << 16, np.uint16, 1), (1 << 32, np.uint32, 2),
                 (1 << 64, np.uint64, 3))
_compression = None


def compression_module():
    """streaming.base.compression, loaded from its file so that streaming/__init__ (which
    imports torch) is not run; falls back to a normal import."""
    global _compression
    if _compression is not None:
        return _compression
    name = 'streaming.base.compression'
    if name in sys.modules:
        _compression = sys.modules[name]
        return _compression
    try:
        spec = importlib.util.find_spec('streaming')
        path = os.path.join(os.path.dirname(spec.origin), 'base', 'compression.py')
        spec = importlib.util.spec_from_file_location('_foundry_streaming_compression', path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _compression = module
    except Exception:
        import streaming.base.compression as module  # type: ignore[no-redef]
        _compression = module
    return _compression


def check_compression(compression: str | None) -> None:
    """DataError for a compression name streaming does not know (None: no compression)."""
    module = compression_module()
    if compression is not None and not module.is_compression(compression):
        raise DataError(f'unknown compression {compression!r}; choose one of '
                        f'{sorted(module.get_compressions())} or leave it unset.')


def _encode_shape(length: int) -> bytes:
    for limit, dtype, code in _SHAPE_DTYPES:
        if length < limit:
            return bytes([(1 << 2) | code]) + np.array([length], dtype).tobytes()
    raise ValueError(f'sample of {length} tokens is too long')


class TokenShardWriter:
    """MDSWriter(columns={'tokens': f'ndarray:{dtype}'}) for one-dimensional token samples.

    Args:
        out: local folder (created; must be empty) or ``s3://`` prefix.
        dtype: token dtype (an integer numpy dtype).
        compression: streaming compression name ('zstd', 'zstd:7', 'gz', ...) or None.
        size_limit: shard size limit in bytes before compression (None: one shard).
    """

    format = 'mds'

    def __init__(self, out: str, dtype: np.dtype | str, compression: str | None = None,
                 size_limit: int | str | None = 1 << 26) -> None:
        self.dtype = np.dtype(dtype)
        if isinstance(size_limit, str):
            from foundry.data.sizes import parse_size
            size_limit = parse_size(size_limit)
        if size_limit is not None and not 0 < size_limit < 2**32:
            raise DataError(f'size_limit must be between 1 and 2**32 - 1 bytes, got {size_limit}.')
        self.size_limit = size_limit
        self.compression = compression
        self._compressor = None
        if compression:
            check_compression(compression)
            module = compression_module()
            self._extension = module.get_compression_extension(compression)
            self._compress = module.compress
        self.remote = out if objstore.is_url(out) else None
        if self.remote:
            self.local = tempfile.mkdtemp(prefix='foundry-shards-')
            self._uploads: ThreadPoolExecutor | None = ThreadPoolExecutor(max_workers=4)
        else:
            self.local = os.path.expanduser(out)
            if os.path.isdir(self.local) and os.listdir(self.local):
                raise DataError(f'shard folder {self.local} is not empty.')
            os.makedirs(self.local, exist_ok=True)
            self._uploads = None
        self._pending: list[Future] = []
        config = {
            'column_encodings': [f'ndarray:{self.dtype.name}'], 'column_names': ['tokens'],
            'column_sizes': [None], 'compression': compression, 'format': self.format,
            'hashes': [], 'size_limit': size_limit, 'version': 2,
        }
        self.config = config
        self.config_data = json.dumps(config, sort_keys=True).encode('utf-8')
        self.shards: list[dict[str, Any]] = []
        self._samples: list[bytes] = []
        self._shard_size = 8 + len(self.config_data)

    def write(self, tokens: np.ndarray) -> None:
        """Add one sample (a 1-D array of the writer's dtype)."""
        if tokens.dtype != self.dtype:
            raise DataError(f'sample dtype {tokens.dtype} is not the writer dtype {self.dtype}.')
        if tokens.ndim != 1 or tokens.size == 0:
            raise DataError('a token sample must be a non-empty 1-D array.')
        datum = _encode_shape(tokens.size) + tokens.tobytes()
        sample = np.uint32(len(datum)).tobytes() + datum
        size = len(sample) + 4  # plus its offset in the shard header
        if self.size_limit and self.size_limit < self._shard_size + size:
            self._flush()
        self._samples.append(sample)
        self._shard_size += size

    def _flush(self) -> None:
        if not self._samples:
            return
        n = len(self._samples)
        sizes = np.fromiter((len(s) for s in self._samples), np.int64, count=n)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.uint32)
        offsets += np.uint32(4 + 4 * (n + 1) + len(self.config_data))
        raw = b''.join([np.uint32(n).tobytes(), offsets.tobytes(), self.config_data,
                        *self._samples])
        index = len(self.shards)
        raw_name = f'shard.{index:05}.{self.format}'
        raw_info = {'basename': raw_name, 'bytes': len(raw), 'hashes': {}}
        zip_info = None
        data, name = raw, raw_name
        if self.compression:
            data = self._compress(self.compression, raw)
            name = f'{raw_name}.{self._extension}'
            zip_info = {'basename': name, 'bytes': len(data), 'hashes': {}}
        with open(os.path.join(self.local, name), 'wb') as f:
            f.write(data)
        shard = {'samples': n, 'raw_data': raw_info, 'zip_data': zip_info}
        shard.update(self.config)
        self.shards.append(shard)
        self._upload(name)
        self._samples = []
        self._shard_size = 8 + len(self.config_data)

    def _upload(self, name: str) -> None:
        if self._uploads is None:
            return
        path = os.path.join(self.local, name)
        url = objstore.join(self.remote, name)

        def upload() -> None:
            bucket, _, key = url[len('s3://'):].partition('/')
            try:
                objstore.s3_client().upload_file(path, bucket, key)
            except Exception as err:
                raise DataError(f'could not upload {url}: '
                                f'{objstore.describe_s3_error(err, bucket, key)}') from err
            os.unlink(path)

        self._pending.append(self._uploads.submit(upload))

    def finish(self) -> list[dict[str, Any]]:
        """Flush the last shard, wait for uploads, then write ``index.json`` last."""
        self._flush()
        for future in self._pending:
            future.result()  # raises the first upload error
        index = json.dumps({'version': 2, 'shards': self.shards}, sort_keys=True).encode()
        if self.remote:
            objstore.write_bytes(objstore.join(self.remote, 'index.json'), index)
            self._uploads.shutdown(wait=True)
            shutil.rmtree(self.local, ignore_errors=True)
        else:
            with open(os.path.join(self.local, 'index.json'), 'wb') as f:
                f.write(index)
        return self.shards

    def cancel(self) -> None:
        if self._uploads is not None:
            self._uploads.shutdown(wait=False, cancel_futures=True)
            shutil.rmtree(self.local, ignore_errors=True)
