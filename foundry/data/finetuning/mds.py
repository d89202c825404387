"""Finetuning data as MDS: the converter behind data_prep/convert_finetuning_dataset.py, and
the streaming reader behind ``dataset.remote/local`` of ``name: finetuning``.

Each sample holds one tokenized example: ``input_ids`` (``ndarray:uint16`` when the vocabulary
fits, else ``uint32``) and ``turn_lengths`` (``ndarray:int32``, ``[prompt_0, response_0, ...]``).
Labels are not stored: the reader derives them from ``turn_lengths`` with the run's
``target_prompts`` / ``target_responses``, so one conversion serves every setting.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from foundry.data.errors import DataError
from foundry.data.finetuning.tokenize import TokenizeStats, labels_for, tokenize_examples
from foundry.data.finetuning.sources import iter_raw_examples
from foundry.data.finetuning.examples import load_preprocessing_fn

__all__ = ['convert_finetuning', 'ConvertSummary', 'COLUMNS']

log = logging.getLogger(__name__)


def COLUMNS(vocab_size: int) -> dict[str, str]:
    dtype = 'uint16' if vocab_size <= 65536 else 'uint32'
    return {'input_ids': f'ndarray:{dtype}', 'turn_lengths': 'ndarray:int32'}


@dataclass
class ConvertSummary:
    out: str
    stats: TokenizeStats
    tokens: int
    seconds: float

    def lines(self, max_seq_len: int) -> list[str]:
        return [f'wrote {self.stats.kept:,} examples ({self.tokens:,} tokens) to {self.out} in '
                f'{self.seconds:.1f}s', f'  {self.stats.summary(max_seq_len)}']


def convert_finetuning(hf_name: str, out: str, tokenizer: Any, *, split: str | None = 'train',
                       max_seq_len: int, overlong: str = 'truncate', hf_kwargs: dict | None = None,
                       preprocessing_fn: str | None = None, chat_template: str | None = None,
                       compression: str | None = None) -> ConvertSummary:
    """Tokenize a finetuning source and write it as MDS to ``out`` (a folder or ``s3://...``).

    Nothing is written where the conversion fails (the writer is only opened once the first
    example tokenized, and a failure removes a local output folder this call created).
    """
    from streaming import MDSWriter

    start = time.time()
    stats = TokenizeStats()
    examples = tokenize_examples(
        iter_raw_examples(hf_name, split, hf_kwargs), tokenizer, max_seq_len=max_seq_len,
        overlong=overlong, preprocessing_fn=load_preprocessing_fn(preprocessing_fn),
        chat_template=chat_template, stats=stats)
    columns = COLUMNS(len(tokenizer))
    dtype = np.dtype(columns['input_ids'].split(':')[1])
    created = None if out.startswith('s3://') else _first_missing_folder(out)
    if not out.startswith('s3://') and os.path.isdir(out) and os.listdir(out):
        raise DataError(f'{out} is not empty; convert into a new folder (or remove it).')
    tokens = 0
    try:
        with MDSWriter(out=out, columns=columns, compression=compression,
                       size_limit=1 << 26) as writer:
            for example in examples:
                writer.write({'input_ids': example.input_ids.astype(dtype),
                              'turn_lengths': example.turn_lengths.astype(np.int32)})
                tokens += len(example.input_ids)
    except BaseException:
        if created:
            import shutil
            shutil.rmtree(created, ignore_errors=True)
        raise
    if stats.kept == 0:
        raise DataError(f'{hf_name} holds no usable examples ({stats.summary(max_seq_len)}).')
    return ConvertSummary(out=out, stats=stats, tokens=tokens, seconds=time.time() - start)


def _first_missing_folder(path: str) -> str | None:
    """The outermost folder on the way to ``path`` that does not exist yet (removed on failure)."""
    path = os.path.abspath(path)
    missing = None
    while not os.path.exists(path):
        missing, path = path, os.path.dirname(path)
    return missing


def finetuning_dataset_class():
    """StreamingFinetuningDataset (built lazily: it subclasses the torch/streaming reader)."""
    from streaming import StreamingDataset

    from foundry.data.text_dataset import StreamingTextDataset

    class StreamingFinetuningDataset(StreamingTextDataset):
        """MDS finetuning samples -> ``{'input_ids', 'turn_lengths'}``; over-long ones handled
        as ``overlong`` says (a dropped sample is returned as None and skipped by the collator).
        """

        def __init__(self, *, overlong: str = 'truncate', target_prompts='none',
                     target_responses='last', **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.overlong = overlong
            self.targets = (target_prompts, target_responses)
            self.over_long = 0

        def get_item(self, sample_id: int, retry: int = 7):
            try:
                sample = StreamingDataset.get_item(self, sample_id, retry)
            except DataError:
                raise
            except Exception as err:
                raise self._read_error(sample_id, err) from err
            if 'input_ids' not in sample or 'turn_lengths' not in sample:
                raise DataError(f'sample {sample_id} has columns {sorted(sample)}; a finetuning '
                                'dataset has input_ids and turn_lengths: convert it with '
                                'data_prep/convert_finetuning_dataset.py (pretraining MDS uses '
                                'name: text).')
            ids = np.asarray(sample['input_ids']).astype(np.int64).reshape(-1)
            turns = np.asarray(sample['turn_lengths']).astype(np.int64).reshape(-1)
            self._check_range(ids, sample_id)
            if len(ids) > self.max_seq_len:
                self.over_long += 1
                if self.over_long == 1:
                    log.warning('finetuning sample %d is %d tokens, over max_seq_len %d: handled '
                                'as dataset.overlong=%s (counted per rank)', sample_id, len(ids),
                                self.max_seq_len, self.overlong)
                if self.overlong == 'error':
                    raise DataError(f'sample {sample_id} is {len(ids)} tokens, longer than '
                                    f'max_seq_len {self.max_seq_len}; convert with --max_seq_len '
                                    'or set dataset.overlong: truncate or drop.')
                if self.overlong == 'drop':
                    return None
                ids, turns = _cut(ids, turns, self.max_seq_len)
                if (labels_for(ids, turns, *self.targets) == -100).all():
                    return None
            return {'input_ids': ids, 'turn_lengths': turns}

    return StreamingFinetuningDataset


def _cut(ids: np.ndarray, turns: np.ndarray, max_seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    left, out = max_seq_len, []
    for n in turns:
        out.append(min(int(n), left))
        left -= out[-1]
    return ids[:max_seq_len], np.array(out, dtype=np.int64)
