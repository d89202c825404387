"""precision: amp_fp8: config keys, the one-line refusals, and which Linear layers go float8.

No part here can run float8 (no GPU, no torchao): the refusals are reached by monkeypatching
torch.cuda.is_available / get_device_capability / get_device_name, torch.__version__ and
foundry.fp8._torchao_version to describe the machine each test needs. Layer selection is a pure
function of the module tree, checked on tiny MPTs built on the meta device.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import foundry.fp8 as fp8
from foundry.config.errors import ConfigError
from foundry.config.load import load_config
from foundry.fp8 import check_fp8_environment, fp8_linear_names, swap_linears, torchao_release_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'models'))
from mpt_helpers import tiny_config  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / 'fixtures' / 'tiny.yaml')


def machine(monkeypatch, cuda=True, capability=(9, 0), name='NVIDIA H100 80GB HBM3', torch_version=None,
            torchao='absent'):
    """Make this process look like the described machine to foundry.fp8."""
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda)
    monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: name)
    if torch_version is not None:
        monkeypatch.setattr(torch, '__version__', torch_version)
    monkeypatch.setattr(fp8, '_torchao_version', lambda: None if torchao == 'absent' else torchao)


def refusal(monkeypatch, **kwargs) -> str:
    machine(monkeypatch, **kwargs)
    with pytest.raises(ConfigError) as e:
        check_fp8_environment()
    message = str(e.value)
    assert '\n' not in message and message.startswith('precision amp_fp8'), message
    return message


# --------------------------------------------------------------------------- config keys

def test_amp_fp8_and_recipe_are_valid_config():
    cfg = load_config(TINY, ['precision=amp_fp8', 'fp8_config.recipe=tensorwise'])
    assert cfg.precision == 'amp_fp8' and cfg.fp8_config.recipe == 'tensorwise'
    assert load_config(TINY, ['precision=amp_fp8']).fp8_config is None  # the recipe defaults at run time


@pytest.mark.parametrize('overrides,match', [
    (['fp8_config.recipe=rowwise'], r'`fp8_config` applies to `precision: amp_fp8` only'),
    (['precision=amp_fp8', 'fp8_config.recipe=blockwise'], r"`fp8_config.recipe` is 'blockwise'; expected one of "
                                                           r"'rowwise', 'tensorwise', 'rowwise_with_gw_hp'"),
    (['precision=amp_fp8', 'fp8_config.fp8_format=HYBRID'], r'TransformerEngine setting.*fp8_config.recipe'),
    (['precision=amp_fp8', 'fp8_config.recipie=rowwise'], r'did you mean `fp8_config.recipe`'),
])
def test_bad_fp8_config_is_one_config_error(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(TINY, overrides)


# --------------------------------------------------------------------------- refusals

def test_refused_without_a_cuda_device(monkeypatch):
    message = refusal(monkeypatch, cuda=False)
    assert 'needs a CUDA GPU' in message and 'use precision: amp_bf16' in message


def test_refused_below_compute_capability_8_9(monkeypatch):
    message = refusal(monkeypatch, capability=(8, 0), name='NVIDIA A100-SXM4-80GB')
    assert 'compute capability 8.9+' in message and 'NVIDIA A100-SXM4-80GB is 8.0' in message


@pytest.mark.parametrize('torch_version,release', [('2.11.0+cu130', '0.17.0'), ('2.7.0+cu126', '0.12.0'),
                                                   ('2.10.1', '0.16.0'), ('2.12.0', '0.17.0')])
def test_refused_without_torchao_naming_the_release_to_install(monkeypatch, torch_version, release):
    message = refusal(monkeypatch, capability=(8, 9), torch_version=torch_version)
    major_minor = '.'.join(torch_version.split('+')[0].split('.')[:2])
    assert f'torchao is not installed: pip install torchao=={release} (the release for torch {major_minor})' in message


def test_refused_when_torchao_needs_a_newer_torch(monkeypatch):
    message = refusal(monkeypatch, torch_version='2.7.0', torchao='0.18.0')
    assert 'torchao 0.18.0 needs torch >= 2.9 and this is torch 2.7.0: pip install torchao==0.12.0' in message


def test_refused_on_a_torch_older_than_foundry_supports_for_fp8(monkeypatch):
    assert 'needs torch >= 2.7' in refusal(monkeypatch, torch_version='2.6.0', torchao='0.13.0')


def test_accepted_on_hopper_with_a_matching_torchao(monkeypatch):
    machine(monkeypatch, capability=(9, 0), torch_version='2.11.0', torchao='0.17.0')
    check_fp8_environment()
    machine(monkeypatch, capability=(8, 9), torch_version='2.7.0', torchao='0.12.0')  # Ada, the stable stack
    check_fp8_environment()


def test_release_table_covers_both_stacks_and_newer_torch():
    assert torchao_release_for((2, 11)) == '0.17.0' and torchao_release_for((2, 7)) == '0.12.0'
    assert torchao_release_for((2, 13)) == '0.17.0'  # ABI-stable from 0.17 on


def test_train_refuses_before_any_process_group(monkeypatch, capsys):
    """Through launch/train.py's entry point: one line on stderr, exit status 2, on this CPU machine."""
    from foundry.train import main

    machine(monkeypatch, cuda=False)
    assert main([TINY, 'precision=amp_fp8']) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('foundry: config error: precision amp_fp8 needs a CUDA GPU'), err


