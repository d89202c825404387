"""Causal self-attention for MPT: ALiBi, grouped/multi-query heads, qk LayerNorm, qkv clipping.

Three kernels, picked by `attn_config.attn_impl`; all compute softmax(QK^T * scale + alibi + mask) V
with causal masking, and document masking when `attn_uses_sequence_id` is set:

- `torch`: PyTorch's scaled_dot_product_attention (the CPU path). Without document masks or
  padding, every batch shares one (1, heads, q, k) additive ALiBi + causal bias, built once per
  (length, device, dtype) and cached on the model; SDPA broadcasts it over the batch, so no
  (batch, heads, seq, seq) tensor exists. Without ALiBi it calls SDPA with is_causal and no mask.
  Only document masking or left padding builds a per-batch mask.
- `flex`: torch.nn.attention.flex_attention, ALiBi as a score_mod and causal + same-document +
  padding as a BlockMask, so no bias tensor is ever materialised on GPU, where it runs compiled.
  On CPU it runs eagerly (torch 2.7's inductor cannot compile it there), through flex's reference
  implementation, which does materialise the scores. Newer torch (2.11 here) refuses CPU inputs
  that need gradients, eager or compiled, so on CPU with gradients on, wherever this torch's flex
  cannot train (`flex_trains_on_cpu`), the attention runs the `torch` path instead: SDPA with the
  same ALiBi, causal, document and padding masks, exact to fp32 rounding. Forward passes without
  gradients (evaluation, generation) still run flex.
- `flash`: flash-attn 2's kernel with its native ALiBi slopes (CUDA, fp16/bf16 only); document
  masks go through its variable-length kernel. Needs the `flash-attn` package.

`MPTModel` calls `prepare_attention` once per forward and hands the result to every block.
The KV cache is a transformers `Cache` (e.g. `DynamicCache`): each layer appends its keys and
values with `cache.update(k, v, layer_idx)` and attends over everything it returns.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import QK_LN_EPS, QK_LN_NORM_TYPE, MPTConfig
from .norms import build_norm

if TYPE_CHECKING:
    from transformers import Cache

ATTN_IMPLS = ("torch", "flex", "flash")


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


def needs_padding_mask(attention_mask: Optional[torch.Tensor]) -> bool:
    """Whether `attention_mask` (1 = real token) must be applied as a key mask.

    On CPU we look (no device to wait for). On an accelerator, looking would be a host-device
    sync on every forward, so a mask that was passed is applied without looking.
    """
    if attention_mask is None:
        return False
    if attention_mask.device.type == "cpu":
        return not bool(attention_mask.all())
    return True


def _shared_bias(config: MPTConfig, query_len: int, past_len: int, dtype, device) -> torch.Tensor:
    """ALiBi + causal as one additive bias, (1, heads, q, k), or (1, 1, q, k) without ALiBi."""
    key_len = past_len + query_len
    q_pos = torch.arange(past_len, key_len, device=device)
    k_pos = torch.arange(key_len, device=device)
    distance = q_pos[:, None] - k_pos[None, :]  # (q, k); >= 0 where attention is allowed
    if config.attn_config["alibi"]:
        slopes = alibi_slopes(config.n_heads, config.attn_config["alibi_bias_max"], device=device)
        bias = -slopes[:, None, None] * distance[None].to(torch.float32)  # (h, q, k)
    else:
        bias = torch.zeros((1, query_len, key_len), device=device)
    bias = bias.masked_fill(distance < 0, torch.finfo(dtype).min).to(dtype)
    return bias[None]


def _allowed_pairs(config: MPTConfig, query_len: int, past_len: int,
                   attention_mask: Optional[torch.Tensor], sequence_id: Optional[torch.Tensor]
                   ) -> Optional[torch.Tensor]:
    """Per-batch (batch, 1, q, k) boolean mask of the pairs padding/documents allow, or None."""
    allowed = None
    if needs_padding_mask(attention_mask):
        allowed = attention_mask[:, None, None, :].bool()
    if sequence_id is not None and config.attn_config["attn_uses_sequence_id"]:
        if past_len:
            raise ValueError("sequence_id masking is not supported together with a KV cache")
        same_doc = (sequence_id[:, :, None] == sequence_id[:, None, :])[:, None]
        allowed = same_doc if allowed is None else allowed & same_doc
    return allowed


def build_attn_bias(
    config: MPTConfig,
    query_len: int,
    past_len: int = 0,
    attention_mask: Optional[torch.Tensor] = None,
    sequence_id: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
    shared: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The additive attention bias, shape (batch or 1, n_heads or 1, query_len, past_len + query_len).

    Allowed (query i, key j) pairs get the ALiBi bias -slope * (i - j) (0 without ALiBi); all others
    get the dtype's most negative finite value rather than -inf, so a query whose keys are all
    masked (a padding position) gets a uniform softmax instead of NaN.

    attention_mask: (batch, past_len + query_len), 1 = real token, 0 = padding (keys to ignore).
    sequence_id: (batch, query_len) document index of each token; tokens attend only within
      their own document. Only used when attn_uses_sequence_id is on.
    shared: the batch-independent part (ALiBi + causal) if the caller has it cached.

    The batch dimension is 1 unless padding or document masking needs a per-batch mask.
    """
    if shared is None:
        shared = _shared_bias(config, query_len, past_len, dtype, device)
    allowed = _allowed_pairs(config, query_len, past_len, attention_mask, sequence_id)
    if allowed is None:
        return shared
    return shared.masked_fill(~allowed, torch.finfo(dtype).min)


