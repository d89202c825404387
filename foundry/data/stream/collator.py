"""Batch variable-length token samples into the tensors the model trains on.

Padding is tracked by each sample's real length, never by comparing ids with pad_token_id:
for GPT-NeoX pad == eos, so an id comparison would mask real document-ending eos tokens.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch

__all__ = ['TextCollator', 'derive_sequence_id', 'num_tokens_in_batch']

IGNORE_INDEX = -100  # what torch's cross-entropy skips


class TextCollator:
    """Pad ``{'input_ids': LongTensor[n]}`` samples (n <= max_seq_len) to ``max_seq_len``.

    Returns a dict of ``[batch, max_seq_len]`` tensors:
      * ``input_ids`` (long): tokens, padded with ``pad_token_id``;
      * ``attention_mask`` (long): 1 for real tokens, 0 for padding;
      * ``labels`` (long): ``input_ids`` with padding set to -100 (the model shifts them);
      * ``sequence_id`` (long): index of the document each token belongs to within its
        sample (see ``derive_sequence_id``); the model uses it only when
        ``attn_uses_sequence_id`` is set, to stop attention crossing document boundaries.
    """

    def __init__(self, max_seq_len: int, pad_token_id: int, eos_token_id: int | None = None,
                 bos_token_id: int | None = None) -> None:
        if eos_token_id is not None and bos_token_id is not None:
            raise ValueError('give eos_token_id or bos_token_id to mark documents, not both')
        self.max_seq_len = max_seq_len
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        batch = len(examples)
        input_ids = torch.full((batch, self.max_seq_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, self.max_seq_len), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = torch.as_tensor(example['input_ids'], dtype=torch.long)[:self.max_seq_len]
            input_ids[row, :len(ids)] = ids
            attention_mask[row, :len(ids)] = 1
        labels = input_ids.masked_fill(attention_mask == 0, IGNORE_INDEX)
        sequence_id = derive_sequence_id(input_ids, attention_mask, self.eos_token_id,
                                         self.bos_token_id)
        return {'input_ids': input_ids, 'attention_mask': attention_mask, 'labels': labels,
                'sequence_id': sequence_id}


def derive_sequence_id(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       eos_token_id: int | None = None,
                       bos_token_id: int | None = None) -> torch.Tensor:
    """Document index of every token within its sample.

    With ``eos_token_id``: an eos belongs to the document it ends, and the token after it
    starts the next one. With ``bos_token_id``: a bos starts a new document. With neither,
    the whole sample is document 0. Padding gets one id past the last real document, so it
    forms its own (masked) segment and ids stay non-negative for one-hot style consumers.
    """
    real = attention_mask.bool()
    if eos_token_id is not None:
        is_eos = ((input_ids == eos_token_id) & real).long()
        sequence_id = torch.cumsum(is_eos, dim=1) - is_eos  # exclusive: eos stays in its doc
    elif bos_token_id is not None:
        is_bos = ((input_ids == bos_token_id) & real).long()
        sequence_id = torch.cumsum(is_bos, dim=1) - is_bos[:, :1]  # a leading bos is doc 0
    else:
        sequence_id = torch.zeros_like(input_ids)
    last_real = sequence_id.masked_fill(~real, -1).max(dim=1, keepdim=True).values
    return torch.where(real, sequence_id, last_real + 1)


def num_tokens_in_batch(batch: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Token counts Composer uses for throughput and token-based durations.

    ``total`` counts real (unpadded) tokens; ``loss_generating`` counts tokens that have a
    next-token label after the model's shift.
    """
    total = int(batch['attention_mask'].sum())
    loss_generating = int((batch['labels'][:, 1:] != IGNORE_INDEX).sum())
    return {'total': total, 'loss_generating': loss_generating}