def test_plan_runs_amp_fp8_as_bf16_plus_the_recipe(monkeypatch):
    from foundry.train import plan_run

    machine(monkeypatch, torch_version='2.11.0', torchao='0.17.0')
    plan = plan_run(load_config(TINY, ['precision=amp_fp8']))
    assert (plan.device, plan.precision, plan.fp8_recipe) == ('gpu', 'amp_bf16', 'rowwise')
    plan = plan_run(load_config(TINY, ['precision=amp_fp8', 'fp8_config.recipe=tensorwise']))
    assert plan.fp8_recipe == 'tensorwise'
    assert plan_run(load_config(TINY, ['precision=amp_bf16'])).fp8_recipe is None


# --------------------------------------------------------------------------- which layers go float8

def _meta_mpt(**overrides):
    from foundry.models import ComposerMPTCausalLM

    return ComposerMPTCausalLM(tiny_config(init_device='meta', **overrides))


def test_block_linears_convert_but_not_the_head():
    model = _meta_mpt(tie_word_embeddings=False)  # d_model 32, ffn 128: every block dim divides by 16
    assert all(p.device.type == 'meta' for p in model.parameters())
    names = fp8_linear_names(model)
    assert names == [f'model.transformer.blocks.{i}.{m}' for i in range(2)
                     for m in ('attn.Wqkv', 'attn.out_proj', 'ffn.up_proj', 'ffn.down_proj')]
    assert 'model.lm_head' in dict(model.named_modules())  # present, and left in bf16
    assert fp8_linear_names(_meta_mpt()) == names  # tied: no head module at all


def test_dims_not_divisible_by_16_stay_bf16():
    # d_model 48 with one KV head of 12: Wqkv is 48 -> 48 + 2 * 12 = 72 outputs (72 % 16 = 8).
    model = _meta_mpt(d_model=48, n_heads=4, attn_config={'attn_type': 'grouped_query_attention', 'kv_n_heads': 1})
    names = fp8_linear_names(model)
    assert not any(n.endswith('Wqkv') for n in names)
    assert sum(n.endswith(('out_proj', 'up_proj', 'down_proj')) for n in names) == 6


def test_a_linear_sharing_an_embedding_weight_stays_bf16():
    emb = nn.Embedding(64, 32, device='meta')
    out = nn.Linear(32, 64, bias=False, device='meta')
    out.weight = emb.weight
    model = nn.ModuleDict({'emb': emb, 'out': out, 'mlp': nn.Linear(32, 32, device='meta')})
    assert fp8_linear_names(model) == ['mlp']


class FakeFloat8Linear(nn.Linear):
    """What torchao's convert does, minus float8: a new module per Linear sharing its parameters."""

    @classmethod
    def from_linear(cls, old: nn.Linear) -> 'FakeFloat8Linear':
        with torch.device('meta'):
            new = cls(old.in_features, old.out_features, bias=old.bias is not None)
        new.weight, new.bias = old.weight, old.bias
        return new


def _fake_convert(model: nn.Module, names: set[str]) -> None:
    for name in names:
        parent, _, child = name.rpartition('.')
        owner = model.get_submodule(parent)
        setattr(owner, child, FakeFloat8Linear.from_linear(getattr(owner, child)))


def test_swapped_linears_keep_the_model_init_attributes():
    """A meta build converted before FSDP's param_init_fn must initialise exactly as an unconverted one."""
    plain, swapped = _meta_mpt(), _meta_mpt()
    names = swap_linears(swapped, _fake_convert)
    modules = dict(swapped.named_modules())
    assert names and all(type(modules[n]) is FakeFloat8Linear for n in names)
    assert fp8_linear_names(swapped) == []  # converted layers are not converted twice
    assert any(getattr(modules[n], '_is_residual', False) for n in names)
    for model in (plain, swapped):
        model.to_empty(device='cpu')
        torch.manual_seed(0)
        model.model.init_weights()
    for (name, a), (_, b) in zip(plain.named_parameters(), swapped.named_parameters()):
        assert torch.equal(a, b), name


def test_convert_refuses_an_unknown_recipe():
    with pytest.raises(ConfigError, match='fp8_config.recipe'):
        fp8.convert_to_fp8(nn.Linear(16, 16), 'blockwise')