@dataclass
class AttentionInputs:
    """Everything the blocks' attention needs for one forward, computed once by `prepare_attention`.

    impl 'torch': `bias` is the additive mask for SDPA, or None with `is_causal` (no ALiBi, no masks).
    impl 'flex':  `score_mod` (ALiBi, or None) and `block_mask`; `sdpa_fallback` (the 'torch'
                  inputs) on CPU with gradients on where flex cannot train there.
    impl 'flash': `alibi_slopes` (fp32, or None), and `cu_seqlens` / `max_seqlen` when documents
                  or padding split the rows into segments (variable-length kernel).
    """

    impl: str
    query_len: int
    past_len: int = 0
    bias: Optional[torch.Tensor] = None
    is_causal: bool = False
    score_mod: Optional[Callable] = None
    block_mask: Any = None
    sdpa_fallback: Optional["AttentionInputs"] = None
    alibi_slopes: Optional[torch.Tensor] = None
    cu_seqlens: Optional[torch.Tensor] = None
    max_seqlen: int = 0


class AttentionCache:
    """Per-model cache of the batch-independent attention inputs (bias, slopes, block masks).

    Keyed by (what, lengths, device, dtype); a few entries are kept (generation with a KV cache
    walks through lengths). A plain attribute of MPTModel, not a buffer: it is not saved, not
    sharded, and rebuilt on whatever device the model runs.
    """

    def __init__(self, max_entries: int = 16):
        self.max_entries = max_entries
        self._entries: OrderedDict = OrderedDict()

    def get(self, key, build: Callable[[], Any]):
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = build()
        self._entries[key] = value
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def prepare_attention(
    config: MPTConfig,
    query_len: int,
    past_len: int = 0,
    attention_mask: Optional[torch.Tensor] = None,
    sequence_id: Optional[torch.Tensor] = None,
    dtype: torch.dtype = torch.float32,
    device=None,
    cache: Optional[AttentionCache] = None,
) -> AttentionInputs:
    """The attention inputs of one forward for `config.attn_config['attn_impl']`."""
    cache = cache if cache is not None else AttentionCache()
    device = torch.device(device) if device is not None else torch.device("cpu")
    impl = config.attn_config["attn_impl"]
    doc_ids = sequence_id if config.attn_config["attn_uses_sequence_id"] else None
    if impl == "torch":
        return _prepare_torch(config, query_len, past_len, attention_mask, doc_ids, dtype, device, cache)
    if impl == "flex":
        return _prepare_flex(config, query_len, past_len, attention_mask, doc_ids, dtype, device, cache)
    if impl == "flash":
        return _prepare_flash(config, query_len, past_len, attention_mask, doc_ids, device, cache)
    raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")


