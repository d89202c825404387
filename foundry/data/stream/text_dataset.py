"""Stream tokenized MDS samples and batch them for causal-LM pretraining.

Reads three sample layouts:
  * ``tokens`` as ``ndarray:<int dtype>`` (ours: uint16/uint32; llm-foundry: int32). The
    dtype is recorded by the encoding, so it cannot be misread;
  * legacy llm-foundry ``tokens`` as raw ``bytes``: the dtype is not recorded, so it must be
    given as ``token_encoding_type``; we check the result looks like token ids;
  * legacy ``text`` samples, tokenized on the fly (truncated to ``max_seq_len``).

Token ids are checked against the tokenizer's size, so a wrong dtype or a wrong tokenizer is
an error naming the fix rather than garbage training or a device-side assert.

Failure modes turned into one DataError each, naming the path / bucket and key:
  * a local dataset whose shards are missing or do not have the size its index records;
  * a sample that cannot be decoded (corrupt shard);
  * an object-store download that still fails after ``download_retry`` attempts (transient
    errors are retried by streaming), including ones raised in streaming's background
    download thread, which streaming itself reports only as "Background thread failed";
  * a ``local`` folder in use by another live job on this machine.

Runs on one machine never collide in shared memory (see ``shm_guard``), and with shuffling on
``num_canonical_nodes`` defaults to a value that does not depend on the number of nodes (see
``default_canonical_nodes``), so the sample order survives a change of cluster size.

Set ``FOUNDRY_SAMPLE_LOG`` to a folder to record, per process, which sample id (and stream)
each read returned, in order: how tests measure a mixture's real stream shares.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Mapping

import numpy as np
import torch
from streaming import Stream, StreamingDataset
from transformers import PreTrainedTokenizerBase

from foundry.data import objstore
from foundry.data.errors import DataError
from foundry.data.stream import shm_guard
from foundry.data.stream.cache_dir import is_remote, run_cache_dir
from foundry.data.stream.loader_keys import (STREAM_KEYS, TEXT_DATASET_KEYS, TEXT_LOADER_KEYS,
                                             TOKEN_ENCODING_TYPES, with_defaults)
from foundry.data.stream.mds_index import check_local_dataset

__all__ = ['StreamingTextDataset', 'TEXT_LOADER_KEYS', 'TEXT_DATASET_KEYS', 'STREAM_KEYS',
           'FoundryStream', 'default_canonical_nodes']

log = logging.getLogger(__name__)


class FoundryStream(Stream):
    """A streaming Stream whose download failures become one DataError naming bucket and key.

    Transient failures are retried first (streaming's ``download_retry`` attempts with
    backoff). A downloaded shard is also checked against the size its index records.
    """

    def __init__(self, *, name: str = 'dataset', **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.name = name
        self.failure: DataError | None = None
        self.expected_sizes: dict[str, int] = {}

    def _download_file(self, from_basename: str, to_basename: str | None = None) -> str:
        try:
            path = super()._download_file(from_basename, to_basename)
        except Exception as err:
            self.failure = DataError(self._failure_message(from_basename, err))
            raise self.failure from err
        expected = self.expected_sizes.get(from_basename)
        if expected is not None and os.path.getsize(path) != expected:
            size = os.path.getsize(path)
            os.unlink(path)
            self.failure = DataError(
                f'downloaded {self._url(from_basename)} is {size:,} bytes but its index says '
                f'{expected:,}: the remote shard is truncated or the index does not belong to '
                'it. Re-upload the dataset.')
            raise self.failure
        return path

    def _url(self, basename: str) -> str:
        if self.remote is None:
            return os.path.join(self.local, self.split or '', basename)
        return objstore.join(self.remote, *(p for p in (self.split, basename) if p))

    def _failure_message(self, basename: str, err: BaseException) -> str:
        url = self._url(basename)
        if self.remote is None:
            return (f'stream {self.name!r}: {url} is missing and there is no remote to download '
                    'it from; the local dataset is incomplete.')
        attempts = self.download_retry
        reason = f'{type(err).__name__}: {err}'
        if url.startswith('s3://'):
            bucket, _, key = url[len('s3://'):].partition('/')
            cause = err
            while cause is not None and getattr(cause, 'response', None) is None and \
                    cause.__cause__ is not None:
                cause = cause.__cause__
            reason = objstore.describe_s3_error(cause or err, bucket, key)
        return (f'stream {self.name!r}: could not download {url} after {attempts} attempt(s): '
                f'{reason}. Check that the object exists and that credentials and '
                'S3_ENDPOINT_URL are right; raise download_retry/download_timeout for a flaky '
                'store.')


class StreamingTextDataset(StreamingDataset):
    """A StreamingDataset yielding ``{'input_ids': LongTensor[<= max_seq_len]}`` per sample.

    Args:
        max_seq_len: samples longer than this are truncated to it.
        tokenizer: used to tokenize legacy ``text`` samples and to range-check token ids.
        token_encoding_type: numpy dtype name of legacy raw-``bytes`` token columns.
        **kwargs: passed to ``streaming.StreamingDataset``.
    """

    def __init__(self, *, max_seq_len: int, tokenizer: PreTrainedTokenizerBase | None = None,
                 token_encoding_type: str | None = None, **kwargs: Any) -> None:
        if not isinstance(max_seq_len, int) or isinstance(max_seq_len, bool) or max_seq_len < 1:
            raise DataError(f'max_seq_len must be a positive integer, got {max_seq_len!r}.')
        if token_encoding_type is not None and token_encoding_type not in TOKEN_ENCODING_TYPES:
            raise DataError(f'token_encoding_type {token_encoding_type!r} is not an integer '
                            f'dtype; use one of {", ".join(TOKEN_ENCODING_TYPES)}.')
        self._claimed: int | None = None
        if not kwargs.get('streams'):
            # One FoundryStream, so download errors are reported the same way as for mixtures.
            stream_kwargs = {k: kwargs.pop(k) for k in ('remote', 'local') if k in kwargs}
            if stream_kwargs.get('local') is None and stream_kwargs.get('remote') is not None \
                    and is_remote(stream_kwargs['remote']):
                stream_kwargs['local'] = run_cache_dir(stream_kwargs['remote'], 'dataset')
            kwargs['streams'] = [FoundryStream(**stream_kwargs)]
        streams = kwargs['streams']
        leader = int(os.environ.get('LOCAL_RANK', '0')) == 0
        with shm_guard.registration(leader, prepare=lambda: _refresh_stale_caches(
                streams, kwargs.get('split'))):
            if leader:
                # Streaming finds another job's `local` only by scanning prefixes up to its first free
                # one, so a gap left by an ended dataset hides a live job above it: look at all of them
                # for one a live foundry run in another process holds.
                conflict = _local_in_use_error(streams, kwargs.get('split'), other_live_runs_only=True)
                if conflict is not None:
                    raise conflict
            try:
                super().__init__(**kwargs)
            except DataError:
                raise
            except FileNotFoundError as err:
                raise DataError(f'{err}') from err
            except ValueError as err:
                raise _friendly_init_error(err, streams, kwargs.get('split')) from err
            except RuntimeError as err:
                if 'Stream contains no samples' in str(err):
                    raise DataError(f'{err} Convert some data into it first.') from err
                raise
            if leader:
                shm_guard.claim_prefix(self._shm_prefix_int)
                self._claimed = self._shm_prefix_int
        self.max_seq_len = max_seq_len
        self.tokenizer = tokenizer
        self.token_encoding_type = token_encoding_type
        self._vocab_size = len(tokenizer) if tokenizer is not None else None
        self._warned_short = False
        self._trace = None
        for shard, stream_id in zip(self.shards, self.stream_per_shard):
            stream = self.streams[int(stream_id)]
            if isinstance(stream, FoundryStream):
                for raw, zipped in shard.file_pairs:
                    for info in (raw, zipped):
                        if info is not None:
                            stream.expected_sizes[info.basename] = info.bytes
        if self.shuffle and kwargs.get('num_canonical_nodes') is None:
            from streaming.base.world import World
            self.num_canonical_nodes = default_canonical_nodes(
                [int(n) for n in self.samples_per_stream], World.detect().num_nodes)
        self._check_token_dtype()

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, torch.Tensor]:
        try:
            sample = super().get_item(sample_id, retry)
        except DataError:
            raise
        except Exception as err:
            raise self._read_error(sample_id, err) from err
        try:
            ids = self._token_ids(sample, sample_id)[:self.max_seq_len]
        except DataError:
            raise
        except Exception as err:
            raise self._read_error(sample_id, err) from err
        self._check_range(ids, sample_id)
        if not self._warned_short and len(ids) < self.max_seq_len:
            self._warned_short = True
            log.warning('sample %d holds %d tokens but max_seq_len is %d: the rest of each such '
                        'sequence is padding. Convert with --concat_tokens %d to use it.',
                        sample_id, len(ids), self.max_seq_len, self.max_seq_len)
        if os.environ.get('FOUNDRY_SAMPLE_LOG'):
            self._log_sample(sample_id)
        return {'input_ids': torch.from_numpy(ids.astype(np.int64))}

    def __iter__(self):
        try:
            yield from super().__iter__()
        except GeneratorExit:  # closed early (or at interpreter exit): nothing to report
            raise
        except DataError:
            raise
        except RuntimeError as err:
            failure = self._background_failure()
            if failure is not None:
                raise failure from err
            raise
        # streaming ends an epoch early, silently, when a background thread fails: an epoch
        # of 0 samples is then reported as success. Raise what actually happened instead.
        if getattr(self, '_event', None) is not None and self._event.is_set():
            raise self._background_failure() or DataError(
                'streaming stopped this epoch early because a background thread failed (see '
                'the log above).')

    def on_exception(self, future) -> None:
        """Remember what killed a background thread (streaming only logs it)."""
        error = future.exception()
        if error is not None and getattr(self, '_thread_error', None) is None:
            self._thread_error = error
        super().on_exception(future)

    def _background_failure(self) -> DataError | None:
        failure = self._stream_failure()
        if failure is not None:
            return failure
        error = getattr(self, '_thread_error', None)
        if error is None:
            return None
        if isinstance(error, DataError):
            return error
        hint = (' Raise cache_limit (streaming needs room for the shards every worker is '
                'reading ahead).' if 'cache limit' in str(error).lower() else '')
        return DataError(f'streaming\'s background download thread failed: '
                         f'{type(error).__name__}: {str(error).rstrip(".")}.{hint}')

    def __del__(self) -> None:
        try:
            if getattr(self, '_claimed', None) is not None:
                shm_guard.release_prefix(self._claimed)
        except Exception:  # at interpreter exit module globals may already be gone
            pass
        parent = getattr(super(), '__del__', None)
        if parent is not None:
            parent()

    def _stream_failure(self) -> DataError | None:
        for stream in getattr(self, 'streams', []):
            if getattr(stream, 'failure', None) is not None:
                return stream.failure
        return None

    def _read_error(self, sample_id: int, err: BaseException) -> DataError:
        failure = self._background_failure()
        if failure is not None:
            return failure
        try:
            shard_id, index = self.spanner[sample_id]
            stream = self.streams[int(self.stream_per_shard[shard_id])]
            raw = self.shards[shard_id].file_pairs[0][0]
            path = os.path.join(stream.local, stream.split or '', raw.basename)
        except Exception:
            return DataError(f'could not read sample {sample_id}: {type(err).__name__}: {err}')
        return DataError(f'could not read sample {index} of shard {path} (sample id '
                         f'{sample_id}): {type(err).__name__}: {err}. The shard is corrupt or '
                         'does not match its index; re-copy or re-convert the dataset.')

    def _check_token_dtype(self) -> None:
        """Token columns too narrow for the tokenizer were written with another tokenizer."""
        if self._vocab_size is None:
            return
        for shard, stream_id in zip(self.shards, self.stream_per_shard):
            names = list(getattr(shard, 'column_names', []) or [])
            if 'tokens' not in names:
                continue
            encoding = shard.column_encodings[names.index('tokens')]
            parts = encoding.split(':')
            if parts[0] != 'ndarray' or len(parts) < 2 or parts[1] not in TOKEN_ENCODING_TYPES:
                continue
            limit = np.iinfo(np.dtype(parts[1])).max
            if self._vocab_size - 1 > limit:
                stream = self.streams[int(stream_id)]
                where = stream.remote or os.path.join(stream.local, stream.split or '')
                raise DataError(f'stream {getattr(stream, "name", stream_id)!r} ({where}) stores '
                                f'tokens as {parts[1]} (max id {limit:,}) but the tokenizer has '
                                f'{self._vocab_size:,} tokens: the data was converted with a '
                                'different tokenizer. Convert it again with this one.')

    def _log_sample(self, sample_id: int) -> None:
        if self._trace is None or self._trace[0] != os.getpid():
            folder = os.environ['FOUNDRY_SAMPLE_LOG']
            os.makedirs(folder, exist_ok=True)
            name = f'samples.rank{os.environ.get("RANK", "0")}.pid{os.getpid()}.tsv'
            self._trace = (os.getpid(), open(os.path.join(folder, name), 'a', buffering=1))
        shard_id, _ = self.spanner[sample_id]
        stream = self.streams[int(self.stream_per_shard[shard_id])]
        self._trace[1].write(f'{sample_id}\t{getattr(stream, "name", "dataset")}\n')

    def _token_ids(self, sample: Mapping[str, Any], sample_id: int) -> np.ndarray:
        if 'tokens' in sample:
            value = sample['tokens']
            if isinstance(value, np.ndarray):
                if not np.issubdtype(value.dtype, np.integer):
                    raise DataError(f'sample {sample_id}: `tokens` has dtype {value.dtype}, not '
                                    'an integer type; this is not a token dataset.')
                return value.reshape(-1)
            if isinstance(value, (bytes, bytearray, memoryview)):
                return self._decode_bytes(bytes(value), sample_id)
            raise DataError(f'sample {sample_id}: `tokens` is {type(value).__name__}; expected '
                            'an ndarray or raw bytes.')
        if 'text' in sample:
            if self.tokenizer is None:
                raise DataError('this dataset stores raw `text`; pass a tokenizer to tokenize it.')
            encoded = self.tokenizer(sample['text'], truncation=True, max_length=self.max_seq_len)
            return np.asarray(encoded['input_ids'], dtype=np.int64)
        raise DataError(f'sample {sample_id} has columns {sorted(sample)}; expected `tokens` '
                        '(token ids) or `text`. Convert it with data_prep/ first.')

    def _decode_bytes(self, raw: bytes, sample_id: int) -> np.ndarray:
        if self.token_encoding_type is None:
            raise DataError('this dataset stores tokens as raw bytes (older llm-foundry '
                            'format), which do not record their integer type. Set '
                            'dataset.token_encoding_type to the dtype it was written with '
                            "(llm-foundry wrote 'int64' before v0.10 and 'int32' since).")
        dtype = np.dtype(self.token_encoding_type)
        if len(raw) % dtype.itemsize:
            raise DataError(f'sample {sample_id}: {len(raw)} bytes is not a whole number of '
                            f'{dtype.name} tokens, so token_encoding_type={dtype.name!r} is '
                            'wrong for this dataset.')
        ids = np.frombuffer(raw, dtype=dtype)
        # Wider data read as narrower (e.g. int64 read as int32) leaves every other value 0.
        if len(ids) >= 8 and not ids[1::2].any() and ids[0::2].any():
            raise DataError(f'sample {sample_id}: every other token is 0, the signature of '
                            f'data written with a wider dtype than token_encoding_type='
                            f'{dtype.name!r}; set it to the dtype used when writing.')
        return ids

    def _check_range(self, ids: np.ndarray, sample_id: int) -> None:
        if ids.size == 0:
            return
        low, high = int(ids.min()), int(ids.max())
        if low < 0 or (self._vocab_size is not None and high >= self._vocab_size):
            bad = low if low < 0 else high
            hint = (f'token_encoding_type={self.token_encoding_type!r} is probably wrong'
                    if self.token_encoding_type else 'the tokenizer is probably not the one '
                    'the data was converted with')
            vocab = f'0..{self._vocab_size - 1}' if self._vocab_size else 'non-negative ids'
            raise DataError(f'sample {sample_id} holds token id {bad}, outside the tokenizer '
                            f'vocabulary ({vocab}): {hint}.')


# -- defaults and helpers ----------------------------------------------------------------------

# With shuffling on and num_canonical_nodes unset, we use this many canonical nodes: a
# power of two, so the global sample order is the same on 1, 2, 4, ... 128 nodes (and on any
# multiple of 128), i.e. for runs of up to ~1,000 GPUs at 8 per node.
CANONICAL_NODES = 128
# ... but never so many that a canonical node of the smallest stream gets few samples (py1e
# refuses empty canonical nodes, and tiny spans shuffle poorly).
_MIN_SAMPLES_PER_CANONICAL_NODE = 64


def default_canonical_nodes(samples_per_stream: list[int], num_nodes: int) -> int:
    """num_canonical_nodes for a shuffled dataset when the config leaves it unset.

    The value depends only on the data (never on the cluster), so a run that changes its
    number of nodes keeps the same sample order, as long as the node count divides it or is a
    multiple of it. For other node counts (e.g. 3 or 55 nodes) the nearest usable value is
    taken and a warning says that order now depends on the node count.
    """
    cap = max(1, min(samples_per_stream or [1]) // _MIN_SAMPLES_PER_CANONICAL_NODE)
    ncn = 1
    while ncn * 2 <= min(CANONICAL_NODES, cap):
        ncn *= 2
    if ncn % num_nodes == 0 or num_nodes % ncn == 0:
        return ncn
    chosen = num_nodes * max(1, ncn // num_nodes)
    log.warning('num_canonical_nodes is unset and %d nodes do not divide the default %d: using '
                '%d, so the sample order differs from runs on other node counts. Set '
                'train_loader.dataset.num_canonical_nodes to a multiple of every node count you '
                'will use to keep it fixed.', num_nodes, ncn, chosen)
    return chosen


def _refresh_stale_caches(streams: list[Stream], default_split: str | None) -> None:
    """Drop a cached copy whose index no longer matches the remote (run by the local leader).

    streaming reuses ``local/split/index.json`` when present, so a cache left by an earlier
    run of a since re-converted remote would be trained on as if current. Only files named by
    the stale index (and the index) are removed.
    """
    for stream in streams:
        remote = getattr(stream, 'remote', None)
        if not remote or not remote.startswith('s3://') or getattr(stream, 'local', None) is None:
            continue
        split = getattr(stream, 'split', None) or default_split or ''
        local_index = os.path.join(stream.local, split, 'index.json')
        if not os.path.isfile(local_index):
            continue
        try:
            current = objstore.read_bytes(objstore.join(remote, *([split] if split else []),
                                                        'index.json'))
        except (FileNotFoundError, DataError):
            continue  # streaming reports an unreachable remote itself
        with open(local_index, 'rb') as f:
            cached = f.read()
        if cached == current:
            continue
        log.warning('local cache %s holds a different version of %s; removing its stale files',
                    os.path.join(stream.local, split), remote)
        try:
            old = json.loads(cached)
            names = [info['basename'] for shard in old.get('shards', [])
                     for info in (shard.get('raw_data'), shard.get('zip_data')) if info]
        except (ValueError, AttributeError, TypeError):
            names = []
        for name in names:
            path = os.path.join(stream.local, split, name)
            if os.path.isfile(path):
                os.unlink(path)
        os.unlink(local_index)


def _local_in_use_error(streams: list[Stream], default_split: str | None, always: bool = False,
                        other_live_runs_only: bool = False) -> DataError | None:
    """The error for `local` folders another job's shared memory has registered (None: none has)."""
    locals_ = [os.path.abspath(os.path.join(s.local, getattr(s, 'split', None) or
                                            default_split or '')) for s in streams if s.local]
    owners = []
    for prefix in shm_guard.conflicting_prefixes(locals_):
        state = shm_guard.prefix_in_use(prefix)
        if other_live_runs_only and (not state or shm_guard.held_here(prefix)):
            continue
        owners.append(f'shared-memory prefix {prefix:06d} '
                      + ('held by a live foundry run' if state else
                         'not created by foundry (cannot tell whether its owner is alive)'))
    if not owners and not always:
        return None
    return DataError(
        f'another job on this machine is using the same `local` folder ({", ".join(locals_)}'
        f'; {"; ".join(owners) or "owner unknown"}). Give each run its own `local`, or '
        'omit `local` to get a private per-run cache folder.')


