"""ComposerMPTCausalLM: the composer-facing wrapper around MPTForCausalLM.

`self.model` is the MPTForCausalLM, a direct child, because composer looks for `fsdp_wrap_fn`,
`activation_checkpointing_fn` and `param_init_fn` on the direct children of the ComposerModel.

Batches are dicts from the collator: input_ids, attention_mask, labels (a copy of input_ids with
-100 on padding, i.e. *not* shifted) and optionally sequence_id. The shift to next-token targets
happens here, in the loss and the metrics, as in Hugging Face models.

`loss_fn` (`model.loss_fn` in the YAML): 'torch_crossentropy' makes forward return the logits and
`loss` score them; 'chunked_crossentropy' makes forward compute the loss inside the model from the
hidden states (foundry.models.mpt.loss), so full-vocabulary logits never exist in training.
('fused_crossentropy', llm-foundry's flash-attn Triton kernel, runs as chunked_crossentropy.)

Training metrics are off by default: Composer would otherwise run `update_metric` on every
micro-batch, recomputing the cross-entropy (and perplexity) over the full logits twice, while
the loss it already logs (`loss/train/total`) is that same cross-entropy. Eval metrics are on.
"""

from __future__ import annotations

import contextlib
from typing import Any, Mapping, Optional

import torch
from composer.metrics.nlp import LanguageCrossEntropy, LanguagePerplexity
from composer.models import ComposerModel
from torchmetrics import Metric

from .flops import flops_per_sequence, matmul_parameters
from .mpt.configuration import MPTConfig
from .mpt.loss import DEFAULT_LOSS_FN, LOSS_FNS, causal_lm_loss, shift_labels
from .mpt.modeling import MPTForCausalLM



class ComposerMPTCausalLM(ComposerModel):
    def __init__(self, config: MPTConfig, tokenizer: Any = None, loss_fn: str = DEFAULT_LOSS_FN,
                 use_train_metrics: bool = False):
        super().__init__()
        if loss_fn not in LOSS_FNS:
            raise ValueError(f"model.loss_fn must be one of {LOSS_FNS}, got {loss_fn!r}")
        self.config = config
        self.model = MPTForCausalLM(config)
        self.model.loss_fn = "torch_crossentropy" if loss_fn == "torch_crossentropy" else "chunked_crossentropy"
        # Set by the trainer for precision amp_bf16 on CPU (Composer refuses AMP there): forward runs
        # under torch.autocast("cpu", this dtype). None = whatever precision context Composer sets.
        self.cpu_autocast_dtype: Optional[torch.dtype] = None
        self.tokenizer = tokenizer
        # Counted once here (meta build) because flops_per_batch runs on every batch.
        self._matmul_params = matmul_parameters(config)
        self.train_metrics = ({"LanguageCrossEntropy": LanguageCrossEntropy(),
                               "LanguagePerplexity": LanguagePerplexity()} if use_train_metrics else {})
        self.eval_metrics = {"LanguageCrossEntropy": LanguageCrossEntropy(),
                             "LanguagePerplexity": LanguagePerplexity()}

    @property
    def loss_fn(self) -> str:
        return self.model.loss_fn

    def forward(self, batch: Mapping[str, torch.Tensor]) -> Any:
        """Logits (batch, seq, vocab); with the chunked loss, the model output carrying the loss.

        The attention mask is not passed: the collator pads on the right, so for every real query
        the causal mask already hides every padding key, and passing it would only cost a per-batch
        attention mask (and, on a GPU, a host sync to find out whether there is any padding).
        Padding positions have -100 labels, so their outputs score nothing.
        """
        chunked = self.model.loss_fn == "chunked_crossentropy"
        with self._autocast(batch["input_ids"]):
            out = self.model(
                input_ids=batch["input_ids"],
                sequence_id=batch.get("sequence_id"),
                labels=batch["labels"] if chunked else None,
                use_cache=False,
            )
        return out if chunked else out.logits

    def loss(self, outputs: Any, batch: Mapping[str, torch.Tensor], *args, **kwargs) -> torch.Tensor:
        """Mean next-token cross-entropy over every target that is not -100."""
        if isinstance(outputs, torch.Tensor):
            return causal_lm_loss(outputs, batch["labels"])
        return outputs.loss  # computed in forward (chunked_crossentropy)

    def eval_forward(self, batch: Mapping[str, torch.Tensor], outputs: Optional[Any] = None) -> torch.Tensor:
        """Logits for the metrics (recomputed when training used the chunked loss, which has none)."""
        if isinstance(outputs, torch.Tensor):
            return outputs
        with self._autocast(batch["input_ids"]):
            out = self.model(input_ids=batch["input_ids"], sequence_id=batch.get("sequence_id"), use_cache=False)
        return out.logits

    def _autocast(self, input_ids: torch.Tensor):
        if self.cpu_autocast_dtype is None or input_ids.device.type != "cpu":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=self.cpu_autocast_dtype)

    def update_metric(self, batch: Mapping[str, torch.Tensor], outputs: torch.Tensor, metric: Metric) -> None:
        metric.update(outputs, shift_labels(batch["labels"]))

    def get_metrics(self, is_train: bool = False) -> dict[str, Metric]:
        return self.train_metrics if is_train else self.eval_metrics

    def flops_per_batch(self, batch: Mapping[str, torch.Tensor]) -> float:
        """Training FLOPs of one batch (see foundry.models.flops for the formula and N)."""
        batch_size, seq_len = batch["input_ids"].shape[:2]
        return batch_size * flops_per_sequence(self.config, seq_len, n_params=self._matmul_params)

    def hardware_flops_per_batch(self, batch: Mapping[str, torch.Tensor], recomputed_blocks: int) -> float:
        """FLOPs the hardware runs, counting forwards recomputed by activation checkpointing.

        llm-foundry's HFU counts 4 passes instead of 3 with activation checkpointing; with only
        `recomputed_blocks` of n_layers recomputed we count 3 + recomputed_blocks / n_layers.
        """
        passes = 3 + recomputed_blocks / self.config.n_layers
        return self.flops_per_batch(batch) * passes / 3

    def recomputed_blocks(self) -> int:
        """Blocks whose forward runs twice per step: ours (ac_every_n_blocks) or wrapped by FSDP's AC."""
        own = self.model.transformer.checkpointed_blocks()
        if own:
            return own
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper

        return sum(isinstance(m, CheckpointWrapper) for m in self.model.modules())

    def num_params(self, trainable_only: bool = False) -> int:
        """Parameters of the model as built (tied tables counted once; local shard if sharded)."""
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad or not trainable_only)
