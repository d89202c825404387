"""Every attention kernel against a plain softmax(QK^T * scale + alibi + mask) V, on CPU.

`torch` (SDPA) and `flex` (flex_attention, eager on CPU: torch 2.7's inductor cannot compile it
for CPU) run here for real. Forward comparisons run without gradients, where flex runs on every
torch. Gradients: torch 2.7's flex computes them on CPU and is compared for real; where flex
refuses CPU gradients (torch 2.11), the model runs SDPA instead (`sdpa_fallback`) and the
gradient tests check that fallback against the reference. `flash` needs CUDA and the flash-attn
package: here we test its clear error, and the segment bookkeeping of its variable-length path
against the reference run per segment.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from mpt_helpers import VOCAB, make_ids, tiny_config
from transformers import DynamicCache

from foundry.models.mpt import MPTForCausalLM, alibi_slopes, prepare_attention
from foundry.models.mpt.attention import (
    AttentionCache,
    MPTAttention,
    _shared_bias,
    flash_attn_module,
    flex_trains_on_cpu,
    needs_padding_mask,
    segment_boundaries,
)

try:
    import flash_attn  # noqa: F401
    HAVE_FLASH = True
except ImportError:
    HAVE_FLASH = False


def reference_attention(q, k, v, scale, slopes=None, past_len=0, allowed=None):
    """softmax(q k^T * scale + alibi + mask) v in float64, written out.

    q: (b, h, Q, d); k, v: (b, kv_h, K, d); allowed: (b, Q, K) bool or None.
    Returns (b, h, Q, d) and the (b, Q) rows that have at least one allowed key.
    """
    q, k, v = q.double(), k.double(), v.double()
    groups = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(groups, dim=1)
    v = v.repeat_interleave(groups, dim=1)
    scores = q @ k.transpose(-1, -2) * scale
    n_q, n_k = q.shape[2], k.shape[2]
    q_pos = torch.arange(past_len, past_len + n_q)[:, None]
    k_pos = torch.arange(n_k)[None, :]
    if slopes is not None:
        scores = scores - slopes.double()[None, :, None, None] * (q_pos - k_pos)
    mask = (k_pos <= q_pos)[None].expand(q.shape[0], n_q, n_k)
    if allowed is not None:
        mask = mask & allowed
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    has_key = mask.any(-1)
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return probs @ v, has_key


def make_attention(seed=0, **attn_config):
    torch.manual_seed(seed)
    cfg = tiny_config(d_model=64, n_heads=4, attn_config=attn_config)
    attn = MPTAttention(cfg)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return cfg, attn


def qkv_of(attn: MPTAttention, x):
    b, s, _ = x.shape
    q, k, v = attn.Wqkv(x).split([attn.d_model, attn.kv_dim, attn.kv_dim], dim=-1)
    return (q.view(b, s, attn.n_heads, attn.head_dim).transpose(1, 2),
            k.view(b, s, attn.kv_n_heads, attn.head_dim).transpose(1, 2),
            v.view(b, s, attn.kv_n_heads, attn.head_dim).transpose(1, 2))


def run_both(impl, x, attention_mask=None, sequence_id=None, **attn_config):
    """(kernel output, reference output, rows that have a key) for one attention layer.

    Runs with gradients if the caller has them on (and x requires grad), else without.
    """
    cfg, attn = make_attention(attn_impl=impl, **attn_config)
    b, s, _ = x.shape
    inputs = prepare_attention(cfg, s, 0, attention_mask, sequence_id, device=x.device)
    out = attn(x, inputs)
    q, k, v = qkv_of(attn, x)
    allowed = None
    if attention_mask is not None:
        allowed = attention_mask.bool()[:, None, :].expand(b, s, s)
    if sequence_id is not None and cfg.attn_config["attn_uses_sequence_id"]:
        same = sequence_id[:, :, None] == sequence_id[:, None, :]
        allowed = same if allowed is None else allowed & same
    slopes = alibi_slopes(cfg.n_heads, cfg.attn_config["alibi_bias_max"]) if cfg.attn_config["alibi"] else None
    ref, has_key = reference_attention(q, k, v, attn.softmax_scale, slopes, 0, allowed)
    ref = attn.out_proj(ref.transpose(1, 2).reshape(b, s, cfg.d_model).float())
    return out, ref, has_key


def sequence_ids(batch=3, seq=24):
    sid = torch.zeros(batch, seq, dtype=torch.long)
    sid[0, 7:] = 1
    sid[0, 15:] = 2
    sid[1, 12:] = 1
    return sid  # row 2: one document


CASES = {
    "alibi": dict(),
    "no_alibi": dict(alibi=False),
    "alibi_bias_max_4": dict(alibi_bias_max=4),
    "gqa": dict(attn_type="grouped_query_attention", kv_n_heads=2),
    "mqa": dict(attn_type="multiquery_attention"),
    "softmax_scale": dict(softmax_scale=0.05),
}


@pytest.mark.parametrize("impl", ["torch", "flex"])
@pytest.mark.parametrize("case", sorted(CASES))
@torch.no_grad()
def test_kernel_matches_reference(impl, case):
    x = torch.randn(3, 24, 64)
    out, ref, _ = run_both(impl, x, **CASES[case])
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "flex"])
@pytest.mark.parametrize("alibi", [True, False])
@torch.no_grad()
def test_kernel_document_masking_matches_reference(impl, alibi):
    x = torch.randn(3, 24, 64)
    out, ref, _ = run_both(impl, x, sequence_id=sequence_ids(), attn_uses_sequence_id=True, alibi=alibi)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    # and documents really are cut: without the flag the outputs differ after the first boundary
    unmasked, _, _ = run_both(impl, x, sequence_id=sequence_ids(), alibi=alibi)
    assert not torch.allclose(out[0, 7:], unmasked[0, 7:], atol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "flex"])
@torch.no_grad()
def test_kernel_left_padding_matches_reference(impl):
    x = torch.randn(3, 24, 64)
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[0, :5] = 0
    mask[1, :1] = 0
    out, ref, has_key = run_both(impl, x, attention_mask=mask)
    # Rows with no allowed key (padding queries) are undefined: only real rows are compared.
    real = has_key[..., None].expand_as(out)
    torch.testing.assert_close(out[real], ref[real], atol=2e-5, rtol=1e-4)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("impl", ["torch", "flex"])
def test_kernel_gradients_match_reference(impl):
    x = torch.randn(2, 20, 64, requires_grad=True)
    sid = torch.zeros(2, 20, dtype=torch.long)
    sid[0, 9:] = 1
    config = dict(attn_uses_sequence_id=True, attn_type="grouped_query_attention", kv_n_heads=2)
    out, ref, _ = run_both(impl, x, sequence_id=sid, **config)
    g = torch.randn_like(out)
    (gx,) = torch.autograd.grad((out * g).sum(), x)
    (gx_ref,) = torch.autograd.grad((ref * g).sum(), x)
    torch.testing.assert_close(gx, gx_ref, atol=1e-4, rtol=1e-3)
    if impl == "flex":
        cfg = tiny_config(d_model=64, n_heads=4, attn_config={"attn_impl": "flex", **config})
        fallback = prepare_attention(cfg, 20, sequence_id=sid).sdpa_fallback
        # What ran: flex's own backward where this torch has one on CPU, else SDPA (same masks).
        assert (fallback is None) == flex_trains_on_cpu()


def test_flex_cpu_training_fallback_equals_flex():
    """Where flex cannot train on CPU, a forward with gradients runs SDPA: same output as flex's."""
    cfg, attn = make_attention(attn_impl="flex", attn_type="grouped_query_attention", kv_n_heads=2,
                               attn_uses_sequence_id=True)
    sid = sequence_ids()
    mask = torch.ones(3, 24, dtype=torch.long)
    mask[2, :3] = 0
    with torch.no_grad():
        assert prepare_attention(cfg, 24, 0, mask, sid).sdpa_fallback is None  # no gradients: flex
    trains = prepare_attention(cfg, 24, 0, mask, sid)
    assert (trains.sdpa_fallback is None) == flex_trains_on_cpu()
    if trains.sdpa_fallback is not None:
        assert trains.sdpa_fallback.impl == "torch" and trains.sdpa_fallback.bias.shape == (3, 4, 24, 24)
    x = torch.randn(3, 24, 64)
    with torch.no_grad():
        flex_out = attn(x, prepare_attention(cfg, 24, 0, mask, sid))
    trained = attn(x, trains)
    assert trained.requires_grad
    real = mask.bool()[:, :, None].expand_as(trained)  # padding queries attend to nothing: undefined
    torch.testing.assert_close(trained[real], flex_out[real], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "flex"])
