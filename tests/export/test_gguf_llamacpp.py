"""foundry's GGUF files, and llama.cpp's own converter run on foundry's Hugging Face export, checked in the real llama.cpp.

llama-cpp-python 0.3.36 is compiled from its source package once per machine by
`python launch/bench/llamacpp_venv.py` into a cache outside the clone; this test only uses it (and
skips, naming that command, where the cache is missing). Tiny random models with the GPT-NeoX
tokenizer or a small byte-level BPE (trained at 128 tokens) are compared with foundry's own forward pass:
  f32: every logit over 64 tokens (1x) and 256 tokens (2x the training length) within 1e-3 of the
       largest |logit|, and the same 32 greedy tokens after a 64- and a 224-token prompt
  q8_0: the same top-1 token at >= 95% of 256 positions
  the default MPT through both writers; GQA + biases + clip_qkv + untied + expansion_ratio 3 +
  eps 1e-6 (which llama.cpp's converter writes as 4x and 1e-5) and learned positions through foundry's.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / 'launch' / 'bench'))
import gguf_harness as harness  # noqa: E402
import llamacpp_venv  # noqa: E402

NEOX = '/work/shared/tokenizers/gpt-neox-20b/tokenizer.json'
SEQ = 128

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not llamacpp_venv.is_ready(),
                       reason=f'llama.cpp is not built in {llamacpp_venv.cache_dir()}: run '
                              f'`{llamacpp_venv.BUILD_COMMAND}` once (15-40 minutes on 2 cores)'),
    pytest.mark.skipif(not os.path.isfile(NEOX), reason=f'GPT-NeoX tokenizer not found at {NEOX}'),
]

VARIANTS = {
    'default': {},
    'gqa_bias_clip_untied_ffn3_eps': dict(expansion_ratio=3, norm_eps=1e-6, no_bias=False, tie_word_embeddings=False,
                                          attn_config={'attn_impl': 'torch', 'attn_type': 'grouped_query_attention',
                                                       'kv_n_heads': 2, 'clip_qkv': 0.6, 'alibi_bias_max': 4}),
    'learned_positions': dict(learned_pos_emb=True, attn_config={'attn_impl': 'torch', 'alibi': False}),
}


@pytest.fixture(scope='module')
def parity(tmp_path_factory):
    from foundry.checkpoint.meta import write_run_meta
    from foundry.data.tokenizer import build_tokenizer, save_tokenizer
    from foundry.export.gguf import export_gguf
    from foundry.export.hf import export_hf
    from tests.checkpoint.helpers import write_full
    from tests.export.bpe import bpe_tokenizer

    work = tmp_path_factory.mktemp('gguf')
    neox = build_tokenizer(NEOX)
    text = (REPO / 'README.md').read_text(encoding='utf-8')[:6000]
    jobs, models = [], {}
    for seed, (name, overrides) in enumerate(VARIANTS.items()):
        # The default model has GPT-NeoX's tokenizer, which llama.cpp's converter recognises, and goes through a
        # Composer checkpoint and `foundry export hf` (what the converter gets); the variants have a small
        # byte-level BPE and an HF folder (their files stay small; the converter cannot write them anyway).
        tokenizer = neox if name == 'default' else bpe_tokenizer()
        tokens = tokenizer(text, add_special_tokens=False)['input_ids'][:2 * SEQ]
        model = harness.tiny_model(seed, 50432 if name == 'default' else 320, SEQ,
                                   train_on=tokens if name == 'default' else None, **overrides)
        hf = work / f'hf-{name}'
        if name == 'default':
            src = write_full(str(work / 'checkpoints' / 'ep0-ba1-rank0.pt'), model.state_dict())
            write_run_meta(str(work / 'checkpoints'), model.config, tokenizer)
            export_hf(src, str(hf))
        else:
            model.save_pretrained(hf)
            save_tokenizer(tokenizer, str(hf))
            src = str(hf)
        n = SEQ if model.config.learned_pos_emb else 2 * SEQ
        # foundry's side once per model: logits over n tokens, 32 greedy tokens after 64 and n - 32 tokens.
        models[name] = (harness.foundry_logits(model, tokens[:n]), n,
                        [harness.foundry_greedy(model, tokens[:p], 32) for p in (64, n - 32)])
        files = {f'foundry-{name}-{t}': export_gguf(src, str(work / f'{name}-{t}.gguf'), outtype=t)
                 for t in (('f32', 'q8_0') if name == 'default' else ('f32',))}
        if name == 'default':
            done = harness.run_converter(str(hf), str(work / 'llamacpp-default-f32.gguf'), 'f32')
            assert done.returncode == 0, done.stderr[-3000:]
            files['llamacpp-default-f32'] = str(work / 'llamacpp-default-f32.gguf')
        for job, path in files.items():
            jobs.append({'name': job, 'model': path, 'n_ctx': n, 'prompt': tokens[:n], 'text': text[:2000],
                         'greedy': 32, 'greedy_prompts': [tokens[:64], tokens[:n - 32]]})
    results = harness.run_llamacpp(jobs, work / 'llamacpp')
    return {'models': models, 'results': results, 'text': text[:2000], 'tokenizer': neox}


@pytest.mark.parametrize('job', ['foundry-default-f32', 'llamacpp-default-f32',
                                 'foundry-gqa_bias_clip_untied_ffn3_eps-f32', 'foundry-learned_positions-f32'])
def test_f32_logits_and_greedy_tokens_match_foundry(parity, job):
    ours, n, greedy = parity['models'][job.split('-')[1]]
    theirs = parity['results'][job]
    one_x = harness.max_relative_difference(ours[:64], theirs['logits'][:64])
    whole = harness.max_relative_difference(ours, theirs['logits'])
    print(f'{job}: max rel logit diff 64 tokens {one_x:.2e}, {n} tokens ({n / SEQ:g}x max_seq_len) {whole:.2e}')
    assert one_x < 1e-3 and whole < 1e-3
    assert theirs['greedy'].tolist() == greedy


def test_q8_0_top1_agreement(parity):
    ours, n, _ = parity['models']['default']
    agreement = harness.top1_agreement(ours, parity['results']['foundry-default-q8_0']['logits'])
    print(f'q8_0 top-1 agreement over {n} positions: {agreement:.3f}')
    assert n == 256 and agreement >= 0.95


def test_llamacpp_tokenizes_like_the_tokenizer(parity):
    expected = parity['tokenizer'](parity['text'], add_special_tokens=False)['input_ids']
    for job in ('foundry-default-f32', 'llamacpp-default-f32'):
        assert parity['results'][job]['text_ids'].tolist() == expected, job
