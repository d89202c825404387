"""`foundry export gguf`: what the file holds, read back with gguf's own reader, and what is refused.

The numbers llama.cpp computes from these files are checked in test_gguf_llamacpp.py (slow, needs the
llama.cpp build); here: metadata as llama.cpp's MPT loader reads it (the real width and epsilon),
every tensor under llama.cpp's name with the checkpoint's values, q8_0 within its rounding, the
same file from a sharded checkpoint, a full one, a Hugging Face folder and S3, and one line per
refusal with no file left behind.
"""

from __future__ import annotations

import json
import os

import boto3
import numpy as np
import pytest

from foundry.cli import main as foundry_cli
from tests.checkpoint.helpers import tiny_mpt, write_full, write_meta, write_sharded
from tests.export.bpe import bpe_tokenizer

gguf = pytest.importorskip('gguf')

VARIANT = dict(d_model=32, n_heads=4, n_layers=2, expansion_ratio=3, norm_eps=1e-6, no_bias=False,
               tie_word_embeddings=False, vocab_size=320, max_seq_len=32,
               attn_config={'attn_impl': 'torch', 'attn_type': 'grouped_query_attention', 'kv_n_heads': 2,
                            'clip_qkv': 0.5, 'alibi_bias_max': 4})


def saved_run(tmp_path, kind='sharded', seed=0, tokenizer=True, **overrides):
    from foundry.checkpoint.meta import write_run_meta

    model = tiny_mpt(seed=seed, **{**VARIANT, **overrides})
    folder = tmp_path / 'checkpoints'
    name = 'ep0-ba4' if kind == 'sharded' else 'ep0-ba4-rank0.pt'
    (write_sharded if kind == 'sharded' else write_full)(str(folder / name), model.state_dict())
    if tokenizer:
        write_run_meta(str(folder), model.config, bpe_tokenizer())
    else:
        write_meta(str(folder), model.config)  # a WordLevel tokenizer
    return model, folder / name


def fields(reader) -> dict:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith('GGUF.')}


def test_metadata_and_weights_read_back(tmp_path):
    model, ckpt = saved_run(tmp_path)
    out = tmp_path / 'model.gguf'
    assert foundry_cli(['export', 'gguf', str(ckpt), str(out), '--outtype', 'f32']) == 0
    reader = gguf.GGUFReader(str(out))
    meta = fields(reader)
    assert meta['general.architecture'] == 'mpt'
    assert meta['mpt.context_length'] == 32 and meta['mpt.embedding_length'] == 32 and meta['mpt.block_count'] == 2
    assert meta['mpt.feed_forward_length'] == 96  # the real width (llama.cpp's converter writes 4 x d_model)
    assert meta['mpt.attention.head_count'] == 4 and meta['mpt.attention.head_count_kv'] == 2
    assert meta['mpt.attention.layer_norm_epsilon'] == pytest.approx(1e-6)  # the converter writes 1e-5
    assert meta['mpt.attention.max_alibi_bias'] == 4.0 and meta['mpt.attention.clamp_kqv'] == 0.5
    tok = bpe_tokenizer()
    assert meta['tokenizer.ggml.model'] == 'gpt2' and meta['tokenizer.ggml.pre'] == 'gpt-2'
    tokens, types = meta['tokenizer.ggml.tokens'], meta['tokenizer.ggml.token_type']
    assert len(tokens) == len(types) == 320
    assert tokens[:len(tok)] == tok.convert_ids_to_tokens(list(range(len(tok))))
    assert tokens[-1] == '[PAD319]' and types[-1] == gguf.TokenType.UNUSED
    assert types[0] == gguf.TokenType.CONTROL and tokens[0] == '<|endoftext|>'
    assert meta['tokenizer.ggml.eos_token_id'] == meta['tokenizer.ggml.bos_token_id'] == 0
    assert meta['tokenizer.ggml.add_bos_token'] is False
    merges = json.loads(tok.backend_tokenizer.to_str())['model']['merges']
    assert len(merges) > 20 and meta['tokenizer.ggml.merges'] == [m if isinstance(m, str) else ' '.join(m) for m in merges]

    state = model.state_dict()
    expected = {'token_embd.weight': 'transformer.wte.weight', 'output.weight': 'lm_head.weight',
                'output_norm.weight': 'transformer.norm_f.weight', 'output_norm.bias': 'transformer.norm_f.bias'}
    for i in range(2):
        for ours, theirs in (('attn_norm', 'norm_1'), ('attn_qkv', 'attn.Wqkv'), ('attn_output', 'attn.out_proj'),
                             ('ffn_norm', 'norm_2'), ('ffn_up', 'ffn.up_proj'), ('ffn_down', 'ffn.down_proj')):
            for kind in ('weight', 'bias'):
                expected[f'blk.{i}.{ours}.{kind}'] = f'transformer.blocks.{i}.{theirs}.{kind}'
    assert {t.name for t in reader.tensors} == set(expected)
    for t in reader.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert np.array_equal(np.asarray(t.data).reshape(state[expected[t.name]].shape), state[expected[t.name]].numpy())


