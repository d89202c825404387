"""Stream tokenized MDS samples and batch them for causal-LM pretraining.

Reads three sample layouts:
  * ``tokens`` as ``ndarray:<int dtype>`` (ours: uint16/uint32; llm-foundry: int32). The
    dtype is recorded by the encoding, so it cannot be misread;
  * legacy llm-foundry ``tokens`` as raw ``bytes``: the dtype is not recorded, so it must be
    given as ``token_encoding_type``; we check the result looks like token ids;
  * legacy ``text`` samples, tokenized on the fly (truncated to ``max_seq_len``).

Token ids are checked against the tokenizer's size, so a wrong dtype or a wrong tokenizer is
an error naming the fix rather than garbage training or a device-side assert.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import numpy as np
import torch
from composer.core import DataSpec
from streaming import Stream, StreamingDataset
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from foundry.data.cache_dir import is_remote, run_cache_dir
from foundry.data.collator import TextCollator, num_tokens_in_batch
from foundry.data.errors import DataError
from foundry.data.loader_keys import (STREAM_KEYS, TEXT_DATASET_KEYS, TEXT_LOADER_KEYS,
                                      TOKEN_ENCODING_TYPES, with_defaults)

__all__ = ['StreamingTextDataset', 'build_text_dataloader', 'TEXT_LOADER_KEYS',
           'TEXT_DATASET_KEYS', 'STREAM_KEYS']

log = logging.getLogger(__name__)

# Keys of TEXT_DATASET_KEYS that are ours, not StreamingDataset arguments.
_OWN_DATASET_KEYS = ('streams', 'max_seq_len', 'eos_token_id', 'bos_token_id',
                     'token_encoding_type')


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
        try:
            super().__init__(**kwargs)
        except ValueError as err:
            if 'Reused local directory' in str(err):
                raise DataError(
                    'another dataset (in this process or another job on this machine) already '
                    'uses the same `local` folder for a remote. Give each run its own `local`, '
                    'or omit `local` to get a per-run cache folder.') from err
            raise
        self.max_seq_len = max_seq_len
        self.tokenizer = tokenizer
        self.token_encoding_type = token_encoding_type
        self._vocab_size = len(tokenizer) if tokenizer is not None else None

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, torch.Tensor]:
        sample = super().get_item(sample_id, retry)
        ids = self._token_ids(sample, sample_id)[:self.max_seq_len]
        self._check_range(ids, sample_id)
        return {'input_ids': torch.from_numpy(ids.astype(np.int64))}

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


def build_text_dataloader(loader_cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase,
                          device_batch_size: int) -> DataSpec:
    """Build the per-rank DataLoader for an llm-foundry-style ``train_loader`` section.

    Returns a DataSpec whose batches are dicts of ``[device_batch_size, max_seq_len]`` long
    tensors (``input_ids``, ``labels``, ``attention_mask``, ``sequence_id``; see
    ``TextCollator``), and whose ``get_num_tokens_in_batch`` counts unpadded tokens.
    """
    loader_cfg = _plain(loader_cfg)
    name = loader_cfg.get('name', 'text')
    if name != 'text':
        raise DataError(f"loader name {name!r} is not supported; use name: text.")
    loader = with_defaults({k: v for k, v in loader_cfg.items() if k != 'name'},
                           TEXT_LOADER_KEYS, 'loader')
    if loader['dataset'] is None:
        raise DataError('the loader has no `dataset` section; add dataset: {remote/local, '
                        'split, max_seq_len} or dataset.streams.')
    dataset_cfg = with_defaults(loader['dataset'], TEXT_DATASET_KEYS, 'loader.dataset')
    if dataset_cfg['max_seq_len'] is None:
        raise DataError('loader.dataset.max_seq_len is required (tokens per training sample).')
    if not isinstance(device_batch_size, int) or device_batch_size < 1:
        raise DataError(f'device_batch_size must be a positive integer, got {device_batch_size!r}.')

    streaming_kwargs = {k: v for k, v in dataset_cfg.items() if k not in _OWN_DATASET_KEYS}
    streams = dataset_cfg['streams']
    if streams:
        streaming_kwargs['streams'] = _build_streams(streams, dataset_cfg['split'])
        streaming_kwargs.pop('remote')
        streaming_kwargs.pop('local')
    else:
        remote, local = _resolve_paths(dataset_cfg['remote'], dataset_cfg['local'],
                                       dataset_cfg['split'], 'loader.dataset')
        streaming_kwargs.update(remote=remote, local=local)

    dataset = StreamingTextDataset(max_seq_len=dataset_cfg['max_seq_len'], tokenizer=tokenizer,
                                   token_encoding_type=dataset_cfg['token_encoding_type'],
                                   batch_size=device_batch_size, **streaming_kwargs)

    eos_id, bos_id = dataset_cfg['eos_token_id'], dataset_cfg['bos_token_id']
    if eos_id is not None and bos_id is not None:
        raise DataError('set dataset.eos_token_id or dataset.bos_token_id to mark documents, '
                        'not both.')
    if eos_id is None and bos_id is None:
        eos_id = tokenizer.eos_token_id
        if eos_id is None:
            log.warning('tokenizer has no eos token and dataset.eos_token_id is unset: every '
                        'sample is treated as one document (sequence_id all 0).')
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    collator = TextCollator(dataset_cfg['max_seq_len'], pad_id, eos_token_id=eos_id,
                            bos_token_id=bos_id)

    workers = int(loader['num_workers'])
    dataloader = DataLoader(
        dataset,
        batch_size=device_batch_size,
        collate_fn=collator,
        drop_last=bool(loader['drop_last']),
        num_workers=workers,
        # Pinning only helps host-to-GPU copies; without a GPU torch just warns.
        pin_memory=bool(loader['pin_memory']) and torch.cuda.is_available(),
        # torch rejects these two without worker processes.
        prefetch_factor=loader['prefetch_factor'] if workers > 0 else None,
        persistent_workers=bool(loader['persistent_workers']) if workers > 0 else False,
        timeout=float(loader['timeout']),
    )
    return DataSpec(dataloader, get_num_tokens_in_batch=num_tokens_in_batch)


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
        built.append(Stream(remote=remote, local=local, split=split, **kwargs))
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
        index = os.path.join(local, split or '', 'index.json')
        if not os.path.isfile(index):
            raise DataError(f'{path}: no MDS dataset at {os.path.join(local, split or "")!r} '
                            '(index.json missing). Check local/split, or convert data with '
                            'data_prep/convert_dataset_json.py.')
        return None, local
    if local is None:
        local = run_cache_dir(remote, name)
    return remote, os.path.expanduser(local)


def _plain(cfg: Any) -> dict:
    """A plain dict from a mapping or an OmegaConf DictConfig."""
    try:
        from omegaconf import DictConfig, OmegaConf
        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:
        pass
    if not isinstance(cfg, Mapping):
        raise DataError(f'the loader config must be a mapping, not {type(cfg).__name__}.')
    return dict(cfg)
