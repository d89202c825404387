"""Document boundaries survive conversion -> loader -> collator -> model: with
attn_uses_sequence_id the model cannot see across an eos inside a packed sample."""

from __future__ import annotations

import torch

from foundry.data.prep.convert import convert_documents
from foundry.data.stream.text_loader import build_text_dataloader
from foundry.models.composer_model import ComposerMPTCausalLM
from foundry.models.mpt.configuration import MPTConfig

DOCS = [f'doc {i} says {"hi " * (1 + i % 4)}' for i in range(200)]


def model(tokenizer, uses_sequence_id: bool) -> ComposerMPTCausalLM:
    torch.manual_seed(0)
    config = MPTConfig(d_model=32, n_heads=2, n_layers=2, expansion_ratio=2, max_seq_len=32,
                       vocab_size=len(tokenizer), tokenizer_name=None,
                       attn_config={'attn_impl': 'torch', 'alibi': True,
                                    'attn_uses_sequence_id': uses_sequence_id})
    return ComposerMPTCausalLM(config, loss_fn='torch_crossentropy').train()  # forward returns logits


def test_attention_stays_inside_documents_end_to_end(tmp_path, tiny_tokenizer):
    convert_documents(DOCS, str(tmp_path / 'mds'), tiny_tokenizer, 32, progress=False,
                      verbose=False)
    spec = build_text_dataloader({'name': 'text', 'num_workers': 0, 'dataset': {
        'local': str(tmp_path / 'mds'), 'max_seq_len': 32, 'shuffle': False}}, tiny_tokenizer, 4)
    batch = next(iter(spec.dataloader))
    eos = tiny_tokenizer.eos_token_id
    ids, seq_id = batch['input_ids'][0], batch['sequence_id'][0]
    ends = (ids == eos).nonzero().flatten().tolist()
    assert ends and ends[0] < 30  # the first sample packs more than one document
    # sequence_id steps up right after every eos, and only there.
    steps = (seq_id[1:] != seq_id[:-1]).nonzero().flatten().tolist()
    assert steps == [e for e in ends if e < 31]

    first_end = ends[0]
    vocab = len(tiny_tokenizer)
    changed = {k: v.clone() for k, v in batch.items()}
    doc0 = (changed['input_ids'][0, :first_end] + 1) % vocab  # alter document 0, keep its eos
    changed['input_ids'][0, :first_end] = torch.where(doc0 == eos, (doc0 + 1) % vocab, doc0)
    changed['labels'] = changed['input_ids'].clone()
    later = slice(first_end + 1, 32)

    masked = model(tiny_tokenizer, True)
    with torch.no_grad():
        a, b = masked(batch)[0], masked(changed)[0]
    assert torch.allclose(a[later], b[later], atol=1e-6)       # later documents unaffected
    assert not torch.allclose(a[:first_end], b[:first_end])    # the edited document did change

    unmasked = model(tiny_tokenizer, False)
    with torch.no_grad():
        c, d = unmasked(batch)[0], unmasked(changed)[0]
    assert not torch.allclose(c[later], d[later], atol=1e-6)   # without it, attention leaks
    assert float(masked.loss(masked(batch), batch)) > 0
