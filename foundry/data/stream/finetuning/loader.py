"""``train_loader.name: finetuning``: llm-foundry's finetuning loader keys on foundry's data path.

Data from ``dataset.hf_name`` is read, checked and tokenized once per process when the loader
is built (finetuning sets are small next to pretraining corpora) and sharded across ranks by a
seeded DistributedSampler; MDS from data_prep/convert_finetuning_dataset.py is streamed like
pretraining data (``remote``/``local``), with streaming's resumable sample order.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping

import numpy as np
import torch
from composer.core import DataSpec
from torch.utils.data import DataLoader, Dataset

from foundry.data.errors import DataError
from foundry.data.finetuning.examples import load_preprocessing_fn
from foundry.data.finetuning.sources import describe_source, iter_raw_examples
from foundry.data.finetuning.tokenize import TokenizedExample, TokenizeStats, tokenize_examples
from foundry.data.stream.collator import num_tokens_in_batch
from foundry.data.stream.finetuning.collator import FinetuningCollator
from foundry.data.stream.finetuning.packing import auto_packing_ratio, packing_report
from foundry.data.stream.finetuning.settings import resolve_settings

__all__ = ['build_finetuning_dataloader', 'load_examples', 'ExampleDataset']

log = logging.getLogger(__name__)

_STREAMING_KEYS = ('split', 'shuffle', 'shuffle_seed', 'predownload', 'cache_limit',
                   'download_retry', 'download_timeout', 'num_canonical_nodes', 'shuffle_algo',
                   'shuffle_block_size', 'epoch_size')


class ExampleDataset(Dataset):
    """Tokenized examples in memory, as ``{'input_ids', 'turn_lengths'}`` numpy arrays."""

    def __init__(self, examples: list[TokenizedExample]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        example = self.examples[index]
        return {'input_ids': example.input_ids, 'turn_lengths': example.turn_lengths}


def load_examples(ds: Mapping[str, Any], tokenizer: Any) -> tuple[list[TokenizedExample],
                                                                   TokenizeStats]:
    """Read, check and tokenize every example of ``dataset.hf_name``."""
    stats = TokenizeStats()
    raw = iter_raw_examples(ds['hf_name'], ds['split'], ds['hf_kwargs'])
    examples = list(tokenize_examples(
        raw, tokenizer, max_seq_len=ds['max_seq_len'], overlong=ds['overlong'],
        target_prompts=ds['targets'][0], target_responses=ds['targets'][1],
        preprocessing_fn=load_preprocessing_fn(ds['preprocessing_fn']),
        chat_template=ds['chat_template'], stats=stats))
    if not examples:
        raise DataError(f'{describe_source(ds["hf_name"], ds["split"])} holds no usable examples '
                        f'({stats.summary(ds["max_seq_len"])}).')
    return examples, stats


def build_finetuning_dataloader(loader_cfg: Mapping[str, Any], tokenizer: Any,
                                device_batch_size: int) -> DataSpec:
    """The per-rank DataLoader of a ``name: finetuning`` section: batches of
    ``device_batch_size`` rows of ``input_ids``/``labels``/``attention_mask``/``sequence_id``."""
    from composer.utils import dist

    loader, ds = resolve_settings(loader_cfg)
    if not isinstance(device_batch_size, int) or device_batch_size < 1:
        raise DataError(f'device_batch_size must be a positive integer, got {device_batch_size!r}.')
    max_seq_len = ds['max_seq_len']
    sampler = None
    if ds['hf_name'] is not None:
        examples, stats = load_examples(ds, tokenizer)
        log.info('finetuning data %s: %s', describe_source(ds['hf_name'], ds['split']),
                 stats.summary(max_seq_len))
        if stats.over_long:
            log.warning('finetuning data: %d example(s) longer than max_seq_len %d (%d truncated, '
                        '%d dropped; first: %s); dataset.overlong sets this.', stats.over_long,
                        max_seq_len, stats.truncated, stats.dropped, stats.first_over_long)
        dataset: Any = ExampleDataset(examples)
        lengths = [len(e.input_ids) for e in examples]
        sampler = torch.utils.data.DistributedSampler(
            dataset, num_replicas=dist.get_world_size(), rank=dist.get_global_rank(),
            shuffle=bool(ds['shuffle']), seed=int(ds['shuffle_seed']),
            drop_last=bool(loader['drop_last']))
    else:
        dataset = _streaming_dataset(ds, tokenizer, device_batch_size)
        lengths = None

    ratio = ds['packing_ratio']
    rows = None
    if ratio is not None:
        rows = device_batch_size
        if lengths is None:
            lengths = _sampled_lengths(dataset, max_seq_len)
        auto = ratio == 'auto'
        if auto:
            ratio, _ = auto_packing_ratio(lengths, rows, max_seq_len, seed=int(ds['shuffle_seed']))
        report = packing_report(lengths, rows, max_seq_len, float(ratio), auto)
        for line in report.lines():
            log.info('%s', line)
    per_batch = device_batch_size if rows is None else max(rows, math.ceil(float(ratio) * rows))

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    collator = FinetuningCollator(max_seq_len, pad_id, target_prompts=ds['targets'][0],
                                  target_responses=ds['targets'][1], rows=rows,
                                  allow_pad_trimming=bool(ds['allow_pad_trimming']))
    workers = int(loader['num_workers'])
    dataloader = DataLoader(
        dataset, batch_size=per_batch, sampler=sampler, collate_fn=collator,
        drop_last=bool(loader['drop_last']), num_workers=workers,
        pin_memory=bool(loader['pin_memory']) and torch.cuda.is_available(),
        prefetch_factor=loader['prefetch_factor'] if workers > 0 else None,
        persistent_workers=bool(loader['persistent_workers']) if workers > 0 else False,
        timeout=float(loader['timeout']))
    return DataSpec(dataloader, get_num_tokens_in_batch=num_tokens_in_batch)


def _streaming_dataset(ds: Mapping[str, Any], tokenizer: Any, device_batch_size: int):
    from foundry.data.stream.finetuning.mds import finetuning_dataset_class
    from foundry.data.stream.text_dataset import _resolve_paths

    remote, local = _resolve_paths(ds['remote'], ds['local'], ds['split'], 'loader.dataset')
    kwargs = {k: ds[k] for k in _STREAMING_KEYS if ds[k] is not None}
    cls = finetuning_dataset_class()
    return cls(max_seq_len=ds['max_seq_len'], tokenizer=tokenizer, overlong=ds['overlong'],
               target_prompts=ds['targets'][0], target_responses=ds['targets'][1],
               remote=remote, local=local, batch_size=device_batch_size, **kwargs)


def _sampled_lengths(dataset: Any, max_seq_len: int, limit: int = 4096) -> list[int]:
    """Lengths of (up to ``limit``, evenly spaced) MDS samples, for the packing ratio/report."""
    n = int(dataset.num_samples)
    step = max(1, n // limit)
    lengths = []
    for i in range(0, n, step):
        sample = dataset.get_item(i)
        if sample is not None:
            lengths.append(min(len(sample['input_ids']), max_seq_len))
    return lengths