def _friendly_init_error(err: ValueError, streams: list[Stream],
                         default_split: str | None) -> Exception:
    text = str(err)
    if 'Reused local directory' in text:
        if ' vs ' not in text:
            return DataError(f'two streams of this dataset use the same local folder ({text}); '
                             'give each stream its own `local`, or omit `local`.')
        return _local_in_use_error(streams, default_split, always=True)
    if 'cache limit' in text.lower() or 'cache_limit' in text:
        return DataError(f'cache_limit is too small: {text}')
    return err


def _build_streams(streams: Any, default_split: str | None) -> list[Stream]:
    if not isinstance(streams, Mapping):
        raise DataError('loader.dataset.streams must map stream names to mappings of remote, '
                        f'local, split, proportion..., not {type(streams).__name__}.')
    built = []
    for name, cfg in streams.items():
        path = f'loader.dataset.streams.{name}'
        cfg = with_defaults(cfg, STREAM_KEYS, path)
        split = cfg['split'] if cfg['split'] is not None else default_split
        remote, local = _resolve_paths(cfg['remote'], cfg['local'], split, path, name)
        set_weights = [k for k in ('proportion', 'repeat', 'choose') if cfg[k] is not None]
        if len(set_weights) > 1:
            raise DataError(f'{path} sets {" and ".join(set_weights)}; set at most one of '
                            'proportion, repeat, choose.')
        kwargs = {k: v for k, v in cfg.items() if k not in ('remote', 'local', 'split')}
        built.append(FoundryStream(name=str(name), remote=remote, local=local, split=split,
                                   **kwargs))
    if not built:
        raise DataError('loader.dataset.streams is empty; add at least one stream.')
    return built


def _resolve_paths(remote: str | None, local: str | None, split: str | None, path: str,
                   name: str = 'dataset') -> tuple[str | None, str]:
    """(remote, local) for streaming: read local folders in place, cache remote URLs per run."""
    if remote is not None and remote.startswith('file://'):
        remote = remote[len('file://'):]
    if remote is not None and not is_remote(remote):
        if local is None or os.path.abspath(local) == os.path.abspath(remote):
            # A local folder named as `remote`: read it where it is instead of copying it.
            remote, local = None, remote
    if remote is None and local is None:
        raise DataError(f'{path} names no data: set `remote` (a URL or folder) and/or `local`.')
    if remote is None:
        local = os.path.expanduser(local)
        try:
            check_local_dataset(os.path.join(local, split or ''))
        except DataError as err:
            raise DataError(f'{path}: {err}') from None
        return None, local
    if local is None:
        local = run_cache_dir(remote, name)
    return remote, os.path.expanduser(local)
