"""`foundry generate SRC --prompt ...` on a real sharded checkpoint and a Hugging Face folder."""

from __future__ import annotations

import pytest
import torch

from foundry.cli import main as foundry_cli
from tests.checkpoint.helpers import write_sharded
from tests.export.bpe import bpe_tokenizer


def saved(tmp_path, **overrides):
    from foundry.checkpoint.meta import write_run_meta
    from tests.checkpoint.helpers import tiny_mpt

    model = tiny_mpt(seed=0, d_model=32, n_heads=4, vocab_size=320, max_seq_len=16, **overrides)
    folder = tmp_path / 'checkpoints'
    write_sharded(str(folder / 'ep0-ba4'), model.state_dict())
    tokenizer = bpe_tokenizer()
    write_run_meta(str(folder), model.config, tokenizer)
    return model, tokenizer, folder / 'ep0-ba4'


def test_greedy_stream_equals_generate_past_the_training_length(tmp_path, capsys):
    model, tokenizer, ckpt = saved(tmp_path)
    prompt = 'the quick brown fox'
    assert foundry_cli(['generate', str(ckpt), '--prompt', prompt, '--max_new_tokens', '24']) == 0
    out, err = capsys.readouterr()
    ids = tokenizer(prompt, return_tensors='pt')['input_ids']
    expected = model.generate(ids, max_new_tokens=24, do_sample=False, pad_token_id=0, eos_token_id=0)
    # ALiBi: 4 + 24 tokens on a model trained at 16 runs, with a note, not a refusal.
    assert out.strip() == tokenizer.decode(expected[0]).strip()
    new = expected.shape[1] - ids.shape[1]
    assert 'past the training length 16' in err and f'[{new} new tokens; prompt {ids.shape[1]} tokens; greedy]' in err


def test_gqa_checkpoint(tmp_path, capsys):
    # transformers 5's own MptConfig refuses grouped_query_attention: the tokenizer must load without it.
    _, _, ckpt = saved(tmp_path, attn_config={'attn_impl': 'torch', 'attn_type': 'grouped_query_attention',
                                              'kv_n_heads': 2})
    assert foundry_cli(['generate', str(ckpt), '--prompt', 'the fox', '--max_new_tokens', '4']) == 0
    assert capsys.readouterr().out.startswith('the fox')


def test_sampling_is_seeded_and_hf_folder_works(tmp_path, capsys):
    model, tokenizer, ckpt = saved(tmp_path)
    model.save_pretrained(tmp_path / 'hf')
    tokenizer.save_pretrained(tmp_path / 'hf')  # plain transformers: 4.x's tokenizer then returns token_type_ids
    args = ['--prompt', 'again and', '--max_new_tokens', '8', '--do_sample', '--temperature', '0.8', '--top_k', '20',
            '--top_p', '0.9', '--repetition_penalty', '1.1', '--seed', '3']
    texts = []
    for src in (ckpt, tmp_path / 'hf', ckpt):
        assert foundry_cli(['generate', str(src), *args]) == 0
        texts.append(capsys.readouterr().out)
    assert texts[0] == texts[1] == texts[2] and texts[0].startswith('again and')


@pytest.mark.parametrize('extra, line', [
    (['--max_new_tokens', '24'], 'past max_seq_len 16: this model uses learned position embeddings'),
    (['--temperature', '0.7'], '--temperature applies only when sampling: add --do_sample'),
])
def test_refusals_are_one_line(tmp_path, capsys, extra, line):
    _, _, ckpt = saved(tmp_path, learned_pos_emb=True, attn_config={'attn_impl': 'torch', 'alibi': False})
    assert foundry_cli(['generate', str(ckpt), '--prompt', 'the quick brown fox', *extra]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and line in err
    print(err.strip())