# ----------------------------------------------------------------------------------- torch (SDPA)
def _prepare_torch(config, query_len, past_len, attention_mask, doc_ids, dtype, device, cache):
    per_batch = needs_padding_mask(attention_mask) or doc_ids is not None
    if not config.attn_config["alibi"] and not per_batch:
        # Pure causal: SDPA's is_causal needs no mask at all (aligned top-left, so only without
        # a KV cache or for single-token steps, where every past key is visible anyway).
        if past_len == 0:
            return AttentionInputs("torch", query_len, past_len, is_causal=True)
        if query_len == 1:
            return AttentionInputs("torch", query_len, past_len)
    shared = cache.get(("bias", query_len, past_len, device, dtype),
                       lambda: _shared_bias(config, query_len, past_len, dtype, device))
    if per_batch:
        bias = build_attn_bias(config, query_len, past_len, attention_mask, doc_ids, dtype, device,
                               shared=shared)
    else:
        bias = shared
    return AttentionInputs("torch", query_len, past_len, bias=bias)


def _sdpa(q, k, v, inputs: AttentionInputs, dropout_p: float, scale: float) -> torch.Tensor:
    """q (b, h, q, d), k/v (b, kv_h, k, d) -> (b, h, q, d)."""
    if k.shape[1] != q.shape[1]:
        # Each group of n_heads / kv_n_heads query heads shares one kv head.
        repeats = q.shape[1] // k.shape[1]
        k = k.repeat_interleave(repeats, dim=1)
        v = v.repeat_interleave(repeats, dim=1)
    bias = inputs.bias
    if bias is not None and bias.dtype != q.dtype:
        bias = bias.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p,
                                          is_causal=inputs.is_causal, scale=scale)


# ----------------------------------------------------------------------------------- flex
_COMPILED_FLEX = None


def _flex_kernel(device: torch.device):
    """flex_attention, compiled on accelerators; eager on CPU (see the module docstring)."""
    from torch.nn.attention.flex_attention import flex_attention

    global _COMPILED_FLEX
    if device.type == "cpu":
        return flex_attention
    if _COMPILED_FLEX is None:
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_FLEX


@functools.cache
def flex_trains_on_cpu() -> bool:
    """Whether this torch's flex_attention computes gradients on CPU (2.7 does, eagerly; 2.11 refuses)."""
    from torch.nn.attention.flex_attention import flex_attention

    q = torch.zeros(1, 1, 4, 8, device="cpu", requires_grad=True)
    try:
        with torch.enable_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # flex's "called without torch.compile" notice
            flex_attention(q, q, q).sum().backward()
    except NotImplementedError:
        return False
    return True


def _alibi_score_mod(slopes: torch.Tensor, past_len: int):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * (q_idx + past_len - kv_idx)
    return score_mod


def _prepare_flex(config, query_len, past_len, attention_mask, doc_ids, dtype, device, cache):
    from torch.nn.attention.flex_attention import create_block_mask

    key_len = past_len + query_len
    score_mod = None
    if config.attn_config["alibi"]:
        score_mod = cache.get(("flex_score_mod", past_len, device), lambda: _alibi_score_mod(
            alibi_slopes(config.n_heads, config.attn_config["alibi_bias_max"], device=device), past_len))
    pad = attention_mask.bool() if needs_padding_mask(attention_mask) else None
    if doc_ids is not None and past_len:
        raise ValueError("sequence_id masking is not supported together with a KV cache")
    compile_mask = device.type != "cpu"

    def causal(b, h, q_idx, kv_idx):
        return q_idx + past_len >= kv_idx

    if pad is None and doc_ids is None:
        block_mask = cache.get(("flex_block_mask", query_len, past_len, device), lambda: create_block_mask(
            causal, None, None, query_len, key_len, device=device, _compile=compile_mask))
    else:
        def masked(b, h, q_idx, kv_idx):
            allowed = causal(b, h, q_idx, kv_idx)
            if doc_ids is not None:
                allowed = allowed & (doc_ids[b, q_idx] == doc_ids[b, kv_idx])
            if pad is not None:
                allowed = allowed & pad[b, kv_idx]
            return allowed
        batch = (doc_ids if doc_ids is not None else pad).shape[0]
        block_mask = create_block_mask(masked, batch, None, query_len, key_len, device=device,
                                       _compile=compile_mask)
    fallback = None
    if device.type == "cpu" and torch.is_grad_enabled() and not flex_trains_on_cpu():
        fallback = _prepare_torch(config, query_len, past_len, attention_mask, doc_ids, dtype, device, cache)
    return AttentionInputs("flex", query_len, past_len, score_mod=score_mod, block_mask=block_mask,
                           sdpa_fallback=fallback)


