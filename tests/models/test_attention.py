import math

import pytest
import torch
from transformers import DynamicCache
from transformers.models.mpt.modeling_mpt import build_mpt_alibi_tensor

from foundry.models.mpt import MPTForCausalLM, alibi_slopes, build_attn_bias

from mpt_helpers import tiny_config, tiny_model


# ---------------------------------------------------------------- ALiBi
@pytest.mark.parametrize("n_heads", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("bias_max", [8, 16])
def test_alibi_slopes_power_of_two(n_heads, bias_max):
    expected = torch.tensor([1 / 2 ** (bias_max * i / n_heads) for i in range(1, n_heads + 1)])
    torch.testing.assert_close(alibi_slopes(n_heads, bias_max), expected)


def test_alibi_slopes_non_power_of_two():
    # 6 heads: slopes of the 8-head sequence 2^-1..2^-8, odd indices first, then even ones.
    expected = torch.tensor([2.0 ** -e for e in (2, 4, 6, 8, 1, 3)])
    torch.testing.assert_close(alibi_slopes(6, 8), expected)


@pytest.mark.parametrize("n_heads", [3, 5, 6, 12, 24])
def test_alibi_slopes_match_transformers(n_heads):
    seq = 7
    hf = build_mpt_alibi_tensor(n_heads, seq, alibi_bias_max=8)  # (heads, 1, seq): slope * (j - (seq-1))
    hf_slopes = -hf[:, 0, 0] / (seq - 1)
    torch.testing.assert_close(alibi_slopes(n_heads, 8), hf_slopes)


def test_attn_bias_is_alibi_plus_causal():
    cfg = tiny_config(n_heads=4, d_model=32, attn_config={"alibi_bias_max": 8})
    bias = build_attn_bias(cfg, query_len=5)
    assert bias.shape == (1, 4, 5, 5)
    slopes = alibi_slopes(4, 8)
    for h in range(4):
        for i in range(5):
            for j in range(5):
                if j <= i:
                    assert bias[0, h, i, j].item() == pytest.approx(-slopes[h].item() * (i - j))
                else:
                    assert bias[0, h, i, j].item() == torch.finfo(torch.float32).min


def test_attn_bias_with_cache_offsets_queries():
    cfg = tiny_config()
    full = build_attn_bias(cfg, query_len=6)
    tail = build_attn_bias(cfg, query_len=2, past_len=4)
    torch.testing.assert_close(tail, full[:, :, 4:, :])


def test_attn_bias_without_alibi_is_zero_where_allowed():
    cfg = tiny_config(attn_config={"alibi": False}, learned_pos_emb=True)
    bias = build_attn_bias(cfg, query_len=4)
    assert bias.shape == (1, 1, 4, 4)
    assert (bias[0, 0].tril() == 0).all()


# ---------------------------------------------------------------- masking
def test_causality(ids):
    model = tiny_model()
    with torch.no_grad():
        base = model(ids).logits
        changed = ids.clone()
        changed[:, 10:] = (changed[:, 10:] + 1) % 97
        after = model(changed).logits
    torch.testing.assert_close(base[:, :10], after[:, :10])
    assert not torch.allclose(base[:, 10:], after[:, 10:])


def test_sequence_id_blocks_cross_document_attention(ids):
    model = tiny_model(attn_config={"attn_uses_sequence_id": True})
    seq_id = torch.tensor([[0] * 6 + [1] * 10] * 2)
    with torch.no_grad():
        packed = model(ids, sequence_id=seq_id).logits
        alone = model(ids[:, 6:]).logits
        other = ids.clone()
        other[:, :6] = (other[:, :6] + 3) % 97
        packed_other = model(other, sequence_id=seq_id).logits
        unmasked = model(ids).logits
    # ALiBi is translation invariant, so the second document packed == the document alone.
    torch.testing.assert_close(packed[:, 6:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(packed[:, 6:], packed_other[:, 6:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(packed[:, 6:], unmasked[:, 6:])


def test_sequence_id_ignored_when_flag_off(ids):
    model = tiny_model()
    seq_id = torch.tensor([[0] * 6 + [1] * 10] * 2)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, sequence_id=seq_id).logits, model(ids).logits)


def test_sequence_id_required_in_training_when_flag_on(ids):
    model = tiny_model(attn_config={"attn_uses_sequence_id": True}).train()
    with pytest.raises(ValueError, match="sequence_id"):
        model(ids)


def test_left_padding_matches_unpadded(ids):
    model = tiny_model()
    padded = torch.cat([torch.zeros(2, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(2, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    with torch.no_grad():
        out = model(padded, attention_mask=mask).logits
        ref = model(ids).logits
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[:, 3:], ref, atol=1e-5, rtol=1e-5)


def test_kv_cache_matches_full_forward(ids):
    model = tiny_model(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2})
    cache = DynamicCache()
    with torch.no_grad():
        full = model(ids).logits
        steps = [model(ids[:, :10], past_key_values=cache, use_cache=True).logits]
        for t in range(10, 16):
            steps.append(model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits)
    assert cache.get_seq_length() == 16
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- attention variants
def test_gqa_with_all_kv_heads_equals_mha(ids):
    mha = tiny_model()
    gqa = MPTForCausalLM(tiny_config(attn_config={"attn_type": "grouped_query_attention",
                                                  "kv_n_heads": 4})).eval()
    gqa.load_state_dict(mha.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits)


@pytest.mark.parametrize("kind,kv", [("grouped_query_attention", 2), ("multiquery_attention", 1)])
def test_gqa_equals_mha_with_repeated_kv_weights(ids, kind, kv):
    """Query head h reads kv head h // (n_heads / kv_n_heads): an MHA with duplicated k/v rows."""
    gqa = tiny_model(attn_config={"attn_type": kind, "kv_n_heads": kv if kind.startswith("g") else None})
    mha = MPTForCausalLM(tiny_config()).eval()
    d, hd, group = 32, 8, 4 // kv
    state = gqa.state_dict()
    for name, w in list(state.items()):
        if name.endswith("attn.Wqkv.weight"):
            assert w.shape == (d + 2 * kv * hd, d)
            q, k, v = w.split([d, kv * hd, kv * hd])
            expand = lambda t: t.view(kv, hd, d).repeat_interleave(group, dim=0).reshape(d, d)  # noqa: E731
            state[name] = torch.cat([q, expand(k), expand(v)])
    mha.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids).logits, mha(ids).logits, atol=1e-5, rtol=1e-5)


def test_qk_ln_adds_norms_and_changes_output(ids):
    model = tiny_model(attn_config={"qk_ln": True})
    names = dict(model.named_parameters())
    assert "transformer.blocks.0.attn.q_ln.weight" in names
    assert names["transformer.blocks.0.attn.k_ln.weight"].shape == (32,)
    with torch.no_grad():
        out = model(ids).logits
    assert torch.isfinite(out).all()
    gqa = tiny_model(attn_config={"qk_ln": True, "attn_type": "grouped_query_attention", "kv_n_heads": 2})
    assert dict(gqa.named_parameters())["transformer.blocks.0.attn.k_ln.weight"].shape == (16,)


def test_clip_qkv_clamps_projections(ids, monkeypatch):
    model = tiny_model(attn_config={"clip_qkv": 0.05})
    seen = []
    orig = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append(max(q.abs().max(), k.abs().max(), v.abs().max()).item())
        return orig(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model.transformer.blocks[0].attn.Wqkv.weight.mul_(100.0)
        model(ids)
    assert seen and max(seen) <= 0.05 + 1e-7


def test_softmax_scale_is_used(ids):
    a = tiny_model()
    b = tiny_model(attn_config={"softmax_scale": 1.0})
    with torch.no_grad():
        assert not torch.allclose(a(ids).logits, b(ids).logits)
    assert a.transformer.blocks[0].attn.softmax_scale == pytest.approx(1 / math.sqrt(8))