@torch.no_grad()
def test_kernel_with_kv_cache_matches_reference(impl):
    cfg, attn = make_attention(attn_impl=impl, attn_type="grouped_query_attention", kv_n_heads=2)
    x = torch.randn(2, 16, 64)
    full = attn(x, prepare_attention(cfg, 16))
    cache = DynamicCache()
    attn(x[:, :11], prepare_attention(cfg, 11), cache)
    assert cache.get_seq_length() == 11
    step = attn(x[:, 11:12], prepare_attention(cfg, 1, past_len=11), cache)
    torch.testing.assert_close(step, full[:, 11:12], atol=2e-5, rtol=1e-4)
    tail = attn(x[:, 12:], prepare_attention(cfg, 4, past_len=12), cache)
    torch.testing.assert_close(tail, full[:, 12:], atol=2e-5, rtol=1e-4)
    assert cache.get_seq_length() == 16


@pytest.mark.parametrize("extra", [{}, {"attn_uses_sequence_id": True}])
def test_models_agree_across_kernels(extra):
    """Whole model, torch vs flex, same weights: forward without gradients (flex itself on every torch),
    then a training forward and backward (flex's backward, or its SDPA fallback where flex cannot
    train on CPU)."""
    ids = make_ids(batch=2, seq=32)
    sid = torch.zeros_like(ids)
    sid[:, 13:] = 1
    models = {}
    for impl in ("torch", "flex"):
        torch.manual_seed(0)
        models[impl] = MPTForCausalLM(tiny_config(attn_config={"attn_impl": impl, **extra})).train()
    with torch.no_grad():
        outs = {impl: m(ids, sequence_id=sid) for impl, m in models.items()}
    torch.testing.assert_close(outs["flex"].logits, outs["torch"].logits, atol=1e-5, rtol=1e-4)
    outs = {impl: m(ids, sequence_id=sid, labels=ids) for impl, m in models.items()}
    torch.testing.assert_close(outs["flex"].logits, outs["torch"].logits, atol=1e-5, rtol=1e-4)
    for out in outs.values():
        out.loss.backward()
    for (name, p_t), (_, p_f) in zip(models["torch"].named_parameters(), models["flex"].named_parameters()):
        torch.testing.assert_close(p_f.grad, p_t.grad, atol=1e-5, rtol=1e-4, msg=name)


