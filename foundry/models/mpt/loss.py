"""Next-token cross-entropy, shared by MPTForCausalLM and the composer wrapper.

Labels arrive aligned with input_ids (the collator copies input_ids and puts -100 on padding), so
position t is scored against labels[t + 1]. We shift the labels, not the logits: slicing logits
would copy a (batch, seq, vocab) tensor, the biggest activation in the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """targets[:, t] = labels[:, t + 1]; the last position has no next token and is ignored."""
    targets = torch.full_like(labels, IGNORE_INDEX)
    targets[:, :-1] = labels[:, 1:]
    return targets


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over every next-token target that is not -100 (computed in fp32)."""
    targets = shift_labels(labels)
    return F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX)
