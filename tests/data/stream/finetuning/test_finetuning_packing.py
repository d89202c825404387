"""Packing: a packed row gives every example the logits and loss it gets alone (document mask +
ALiBi's relative bias), bins respect max_seq_len, nothing is lost or repeated, and
packing_ratio auto beats no packing on padding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from foundry.data.stream.finetuning.collator import FinetuningCollator
from foundry.data.stream.finetuning.packing import (auto_packing_ratio, choose_bins,
                                                    first_fit_decreasing, packing_report, simulate)
from foundry.models.composer_model import ComposerMPTCausalLM
from foundry.models.mpt.configuration import MPTConfig
from foundry.models.mpt.loss import causal_lm_loss

SEQ = 48


def example(rng, n, vocab=200):
    ids = np.array([rng.randrange(1, vocab) for _ in range(n)], dtype=np.int64)
    prompt = rng.randrange(1, n)
    return {'input_ids': ids, 'turn_lengths': np.array([prompt, n - prompt])}


def tiny_model(uses_sequence_id=True, attn_impl='torch'):
    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=4, n_layers=2, expansion_ratio=2, max_seq_len=SEQ,
                       vocab_size=200, tokenizer_name=None,
                       attn_config={'attn_impl': attn_impl, 'alibi': True, 'alibi_bias_max': 8,
                                    'attn_uses_sequence_id': uses_sequence_id})
    return ComposerMPTCausalLM(config, loss_fn='torch_crossentropy').eval()


@pytest.mark.parametrize('attn_impl', ['torch', 'flex'])
def test_packed_row_equals_each_example_alone(attn_impl):
    if attn_impl == 'flex' and not torch.cuda.is_available():
        pytest.skip('flex attention runs on a GPU; on CPU the document mask goes through torch')
    rng = random.Random(0)
    examples = [example(rng, n) for n in (13, 9, 17, 6)]
    packed = FinetuningCollator(SEQ, 0, rows=1)(examples)
    assert packed['input_ids'].shape == (1, SEQ)
    row_ids = packed['sequence_id'][0].tolist()
    model = tiny_model(attn_impl=attn_impl)
    device = 'cuda' if attn_impl == 'flex' else 'cpu'
    model = model.to(device)
    with torch.no_grad():
        logits = model({k: v.to(device) for k, v in packed.items()})[0].cpu()
    alone = FinetuningCollator(SEQ, 0)(examples)  # one example per row, padded
    with torch.no_grad():
        alone_logits = model({k: v.to(device) for k, v in alone.items()}).cpu()
    at = 0
    total_loss, total_targets = 0.0, 0
    for k, ex in enumerate(examples):
        # the collator keeps the examples' order within a bin
        n = len(ex['input_ids'])
        start = row_ids.index(k)
        assert row_ids[start:start + n] == [k] * n
        assert torch.equal(packed['input_ids'][0, start:start + n], torch.as_tensor(ex['input_ids']))
        torch.testing.assert_close(logits[start:start + n], alone_logits[k, :n], atol=2e-5, rtol=0)
        targets = alone['labels'][k:k + 1]
        count = int((targets[:, 1:] != -100).sum())
        total_loss += float(causal_lm_loss(alone_logits[k:k + 1], targets)) * count
        total_targets += count
        at += n
    assert packed['attention_mask'][0].sum() == at
    # The packed row's loss is the token-weighted mean of the examples' losses alone.
    packed_loss = float(causal_lm_loss(logits[None], packed['labels']))
    assert packed_loss == pytest.approx(total_loss / total_targets, rel=1e-5)

    # Without the document mask the later examples see the earlier ones: different logits.
    leaky = tiny_model(uses_sequence_id=False).to(device)
    with torch.no_grad():
        leaky_logits = leaky({k: v.to(device) for k, v in packed.items()})[0].cpu()
    start = row_ids.index(3)
    assert not torch.allclose(leaky_logits[start:start + 6], alone_logits[3, :6], atol=1e-3)


def test_bins_fit_and_every_example_is_emitted_once():
    rng = random.Random(1)
    examples = [example(rng, rng.randrange(3, 30)) for _ in range(200)]
    for i, ex in enumerate(examples):
        ex['input_ids'][0] = 1000 + i  # tag each example by its first token
    collator = FinetuningCollator(SEQ, 0, rows=4)
    seen = []
    for start in range(0, 200, 10):  # packing_ratio 2.5 with 4 rows
        batch = collator(examples[start:start + 10])
        assert batch['input_ids'].shape == (4, SEQ)
        for row in range(4):
            seq = batch['sequence_id'][row]
            mask = batch['attention_mask'][row].bool()
            starts = [0] + [i for i in range(1, SEQ) if seq[i] != seq[i - 1] and mask[i]]
            seen += [int(batch['input_ids'][row, s]) - 1000 for s in starts if mask[s]]
            # padding sits after the real tokens, in its own segment
            assert not mask[int(mask.sum()):].any()
            assert (batch['labels'][row][~mask] == -100).all()
    waiting = [int(e['input_ids'][0]) - 1000 for e in collator.waiting]
    assert len(seen) == len(set(seen))
    assert sorted(seen + waiting) == list(range(200))


def test_first_fit_and_choose_bins():
    lengths = [30, 20, 18, 10, 10, 5]
    bins = first_fit_decreasing(lengths, 40)
    assert all(sum(lengths[i] for i in b) <= 40 for b in bins)
    assert sorted(i for b in bins for i in b) == list(range(6))
    chosen, leftover = choose_bins(lengths, 2, 40)
    assert len(chosen) == 2 and sorted(leftover + [i for b in chosen for i in b]) == list(range(6))
    # at least `rows` rows whenever there are that many examples
    assert len(choose_bins([1, 1, 1], 3, 40)[0]) == 3


def test_auto_ratio_minimises_waste_and_report_counts_padding():
    rng = random.Random(2)
    lengths = [rng.randrange(20, 200) for _ in range(2000)]
    ratio, sims = auto_packing_ratio(lengths, 8, 512)
    best = min(s.waste for s in sims)
    assert next(s for s in sims if s.ratio == ratio).waste == best
    assert sims[0].ratio == 1.0 and best < sims[0].waste / 3
    too_high = [s for s in sims if s.ratio >= ratio + 1]  # examples pile up waiting
    assert too_high and all(s.waiting_tokens > 0 and s.waste > best for s in too_high)
    report = packing_report(lengths, 8, 512, ratio, auto=True)
    mean = sum(lengths) / len(lengths)
    assert report.padding_unpacked == pytest.approx(1 - mean / 512)
    assert report.padding_packed < 0.1 < report.padding_unpacked
    assert report.rows_packed < report.rows_unpacked / 3
    assert 'packing_ratio' in report.lines()[0] and '(auto)' in report.lines()[0]
    # simulate counts exactly the tokens of the emitted rows
    sim = simulate([10] * 16, 2, 2.0, 40)
    assert (sim.rows, sim.tokens, sim.waiting_tokens) == (8, 160, 0)