# ---------------------------------------------------------------- torch path: what it materialises
def test_torch_path_shares_one_bias_across_the_batch():
    cfg = tiny_config(n_heads=4)
    cache = AttentionCache()
    a = prepare_attention(cfg, 32, cache=cache)
    b = prepare_attention(cfg, 32, attention_mask=torch.ones(8, 32, dtype=torch.long), cache=cache)
    assert a.bias.shape == (1, 4, 32, 32)  # no batch dimension
    assert a.bias is b.bias and len(cache) == 1  # built once, reused (an all-ones mask changes nothing)
    prepare_attention(cfg, 16, cache=cache)
    prepare_attention(cfg, 32, dtype=torch.bfloat16, cache=cache)
    assert len(cache) == 3  # keyed by length and dtype


def test_torch_path_builds_per_batch_masks_only_when_needed():
    cfg = tiny_config(n_heads=4, attn_config={"attn_uses_sequence_id": True})
    sid = sequence_ids(batch=3, seq=32)
    assert prepare_attention(cfg, 32, sequence_id=sid).bias.shape == (3, 4, 32, 32)
    plain = tiny_config(n_heads=4)
    assert prepare_attention(plain, 32, sequence_id=sid).bias.shape == (1, 4, 32, 32)  # flag off
    mask = torch.ones(3, 32, dtype=torch.long)
    mask[1, :4] = 0
    assert prepare_attention(plain, 32, attention_mask=mask).bias.shape == (3, 4, 32, 32)


