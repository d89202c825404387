"""Batch tokenized finetuning examples: one per row (padded) or several per row (packed).

Batches have the pretraining keys (``input_ids``, ``labels``, ``attention_mask``,
``sequence_id``), so the model, Composer's token counting and the document mask need nothing
new. Labels are -100 except on targeted tokens (see tokenize.labels_for) and on every
example's first token: the model predicts token t from tokens before it *in the same example*,
and in a packed row the token before an example's first belongs to another example.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from foundry.data.finetuning.tokenize import IGNORE_INDEX, labels_for
from foundry.data.stream.finetuning.packing import choose_bins

__all__ = ['FinetuningCollator']

log = logging.getLogger(__name__)


class FinetuningCollator:
    """``[{'input_ids', 'turn_lengths'}, ...]`` -> a padded (or packed) batch.

    Args:
        rows: with packing, rows per batch (the device batch size); None: one example per row.
        allow_pad_trimming: cut the batch to its longest row instead of max_seq_len.
    """

    def __init__(self, max_seq_len: int, pad_token_id: int, target_prompts: str | int = 'none',
                 target_responses: str = 'last', rows: int | None = None,
                 allow_pad_trimming: bool = False) -> None:
        self.max_seq_len = max_seq_len
        self.pad_token_id = pad_token_id
        self.target_prompts = target_prompts
        self.target_responses = target_responses
        self.rows = rows
        self.allow_pad_trimming = allow_pad_trimming
        self.waiting: list[Mapping[str, Any]] = []  # examples packed into no row yet
        self._warned = False
        # Running totals for the padding actually trained on (logged by the loader's callers).
        self.real_tokens = 0
        self.slots = 0

    def __call__(self, examples: Sequence[Mapping[str, Any] | None]) -> dict[str, torch.Tensor]:
        examples = [e for e in examples if e is not None]  # dropped over-long MDS samples
        if self.rows is None:
            groups = [[example] for example in examples]
        else:
            items = self.waiting + list(examples)
            lengths = [len(item['input_ids']) for item in items]
            chosen, leftover = choose_bins(lengths, self.rows, self.max_seq_len)
            groups = [[items[i] for i in b] for b in chosen]
            self.waiting = [items[i] for i in leftover]
            if len(self.waiting) > 4 * max(1, len(examples)) and not self._warned:
                self._warned = True
                log.warning('packing: %d examples are waiting for a row (%d read per batch): '
                            'packing_ratio is too high for these lengths, so examples are '
                            'delayed and, at the end, not trained on. Lower it or use auto.',
                            len(self.waiting), len(examples))
        return self._batch(groups)

    def _batch(self, groups: list[list[Mapping[str, Any]]]) -> dict[str, torch.Tensor]:
        width = self.max_seq_len
        if self.allow_pad_trimming:
            width = max([1] + [sum(len(e['input_ids']) for e in g) for g in groups])
        n = len(groups)
        input_ids = np.full((n, width), self.pad_token_id, dtype=np.int64)
        labels = np.full((n, width), IGNORE_INDEX, dtype=np.int64)
        attention_mask = np.zeros((n, width), dtype=np.int64)
        sequence_id = np.zeros((n, width), dtype=np.int64)
        for row, group in enumerate(groups):
            at = 0
            for k, example in enumerate(group):
                ids = np.asarray(example['input_ids'], dtype=np.int64)[:width - at]
                turns = np.asarray(example['turn_lengths'], dtype=np.int64)
                end = at + len(ids)
                input_ids[row, at:end] = ids
                example_labels = labels_for(ids, turns, self.target_prompts, self.target_responses)
                example_labels[0] = IGNORE_INDEX
                labels[row, at:end] = example_labels
                attention_mask[row, at:end] = 1
                sequence_id[row, at:end] = k
                at = end
            sequence_id[row, at:] = len(group)  # padding: its own (masked) segment
            self.real_tokens += at
        self.slots += n * self.max_seq_len
        return {'input_ids': torch.from_numpy(input_ids), 'labels': torch.from_numpy(labels),
                'attention_mask': torch.from_numpy(attention_mask),
                'sequence_id': torch.from_numpy(sequence_id)}
