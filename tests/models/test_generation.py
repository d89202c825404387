"""generate() and the KV cache: transformers' Cache API (DynamicCache), on transformers 4.51 and 5.

With the cache, every step after the prompt feeds one token and each layer appends its keys and
values with `cache.update`; the tokens and the per-step logits must equal decoding without a cache
(the whole sequence recomputed every step).
"""

from __future__ import annotations

import pytest
import torch
from mpt_helpers import VOCAB, make_ids, tiny_model
from transformers import Cache, DynamicCache

from foundry.models.mpt.modeling import CACHE_NAME

CASES = {
    "alibi": {},
    "gqa": {"attn_config": {"attn_type": "grouped_query_attention", "kv_n_heads": 2}},
    "mqa_flex": {"attn_config": {"attn_type": "multiquery_attention", "attn_impl": "flex"}},
    "learned_pos": {"attn_config": {"alibi": False}, "learned_pos_emb": True},
}


def generate(model, ids, use_cache, **kwargs):
    """generate() that also records the length of every input the model was given."""
    lengths = []
    hook = model.transformer.register_forward_pre_hook(
        lambda module, args, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        out = model.generate(ids, use_cache=use_cache, do_sample=False, pad_token_id=0, output_logits=True,
                             return_dict_in_generate=True, **kwargs)
    finally:
        hook.remove()
    return out, lengths


def left_padded():
    ids = make_ids(batch=3, seq=9, seed=7)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[2, :1] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("case", sorted(CASES))
def test_greedy_with_cache_equals_without(case):
    model = tiny_model(**CASES[case])
    prompt = make_ids(batch=2, seq=6)
    cached, lengths = generate(model, prompt, use_cache=True, max_new_tokens=10)
    plain, plain_lengths = generate(model, prompt, use_cache=False, max_new_tokens=10)
    assert lengths == [6] + [1] * 9  # the prompt once, then one new token per step
    assert plain_lengths == list(range(6, 16))
    assert cached.sequences.shape == (2, 16) and torch.equal(cached.sequences[:, :6], prompt)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(plain.logits), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["alibi", "gqa", "learned_pos"])
def test_left_padded_batch_with_cache(case):
    model = tiny_model(**CASES[case])
    ids, mask = left_padded()
    cached, lengths = generate(model, ids, use_cache=True, attention_mask=mask, max_new_tokens=8)
    plain, _ = generate(model, ids, use_cache=False, attention_mask=mask, max_new_tokens=8)
    assert lengths == [9] + [1] * 7
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(plain.logits), atol=1e-5, rtol=1e-5)
    # Each row continues as it would alone, without its padding.
    for row in range(3):
        real = ids[row, mask[row].bool()][None]
        alone, _ = generate(model, real, use_cache=True, max_new_tokens=8)
        assert torch.equal(cached.sequences[row, 9:], alone.sequences[0, real.shape[1]:]), row
        torch.testing.assert_close(torch.stack(cached.logits)[:, row], torch.stack(alone.logits)[:, 0],
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["alibi", "gqa"])
def test_beam_search_with_cache_equals_without(case):
    """Beam search reorders the cache between steps (Cache.reorder_cache)."""
    model = tiny_model(**CASES[case])
    ids, mask = left_padded()
    kwargs = dict(attention_mask=mask, max_new_tokens=6, num_beams=3, num_return_sequences=3, output_scores=True)
    cached, lengths = generate(model, ids, use_cache=True, **kwargs)
    plain, _ = generate(model, ids, use_cache=False, **kwargs)
    assert lengths[0] == 9 and set(lengths[1:]) == {1}
    assert cached.sequences.shape == (9, 15)
    assert torch.equal(cached.sequences, plain.sequences)
    torch.testing.assert_close(cached.sequences_scores, plain.sequences_scores, atol=1e-5, rtol=1e-5)


def test_forward_updates_a_cache_passed_in(ids):
    model = tiny_model(**CASES["gqa"])
    with torch.no_grad():
        full = model(ids).logits
        cache = DynamicCache()
        out = model(ids[:, :10], past_key_values=cache, use_cache=True)
        assert getattr(out, CACHE_NAME) is cache and cache.get_seq_length() == 10
        steps = [out.logits]
        for t in range(10, 16):
            # Either name of the argument: `cache` (transformers 5) or `past_key_values` (4.x).
            name = "cache" if t % 2 else "past_key_values"
            steps.append(model(ids[:, t:t + 1], **{name: cache}).logits)
    assert cache.get_seq_length() == 16
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_use_cache_makes_a_cache_and_none_without(ids):
    model = tiny_model()
    with torch.no_grad():
        made = getattr(model(ids, use_cache=True), CACHE_NAME)
        assert isinstance(made, Cache) and made.get_seq_length() == 16
        assert getattr(model(ids), CACHE_NAME) is None  # config.use_cache defaults to False
        step = model(ids[:, :1], **{CACHE_NAME: made}).logits
        assert step.shape == (2, 1, VOCAB) and made.get_seq_length() == 17


def test_tuple_cache_is_refused(ids):
    model = tiny_model()
    legacy = tuple((torch.zeros(2, 4, 3, 8), torch.zeros(2, 4, 3, 8)) for _ in range(2))
    with pytest.raises(TypeError, match="transformers Cache"):
        model(ids, past_key_values=legacy)
    with pytest.raises(ValueError, match="not both"):
        model(ids, past_key_values=DynamicCache(), cache=DynamicCache())
