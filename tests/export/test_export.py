"""`foundry export hf`: sharded and full Composer checkpoints, local and on S3, to folders transformers loads,
with the same logits as foundry's model on the same input."""

from __future__ import annotations

import json
import os

import boto3
import pytest
import torch
from safetensors import safe_open

from foundry.checkpoint.errors import CheckpointError
from foundry.checkpoint.remote import download_checkpoint
from foundry.cli import main as foundry_cli
from foundry.export.hf import export_hf, transformers_incompatibilities
from foundry.models.mpt.configuration import DTYPE_KEY
from tests.checkpoint.helpers import tiny_mpt, tokenizer_files, write_full, write_meta, write_sharded

IDS = torch.randint(0, 128, (2, 32), generator=torch.Generator().manual_seed(0))


def saved_run(tmp_path, kind: str, seed: int = 0):
    """A save folder as a foundry run leaves it: one checkpoint, the latest pointer, hf_meta."""
    model = tiny_mpt(seed=seed)
    folder = tmp_path / 'checkpoints'
    state = {k: v for k, v in model.state_dict().items() if k != 'lm_head.weight'}
    name = 'ep0-ba8' if kind == 'sharded' else 'ep0-ba8-rank0.pt'
    if kind == 'sharded':
        write_sharded(str(folder / name), state)
    else:
        write_full(str(folder / name), state)
    os.symlink(name, folder / 'latest-rank0.pt')
    write_meta(str(folder), model.config)
    return model, folder, name


def max_logit_difference(model, out_dir) -> float:
    from transformers import AutoModelForCausalLM

    theirs = AutoModelForCausalLM.from_pretrained(str(out_dir)).eval()
    assert type(theirs).__name__ == 'MptForCausalLM'  # transformers' own class, no remote code
    with torch.no_grad():
        return (theirs(IDS).logits - model(input_ids=IDS).logits).abs().max().item()


@pytest.mark.parametrize('kind', ['sharded', 'full'])
def test_export_loads_in_transformers_with_foundry_logits(kind, tmp_path):
    model, folder, name = saved_run(tmp_path, kind)
    out = tmp_path / 'hf'
    export_hf(str(folder / 'latest-rank0.pt'), str(out))
    # The config, one weights file, and the tokenizer as this transformers saves it.
    assert {'tokenizer.json', 'tokenizer_config.json'} <= tokenizer_files(str(folder / 'hf_meta'))
    assert set(os.listdir(out)) == {'config.json', 'model.safetensors'} | tokenizer_files(str(folder / 'hf_meta'))
    with open(out / 'config.json') as f:
        assert json.load(f)['architectures'] == ['MPTForCausalLM']  # how llama.cpp's converter recognises MPT
    diff = max_logit_difference(model, out)
    print(f'{kind}: max |logit difference| transformers vs foundry: {diff:.3g}')
    assert diff < 1e-5
    from transformers import AutoModelForCausalLM, AutoTokenizer

    generated = AutoModelForCausalLM.from_pretrained(str(out)).generate(IDS[:1, :4], max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, 10)
    assert AutoTokenizer.from_pretrained(str(out)).eos_token == '<|endoftext|>'
    with open(out / 'tokenizer_config.json') as f:
        # transformers 5's name for a plain tokenizer.json tokenizer, unknown to 4.x: not written.
        assert json.load(f)['tokenizer_class'] != 'TokenizersBackend'


