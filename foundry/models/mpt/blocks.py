"""One MPT transformer block: pre-norm attention and pre-norm GELU MLP, each added to the residual.

MPTBlock is also the unit the parallelism layer shards (FSDP) and recomputes (activation
checkpointing); see `fsdp_wrap_fn` / `activation_checkpointing_fn` in modeling.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from .attention import AttentionInputs, MPTAttention
from .configuration import MPTConfig
from .norms import build_norm

if TYPE_CHECKING:
    from transformers import Cache


class MPTMLP(nn.Module):
    """up_proj -> exact GELU -> down_proj (MPT-7B's names and activation)."""

    def __init__(self, config: MPTConfig):
        super().__init__()
        bias = not config.no_bias
        self.up_proj = nn.Linear(config.d_model, config.ffn_hidden_size, bias=bias)
        self.act = nn.GELU(approximate="none")
        self.down_proj = nn.Linear(config.ffn_hidden_size, config.d_model, bias=bias)
        self.down_proj._is_residual = True  # scaled down at init, it writes into the residual stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.up_proj(x)))


class MPTBlock(nn.Module):
    def __init__(self, config: MPTConfig, layer_idx: int = 0):
        super().__init__()
        norm = lambda: build_norm(config.norm_type, config.d_model, config.norm_eps, config.no_bias)  # noqa: E731
        self.norm_1 = norm()
        self.attn = MPTAttention(config, layer_idx)
        self.norm_2 = norm()
        self.ffn = MPTMLP(config)
        self.resid_attn_dropout = nn.Dropout(config.resid_pdrop)
        self.resid_ffn_dropout = nn.Dropout(config.resid_pdrop)

    def forward(self, x: torch.Tensor, attn_inputs: AttentionInputs, cache: Optional["Cache"] = None
                ) -> torch.Tensor:
        x = x + self.resid_attn_dropout(self.attn(self.norm_1(x), attn_inputs, cache))
        x = x + self.resid_ffn_dropout(self.ffn(self.norm_2(x)))
        return x
