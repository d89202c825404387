"""Finetuning data as MDS: the converter behind data_prep/convert_finetuning_dataset.py.

Each sample holds one tokenized example: ``input_ids`` (``ndarray:uint16`` when the vocabulary
fits, else ``uint32``) and ``turn_lengths`` (``ndarray:int32``, ``[prompt_0, response_0, ...]``).
Labels are not stored: the reader (foundry.data.stream.finetuning.mds) derives them from
``turn_lengths`` with the run's ``target_prompts`` / ``target_responses``, so one conversion
serves every setting.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from foundry.data.errors import DataError
from foundry.data.finetuning.examples import load_preprocessing_fn
from foundry.data.finetuning.sources import iter_raw_examples
from foundry.data.finetuning.tokenize import TokenizeStats, tokenize_examples

__all__ = ['convert_finetuning', 'ConvertSummary', 'COLUMNS']


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