def test_bf16_export_in_several_shards(tmp_path, capsys):
    model, folder, name = saved_run(tmp_path, 'sharded', seed=1)
    out = tmp_path / 'hf'
    # Small groups: several safetensors shards and an index, as for a 7B model.
    export_hf(str(folder / name), str(out), dtype='bf16', max_shard_bytes=20_000)
    shards = sorted(f for f in os.listdir(out) if f.endswith('.safetensors'))
    assert len(shards) > 1 and shards[0] == f'model-00001-of-{len(shards):05d}.safetensors'
    with open(out / 'model.safetensors.index.json') as f:
        weight_map = json.load(f)['weight_map']
    assert set(weight_map) == {k for k in model.state_dict() if k != 'lm_head.weight'}
    with safe_open(str(out / shards[0]), framework='pt') as f:
        assert all(f.get_tensor(k).dtype == torch.bfloat16 for k in f.keys())
    with open(out / 'config.json') as f:
        config = json.load(f)
    # Under this transformers' key (5: dtype) and under torch_dtype, which is what 4.x reads.
    assert config[DTYPE_KEY] == config['torch_dtype'] == 'bfloat16'
    from transformers import AutoConfig

    assert getattr(AutoConfig.from_pretrained(str(out)), DTYPE_KEY) == torch.bfloat16
    assert max_logit_difference(model.to(torch.bfloat16).float(), out) < 1e-2
    assert 'exported' in capsys.readouterr().out


def test_export_from_s3_follows_the_pointer_and_brings_hf_meta(tmp_path, make_bucket, s3_endpoint):
    bucket = make_bucket('export-test')
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    for kind in ('sharded', 'full'):
        model, folder, name = saved_run(tmp_path / kind, kind, seed=2)
        prefix = f'runs/{kind}/checkpoints'
        for root, _, files in os.walk(folder):
            for file in files:
                path = os.path.join(root, file)
                if os.path.islink(path):
                    continue
                client.upload_file(path, 'export-test', f'{prefix}/{os.path.relpath(path, folder)}')
        client.put_object(Bucket='export-test', Key=f'{prefix}/latest-rank0.pt.symlink', Body=f'{prefix}/{name}'.encode())

        local = download_checkpoint(f'{bucket}/{prefix}/latest-rank0.pt', str(tmp_path / f'dl-{kind}'))
        assert os.path.basename(local) == name
        assert os.path.isfile(os.path.join(os.path.dirname(local), 'hf_meta', 'config.json'))
        out = tmp_path / f'hf-{kind}'
        assert foundry_cli(['export', 'hf', f'{bucket}/{prefix}/{name}', str(out)]) == 0
        assert max_logit_difference(model, out) < 1e-5

    with pytest.raises(CheckpointError, match='checkpoint not found: s3://export-test/runs/sharded/checkpoints/ep0-ba9'):
        download_checkpoint(f'{bucket}/runs/sharded/checkpoints/ep0-ba9')
    assert foundry_cli(['export', 'hf', f'{bucket}/nothing/here', str(tmp_path / 'x')]) == 2


def test_export_says_what_transformers_cannot_load(tmp_path, capsys):
    from tests.checkpoint.helpers import tiny_mpt_config

    assert transformers_incompatibilities(tiny_mpt_config()) == []
    problems = transformers_incompatibilities(tiny_mpt_config(
        expansion_ratio=2, attn_config={'attn_type': 'grouped_query_attention', 'kv_n_heads': 1, 'qk_ln': True}))
    assert problems == ['expansion_ratio 2 (transformers hard-codes 4)',
                        'grouped_query_attention (transformers implements multi-head attention only)',
                        'qk_ln (transformers has no query/key LayerNorm)']
    model = tiny_mpt(expansion_ratio=2)
    folder = tmp_path / 'checkpoints'
    write_sharded(str(folder / 'ep0-ba2'), {k: v for k, v in model.state_dict().items() if k != 'lm_head.weight'})
    write_meta(str(folder), model.config)
    export_hf(str(folder / 'ep0-ba2'), str(tmp_path / 'hf'))
    assert "warning: transformers' native MptForCausalLM cannot represent this model (expansion_ratio 2" in \
        capsys.readouterr().out
    # foundry's own class loads it, with the same logits.
    from foundry.models.mpt.modeling import MPTForCausalLM

    reloaded = MPTForCausalLM.from_pretrained(str(tmp_path / 'hf')).eval()
    with torch.no_grad():
        assert torch.allclose(reloaded(input_ids=IDS).logits, model(input_ids=IDS).logits, atol=1e-6)
