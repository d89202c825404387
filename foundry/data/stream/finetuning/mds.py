"""The streaming reader behind ``dataset.remote/local`` of ``name: finetuning``.

Reads what foundry.data.prep.finetuning.convert writes: one example per sample, ``input_ids`` and
``turn_lengths``; labels come from ``turn_lengths`` with the run's ``target_prompts`` /
``target_responses`` (labels_for), so one conversion serves every setting.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from foundry.data.errors import DataError
from foundry.data.finetuning.tokenize import labels_for

__all__ = ['finetuning_dataset_class']

log = logging.getLogger(__name__)


def finetuning_dataset_class():
    """StreamingFinetuningDataset (built lazily: it subclasses the torch/streaming reader)."""
    from streaming import StreamingDataset

    from foundry.data.stream.text_dataset import StreamingTextDataset

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
