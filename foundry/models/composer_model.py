"""ComposerMPTCausalLM: the composer-facing wrapper around MPTForCausalLM.

`self.model` is the MPTForCausalLM, a direct child, because composer looks for `fsdp_wrap_fn`,
`activation_checkpointing_fn` and `param_init_fn` on the direct children of the ComposerModel.

Batches are dicts from the collator: input_ids, attention_mask, labels (a copy of input_ids with
-100 on padding, i.e. *not* shifted) and optionally sequence_id. The shift to next-token targets
happens here, in the loss and the metrics, as in Hugging Face models.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import torch
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import ComposerModel
from torchmetrics import Metric

from .flops import flops_per_sequence, matmul_parameters
from .mpt.configuration import MPTConfig
from .mpt.loss import causal_lm_loss, shift_labels
from .mpt.modeling import MPTForCausalLM


class ComposerMPTCausalLM(ComposerModel):
    def __init__(self, config: MPTConfig, tokenizer: Any = None):
        super().__init__()
        self.config = config
        self.model = MPTForCausalLM(config)
        self.tokenizer = tokenizer
        # Counted once here (meta build) because flops_per_batch runs on every batch.
        self._matmul_params = matmul_parameters(config)
        self.train_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(),
                              "LanguagePerplexity": LanguagePerplexity()}
        self.eval_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(),
                             "LanguagePerplexity": LanguagePerplexity()}

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Logits, (batch, seq, vocab)."""
        out = self.model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            sequence_id=batch.get("sequence_id"),
            use_cache=False,
        )
        return out.logits

    def loss(self, outputs: torch.Tensor, batch: Mapping[str, torch.Tensor], *args, **kwargs) -> torch.Tensor:
        """Mean next-token cross-entropy over every target that is not -100."""
        return causal_lm_loss(outputs, batch["labels"])

    def eval_forward(self, batch: Mapping[str, torch.Tensor], outputs: Optional[torch.Tensor] = None):
        return outputs if outputs is not None else self.forward(batch)

    def update_metric(self, batch: Mapping[str, torch.Tensor], outputs: torch.Tensor, metric: Metric) -> None:
        metric.update(outputs, shift_labels(batch["labels"]))

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics

    def flops_per_batch(self, batch: Mapping[str, torch.Tensor]) -> float:
        """Training FLOPs of one batch (see foundry.models.flops for the formula and N)."""
        batch_size, seq_len = batch["input_ids"].shape[:2]
        return batch_size * flops_per_sequence(self.config, seq_len, n_params=self._matmul_params)

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameters of the model as built (tied tables counted once; local shard if sharded)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)
