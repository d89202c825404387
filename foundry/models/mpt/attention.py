"""Causal self-attention for MPT: ALiBi, grouped/multi-query heads, qk LayerNorm, qkv clipping.

The mask is built once per forward by `build_attn_bias` (ALiBi + causal + padding + document
boundaries, as one additive float tensor) and handed to every block, which calls torch's
scaled_dot_product_attention with it.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import MPTConfig
from .norms import build_norm

KVCache = tuple[torch.Tensor, torch.Tensor]  # (keys, values), each (batch, kv_heads, seq, head_dim)


def alibi_slopes(n_heads: int, alibi_bias_max: float = 8, device=None) -> torch.Tensor:
    """Per-head ALiBi slopes, shape (n_heads,).

    For a power-of-2 head count n the slopes are 1 / 2^(alibi_bias_max * i / n), i = 1..n (the ALiBi
    paper's geometric sequence, which for the default max 8 starts at 2^(-8/n)). Otherwise MPT
    computes them for the next power of two and keeps the odd-indexed ones first, then the even
    ones, so the slopes still cover the whole range instead of only its steep end.
    """
    n_pow2 = 2 ** math.ceil(math.log2(n_heads))
    exponents = torch.arange(1, n_pow2 + 1, dtype=torch.float32, device=device)
    slopes = 1.0 / torch.pow(2.0, exponents * (alibi_bias_max / n_pow2))
    if n_pow2 != n_heads:
        slopes = torch.cat([slopes[1::2], slopes[::2]])[:n_heads]
    return slopes


def build_attn_bias(
    config: MPTConfig,
    query_len: int,
    past_len: int = 0,
    attention_mask: Optional[torch.Tensor] = None,
    sequence_id: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
) -> torch.Tensor:
    """The additive attention bias, shape (batch or 1, n_heads or 1, query_len, past_len + query_len).

    Allowed (query i, key j) pairs get the ALiBi bias -slope * (i - j) (0 without ALiBi); all others
    get the dtype's most negative finite value rather than -inf, so a query whose keys are all
    masked (a padding position) gets a uniform softmax instead of NaN.

    attention_mask: (batch, past_len + query_len), 1 = real token, 0 = padding (keys to ignore).
    sequence_id: (batch, query_len) document index of each token; tokens attend only within
      their own document. Only used when attn_uses_sequence_id is on.
    """
    key_len = past_len + query_len
    q_pos = torch.arange(past_len, key_len, device=device)
    k_pos = torch.arange(key_len, device=device)
    distance = (q_pos[:, None] - k_pos[None, :])  # (q, k); >= 0 where attention is allowed
    allowed = (distance >= 0)[None, None]  # (1, 1, q, k)

    if attention_mask is not None and not bool(attention_mask.all()):
        allowed = allowed & attention_mask[:, None, None, :].bool()
    if sequence_id is not None and config.attn_config["attn_uses_sequence_id"]:
        if past_len:
            raise ValueError("sequence_id masking is not supported together with a KV cache")
        same_doc = sequence_id[:, :, None] == sequence_id[:, None, :]
        allowed = allowed & same_doc[:, None]

    if config.attn_config["alibi"]:
        slopes = alibi_slopes(config.n_heads, config.attn_config["alibi_bias_max"], device=device)
        bias = -slopes[:, None, None] * distance[None].to(torch.float32)  # (h, q, k)
        bias = bias[None]
    else:
        bias = torch.zeros((1, 1, query_len, key_len), device=device)
    return torch.where(allowed, bias, torch.finfo(dtype).min).to(dtype)


class MPTAttention(nn.Module):
    """Grouped-query self-attention (MHA when kv_n_heads == n_heads, MQA when it is 1).

    Parameter names (Wqkv, out_proj, q_ln, k_ln) match mosaicml/mpt-7b. Wqkv is one fused
    projection whose output is [queries (d_model) | keys (kv_dim) | values (kv_dim)].
    """

    def __init__(self, config: MPTConfig):
        super().__init__()
        a = config.attn_config
        self.n_heads = config.n_heads
        self.kv_n_heads = a["kv_n_heads"]
        self.head_dim = config.head_dim
        self.d_model = config.d_model
        self.kv_dim = self.kv_n_heads * self.head_dim
        self.clip_qkv = a["clip_qkv"]
        self.softmax_scale = a["softmax_scale"] or 1.0 / math.sqrt(self.head_dim)
        self.attn_pdrop = a["attn_pdrop"]

        bias = not config.no_bias
        self.Wqkv = nn.Linear(self.d_model, self.d_model + 2 * self.kv_dim, bias=bias)
        # Row boundaries of q | k | v, so init can treat each part as its own matrix (fan_out).
        self.Wqkv._fused = (0, [self.d_model, self.d_model + self.kv_dim])
        if a["qk_ln"]:
            self.q_ln = build_norm(config.norm_type, self.d_model, config.norm_eps, config.no_bias)
            self.k_ln = build_norm(config.norm_type, self.kv_dim, config.norm_eps, config.no_bias)
        self.out_proj = nn.Linear(self.d_model, self.d_model, bias=bias)
        self.out_proj._is_residual = True  # scaled down at init, it writes into the residual stream

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor,
        layer_past: Optional[KVCache] = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Optional[KVCache]]:
        batch, seq, _ = x.shape
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split([self.d_model, self.kv_dim, self.kv_dim], dim=-1)
        if hasattr(self, "q_ln"):
            # The norm may run in a different dtype (low precision norm); keep q/k in v's dtype.
            q = self.q_ln(q).to(v.dtype)
            k = self.k_ln(k).to(v.dtype)

        q = q.view(batch, seq, self.n_heads, self.head_dim).transpose(1, 2)
        k = k.view(batch, seq, self.kv_n_heads, self.head_dim).transpose(1, 2)
        v = v.view(batch, seq, self.kv_n_heads, self.head_dim).transpose(1, 2)
        if layer_past is not None:
            k = torch.cat([layer_past[0], k], dim=2)
            v = torch.cat([layer_past[1], v], dim=2)
        present = (k, v) if use_cache else None

        if self.kv_n_heads != self.n_heads:
            # Each group of n_heads / kv_n_heads query heads shares one kv head.
            repeats = self.n_heads // self.kv_n_heads
            k = k.repeat_interleave(repeats, dim=1)
            v = v.repeat_interleave(repeats, dim=1)

        out = F.scaled_dot_product_attention(
            q, k, v,
            attn_mask=attn_bias.to(q.dtype),
            dropout_p=self.attn_pdrop if self.training else 0.0,
            scale=self.softmax_scale,
        )
        out = out.transpose(1, 2).reshape(batch, seq, self.d_model)
        return self.out_proj(out), present