def test_q8_0_f16_bf16_round_trip(tmp_path):
    model, ckpt = saved_run(tmp_path, seed=1)
    state = model.state_dict()
    for outtype, qtype, tolerance in (('q8_0', gguf.GGMLQuantizationType.Q8_0, 1 / 127),
                                      ('f16', gguf.GGMLQuantizationType.F16, 1e-3),
                                      ('bf16', gguf.GGMLQuantizationType.BF16, 1 / 128)):
        out = tmp_path / f'{outtype}.gguf'
        assert foundry_cli(['export', 'gguf', str(ckpt), str(out), '--outtype', outtype]) == 0
        reader = gguf.GGUFReader(str(out))
        assert fields(reader)['general.file_type'] == {'q8_0': 7, 'f16': 1, 'bf16': 32}[outtype]
        for t in reader.tensors:
            hf = {'token_embd': 'transformer.wte', 'output': 'lm_head'}.get(t.name.rsplit('.', 1)[0])
            if hf is None and '.attn_qkv.weight' not in t.name:
                continue
            hf = hf or f'transformer.blocks.{t.name.split(".")[1]}.attn.Wqkv'
            original = state[f'{hf}.weight'].numpy()
            assert t.tensor_type == qtype, t.name  # every matrix here splits into q8_0 blocks of 32
            back = gguf.quants.dequantize(np.asarray(t.data), qtype).reshape(original.shape)
            # Each q8_0 block keeps its largest |value| / 127 as the step: errors stay under half a step.
            assert np.abs(back - original).max() <= tolerance * np.abs(original).max(), (outtype, t.name)
        norms = [t for t in reader.tensors if t.name.endswith('_norm.weight') or t.name.endswith('.bias')]
        assert norms and all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in norms)


def test_full_checkpoint_and_hf_folder_give_the_same_file(tmp_path):
    from foundry.data.tokenizer import save_tokenizer

    model, sharded = saved_run(tmp_path / 'a', kind='sharded', seed=2)
    _, full = saved_run(tmp_path / 'b', kind='full', seed=2)
    hf = tmp_path / 'hf'
    model.save_pretrained(hf)
    save_tokenizer(bpe_tokenizer(), str(hf))
    outputs = []
    for src in (sharded, full, hf):
        out = tmp_path / f'{len(outputs)}.gguf'
        assert foundry_cli(['export', 'gguf', str(src), str(out), '--outtype', 'q8_0']) == 0
        outputs.append({t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(str(out)).tensors})
    assert outputs[0] == outputs[1] == outputs[2]


@pytest.mark.parametrize('overrides, line', [
    (dict(norm_type='rmsnorm'), "norm_type rmsnorm: llama.cpp's MPT graph always applies LayerNorm"),
    (dict(attn_config={'attn_impl': 'torch', 'softmax_scale': 0.5}),
     "attn_config.softmax_scale 0.5: llama.cpp's MPT graph always scales attention by 1/sqrt(head_dim) = 0.353553"),
    (dict(attn_config={'attn_impl': 'torch', 'qk_ln': True}), "attn_config.qk_ln: llama.cpp's MPT graph aborts"),
    (dict(logit_scale=0.5), "logit_scale 0.5: llama.cpp's MPT graph does not scale the logits"),
    (dict(tokenizer=False), 'tokenizer model WordLevel: GGUF export writes byte-level BPE tokenizers only'),
    (dict(vocab_size=200), "but the model's vocab_size is 200: llama.cpp needs one embedding row per token"),
])
def test_refusals_are_one_line_and_write_nothing(tmp_path, capsys, overrides, line):
    _, ckpt = saved_run(tmp_path, **{'attn_config': {'attn_impl': 'torch'}, **overrides})
    out = tmp_path / 'model.gguf'
    assert foundry_cli(['export', 'gguf', str(ckpt), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and err.startswith('foundry: config error: cannot export to GGUF: ')
    assert line in err
    print(err.strip())
    assert not any(p.name.startswith('model.gguf') for p in tmp_path.iterdir())


def test_export_from_s3(tmp_path, make_bucket, s3_endpoint):
    model, ckpt = saved_run(tmp_path, seed=3)
    make_bucket('gguf-export')
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    folder = ckpt.parent
    for root, _, files in os.walk(folder):
        for file in files:
            path = os.path.join(root, file)
            client.upload_file(path, 'gguf-export', f'run/checkpoints/{os.path.relpath(path, folder)}')
    out = tmp_path / 'model.gguf'
    assert foundry_cli(['export', 'gguf', f's3://gguf-export/run/checkpoints/{ckpt.name}', str(out),
                        '--outtype', 'f32']) == 0
    tensors = {t.name: t for t in gguf.GGUFReader(str(out)).tensors}
    assert np.array_equal(np.asarray(tensors['token_embd.weight'].data).reshape(320, 32),
                          model.state_dict()['transformer.wte.weight'].numpy())
    assert foundry_cli(['export', 'gguf', 's3://gguf-export/run/checkpoints/ep0-ba9', str(tmp_path / 'x.gguf')]) == 2
