"""``train_loader`` / ``eval_loader`` sections -> a per-rank DataLoader (Composer DataSpec).

``name: text`` streams StreamingTextDataset samples through TextCollator; ``name: finetuning``
goes to foundry.data.stream.finetuning.loader. Its own module (not text_dataset.py) because the
finetuning reader subclasses StreamingTextDataset: the dataset module cannot also import it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping

import torch
from composer.core import DataSpec
from torch.utils.data import DataLoader
from transformers import PreTrainedTokenizerBase

from foundry.data.errors import DataError
from foundry.data.stream.collator import TextCollator, num_tokens_in_batch
from foundry.data.stream.loader_keys import TEXT_DATASET_KEYS, TEXT_LOADER_KEYS, with_defaults
from foundry.data.stream.text_dataset import StreamingTextDataset, _build_streams, _resolve_paths

__all__ = ['build_text_dataloader']

log = logging.getLogger(__name__)

# Keys of TEXT_DATASET_KEYS that are ours, not StreamingDataset arguments.
_OWN_DATASET_KEYS = ('streams', 'max_seq_len', 'eos_token_id', 'bos_token_id',
                     'token_encoding_type')


def build_text_dataloader(loader_cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase,
                          device_batch_size: int) -> DataSpec:
    """Build the per-rank DataLoader for an llm-foundry-style ``train_loader`` section.

    Returns a DataSpec whose batches are dicts of ``[device_batch_size, max_seq_len]`` long
    tensors (``input_ids``, ``labels``, ``attention_mask``, ``sequence_id``; see
    ``TextCollator``), and whose ``get_num_tokens_in_batch`` counts unpadded tokens.
    """
    loader_cfg = _plain(loader_cfg)
    name = loader_cfg.get('name', 'text')
    if name == 'finetuning':
        from foundry.data.stream.finetuning.loader import build_finetuning_dataloader

        return build_finetuning_dataloader(loader_cfg, tokenizer, device_batch_size)
    if name != 'text':
        raise DataError(f"loader name {name!r} is not supported; use name: text or finetuning.")
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