def _flex(q, k, v, inputs: AttentionInputs, scale: float) -> torch.Tensor:
    if inputs.sdpa_fallback is not None and (q.requires_grad or k.requires_grad or v.requires_grad):
        return _sdpa(q, k, v, inputs.sdpa_fallback, 0.0, scale)
    kernel = _flex_kernel(q.device)
    return kernel(q, k, v, score_mod=inputs.score_mod, block_mask=inputs.block_mask, scale=scale,
                  enable_gqa=k.shape[1] != q.shape[1])


# ----------------------------------------------------------------------------------- flash
FLASH_MISSING = ("attn_config.attn_impl 'flash' needs the flash-attn package (flash-attn >= 2.4 for "
                 "ALiBi; `pip install flash-attn --no-build-isolation` on a CUDA machine), which is "
                 "not installed. Use attn_impl 'flex' (GPU) or 'torch' instead.")


def flash_attn_module():
    """The flash_attn package, or a ValueError that says how to get it."""
    try:
        import flash_attn
    except ImportError as err:
        raise ValueError(FLASH_MISSING) from err
    return flash_attn


def segment_boundaries(segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cu_seqlens (int32) and segment lengths for flash-attn's variable-length kernel.

    segment_ids: (batch, seq); a new segment starts at every row start and wherever the id
    changes along a row (document ids are non-decreasing within a row; padding runs are their own
    segments). The flattened tokens of segment s are cu_seqlens[s]:cu_seqlens[s + 1].
    """
    batch, seq = segment_ids.shape
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    start_idx = starts.flatten().nonzero().flatten()
    total = torch.tensor([batch * seq], device=segment_ids.device)
    cu_seqlens = torch.cat([start_idx, total]).to(torch.int32)
    return cu_seqlens, cu_seqlens.diff()


def _prepare_flash(config, query_len, past_len, attention_mask, doc_ids, device, cache):
    flash_attn_module()
    if doc_ids is not None and past_len:
        raise ValueError("sequence_id masking is not supported together with a KV cache")
    slopes = None
    if config.attn_config["alibi"]:
        slopes = cache.get(("flash_slopes", device), lambda: alibi_slopes(
            config.n_heads, config.attn_config["alibi_bias_max"], device=device))
    segments = None
    if doc_ids is not None:
        segments = doc_ids
    if needs_padding_mask(attention_mask):
        if past_len:
            raise ValueError("attn_impl 'flash' does not support a padding mask together with a KV cache")
        pad_runs = (attention_mask[:, past_len:] == 0).long()
        # Left/right padding makes its own segment(s); within real tokens documents stay apart.
        segments = pad_runs if segments is None else segments * 2 + pad_runs
    if segments is None:
        return AttentionInputs("flash", query_len, past_len, alibi_slopes=slopes)
    cu_seqlens, lengths = segment_boundaries(segments)
    # The variable-length kernel needs the longest segment as a Python int: one host sync per
    # forward, only when documents or padding split the rows.
    return AttentionInputs("flash", query_len, past_len, alibi_slopes=slopes, cu_seqlens=cu_seqlens,
                           max_seqlen=int(lengths.max()))


def _flash(q, k, v, inputs: AttentionInputs, dropout_p: float, scale: float) -> torch.Tensor:
    """q (b, q, h, d), k/v (b, k, kv_h, d) -> (b, q, h, d)."""
    fa = flash_attn_module()
    if q.device.type != "cuda" or q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"attn_impl 'flash' runs on CUDA in fp16/bf16, got {q.device.type} {q.dtype}; "
                         "use precision amp_bf16 on a GPU, or attn_impl 'torch'")
    if inputs.cu_seqlens is None:
        return fa.flash_attn_func(q, k, v, dropout_p=dropout_p, softmax_scale=scale, causal=True,
                                  alibi_slopes=inputs.alibi_slopes)
    b, s = q.shape[:2]
    out = fa.flash_attn_varlen_func(
        q.reshape(b * s, *q.shape[2:]), k.reshape(b * s, *k.shape[2:]), v.reshape(b * s, *v.shape[2:]),
        inputs.cu_seqlens, inputs.cu_seqlens, inputs.max_seqlen, inputs.max_seqlen,
        dropout_p=dropout_p, softmax_scale=scale, causal=True, alibi_slopes=inputs.alibi_slopes)
    return out.view(b, s, *out.shape[1:])


class MPTAttention(nn.Module):
    """Grouped-query self-attention (MHA when kv_n_heads == n_heads, MQA when it is 1).

    Parameter names (Wqkv, out_proj, q_ln, k_ln) match mosaicml/mpt-7b. Wqkv is one fused
    projection whose output is [queries (d_model) | keys (kv_dim) | values (kv_dim)].
    `layer_idx` is this layer's slot in a KV cache.
    """

    def __init__(self, config: MPTConfig, layer_idx: int = 0):
        super().__init__()
        a = config.attn_config
        self.layer_idx = layer_idx
        self.attn_impl = a["attn_impl"]
        if self.attn_impl == "flash":
            flash_attn_module()
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
            # MPT's query/key norms ignore norm_type and norm_eps (its blocks never pass them on).
            self.q_ln = build_norm(QK_LN_NORM_TYPE, self.d_model, QK_LN_EPS, config.no_bias)
            self.k_ln = build_norm(QK_LN_NORM_TYPE, self.kv_dim, QK_LN_EPS, config.no_bias)
        self.out_proj = nn.Linear(self.d_model, self.d_model, bias=bias)
        self.out_proj._is_residual = True  # scaled down at init, it writes into the residual stream

    def forward(self, x: torch.Tensor, attn: AttentionInputs, cache: Optional["Cache"] = None) -> torch.Tensor:
        batch, seq, _ = x.shape
        qkv = self.Wqkv(x)
        if self.clip_qkv:
            qkv = qkv.clamp(min=-self.clip_qkv, max=self.clip_qkv)
        q, k, v = qkv.split([self.d_model, self.kv_dim, self.kv_dim], dim=-1)
        if hasattr(self, "q_ln"):
            # The norm may run in a different dtype (low precision norm); keep q/k in v's dtype.
            q = self.q_ln(q).to(v.dtype)
            k = self.k_ln(k).to(v.dtype)

        q = q.view(batch, seq, self.n_heads, self.head_dim)
        k = k.view(batch, seq, self.kv_n_heads, self.head_dim)
        v = v.view(batch, seq, self.kv_n_heads, self.head_dim)
        dropout_p = self.attn_pdrop if self.training else 0.0

        if attn.impl == "flash" and cache is None:
            out = _flash(q, k, v, attn, dropout_p, self.softmax_scale)  # (b, s, h, d) layout
            return self.out_proj(out.reshape(batch, seq, self.d_model))

        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            # The cache stores this step's keys/values after the layer's earlier ones and returns all.
            k, v = cache.update(k, v, self.layer_idx)

        if attn.impl == "flash":  # with a KV cache: flash-attn's (b, s, h, d) layout again
            out = _flash(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn, dropout_p,
                         self.softmax_scale).transpose(1, 2)
        elif attn.impl == "flex":
            if dropout_p:
                raise ValueError("attn_impl 'flex' has no attention dropout; set attn_pdrop: 0")
            out = _flex(q, k, v, attn, self.softmax_scale)
        else:
            out = _sdpa(q, k, v, attn, dropout_p, self.softmax_scale)
        out = out.transpose(1, 2).reshape(batch, seq, self.d_model)
        return self.out_proj(out)