def test_torch_path_without_alibi_uses_is_causal_and_no_mask():
    cfg = tiny_config(attn_config={"alibi": False}, learned_pos_emb=True)
    inputs = prepare_attention(cfg, 32)
    assert inputs.is_causal and inputs.bias is None


def test_shared_bias_is_alibi_plus_causal():
    cfg = tiny_config(n_heads=4)
    bias = _shared_bias(cfg, 6, 0, torch.float32, "cpu")[0]
    slopes = alibi_slopes(4, 8)
    for i in range(6):
        for j in range(6):
            expected = -slopes * (i - j) if j <= i else torch.full((4,), torch.finfo(torch.float32).min)
            torch.testing.assert_close(bias[:, i, j], expected)


def test_no_host_sync_on_accelerator_masks():
    """On an accelerator the padding mask is applied without reading it (no .all() sync).

    A meta tensor stands in for a device tensor: reading its values raises.
    """
    mask = torch.ones(2, 8, dtype=torch.long, device="meta")
    with pytest.raises(Exception):
        bool(mask.all())
    assert needs_padding_mask(mask) is True
    assert needs_padding_mask(None) is False
    assert needs_padding_mask(torch.ones(2, 8, dtype=torch.long)) is False
    assert needs_padding_mask(torch.tensor([[0, 1]])) is True


# ---------------------------------------------------------------- flash
@pytest.mark.skipif(HAVE_FLASH, reason="flash-attn is installed")
def test_flash_without_package_runs_the_fastest_torch_kernel_and_says_so():
    with pytest.raises(ValueError, match="flash-attn package"):
        flash_attn_module()
    # llm-foundry's YAMLs and folders say 'flash': without the package the same attention runs on
    # torch's kernels (SDPA on CPU, flex on a GPU), with one line that names the package and the choices.
    for requested in ("flash", "triton"):
        with pytest.warns(UserWarning, match=r"running attn_impl '(torch|flex)'.*attn_impl: flex or torch") as caught:
            cfg = tiny_config(attn_config={"attn_impl": requested})
        assert cfg.attn_config["attn_impl"] == ("flex" if torch.cuda.is_available() else "torch")
        assert len(caught) == 1 and "\n" not in str(caught[0].message)
    with pytest.warns(UserWarning, match="flash-attn package"):
        model = MPTForCausalLM(tiny_config(attn_config={"attn_impl": "flash"}))
    ids = torch.randint(0, 64, (1, 8))
    reference = MPTForCausalLM(tiny_config())
    reference.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids).logits, reference(ids).logits)


def test_flash_segments_reproduce_document_masking():
    """cu_seqlens from sequence_id, run through the reference per segment, equals document masking."""
    sid = sequence_ids(batch=3, seq=24)
    cu, lengths = segment_boundaries(sid)
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 3 * 24
    assert lengths.tolist() == [7, 8, 9, 12, 12, 24]
    cfg, attn = make_attention(attn_uses_sequence_id=True)
    x = torch.randn(3, 24, 64)
    q, k, v = qkv_of(attn, x)
    slopes = alibi_slopes(4, 8)
    flat = [t.transpose(1, 2).reshape(3 * 24, t.shape[1], t.shape[3]) for t in (q, k, v)]
    pieces = []
    for s in range(len(lengths)):
        lo, hi = cu[s].item(), cu[s + 1].item()
        seg = [t[lo:hi].transpose(0, 1)[None] for t in flat]  # (1, h, len, d)
        out, _ = reference_attention(*seg, attn.softmax_scale, slopes)
        pieces.append(out[0].transpose(0, 1))
    varlen = torch.cat(pieces).view(3, 24, 4, 16)
    same = sid[:, :, None] == sid[:, None, :]
    ref, _ = reference_attention(q, k, v, attn.softmax_scale, slopes, 0, same)
    torch.testing.assert_close(varlen, ref.transpose(1, 2))
