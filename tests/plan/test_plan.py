"""foundry plan: parameter counts, the FLOPs formula and MFU against llm-foundry's published table,
MPT-7B's training time against its model card, memory against the card's setup and against what
autograd actually saves, durations, checkpoints, and the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from foundry.config.load import load_config
from foundry.plan import GPUS, Assumptions, format_plan, plan
from foundry.plan.memory import activations, layer_activation_bytes, optimizer_states
from foundry.plan.model import ModelShape, model_shape
from foundry.plan.throughput import default_mfu, flops_per_token, parse_span

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML = {size: os.path.join(ROOT, 'yamls', 'pretrain', f'mpt-{size}.yaml') for size in ('125m', '1b', '7b')}
DAY = 86400.0


def cfg(size: str, *overrides: str):
    return load_config(YAML[size], list(overrides))


@pytest.fixture(scope='module')
def cfg7b():
    return cfg('7b')


# --------------------------------------------------------------------------- parameters and FLOPs

@pytest.mark.parametrize('overrides', [
    (),
    ('model.no_bias=false', 'model.norm_type=layernorm'),
    ('model.tie_word_embeddings=false', 'model.learned_pos_emb=true', 'model.attn_config.alibi=false'),
    ('model.attn_config.qk_ln=true',),
    ('model.attn_config.attn_type=grouped_query_attention', 'model.attn_config.kv_n_heads=4'),
    ('model.norm_type=rmsnorm', 'model.no_bias=false', 'model.expansion_ratio=3'),
])
def test_parameter_count_matches_a_meta_build(overrides):
    from foundry.models import MPTConfig, count_parameters, matmul_parameters

    c = cfg('125m', *overrides)
    m = model_shape(c)
    mpt = MPTConfig(**{k: v for k, v in c.model.items() if k not in ('name', 'loss_fn')})
    assert m.parameters == count_parameters(mpt)
    assert m.matmul_parameters == matmul_parameters(mpt)


def test_mpt7b_has_the_cards_parameter_count(cfg7b):
    m = model_shape(cfg7b)
    assert m.parameters == 6_649_286_656  # "6.7B" on the card
    assert (m.d_model, m.n_layers, m.n_heads, m.vocab_size, m.seq_len) == (4096, 32, 32, 50432, 2048)


def test_flops_formula_is_foundrys_training_formula(cfg7b):
    from foundry.models import MPTConfig
    from foundry.models.flops import flops_per_token as model_flops_per_token

    m = model_shape(cfg7b)
    mpt = MPTConfig(**{k: v for k, v in cfg7b.model.items() if k != 'name'})
    assert flops_per_token(m) == model_flops_per_token(mpt, 2048, n_params=m.matmul_parameters)
    assert flops_per_token(m) == 6 * m.parameters + 12 * 32 * 4096 * 2048


# llm-foundry's published table: (yaml, gpu, MFU, tokens/s/GPU).
PUBLISHED = [
    ('7b', 'h100', 0.464, 10_643),
    ('7b', 'a100-40gb', 0.509, 3_679),
    ('1b', 'a100-40gb', 0.562, 19_271),
    ('1b', 'h100', 0.418, 45_455),
    ('125m', 'a100-40gb', 0.428, 136_334),
    ('125m', 'a100-80gb', 0.448, 142_830),
]


@pytest.mark.parametrize('size,gpu,mfu,published', PUBLISHED)
def test_throughput_reproduces_llm_foundrys_table(size, gpu, mfu, published):
    p = plan(cfg(size), 8, gpu, mfu)
    assert p.tokens_per_s_gpu == pytest.approx(published, rel=0.10)
    # Tighter than the brief's 10%: the formula is the one the table was computed with (the 125m rows
    # are ~1% off because llm-foundry's 125m used a 50,368-token vocabulary, ours 50,432).
    assert p.tokens_per_s_gpu == pytest.approx(published, rel=0.015)
    assert p.tokens_per_s == pytest.approx(8 * p.tokens_per_s_gpu)


def test_other_flops_formulas_would_miss_the_125m_row():
    m = model_shape(cfg('125m'))
    peak_tokens = 0.428 * GPUS['a100-40gb'].peak_flops
    causal_half = 6 * m.matmul_parameters + 6 * m.n_layers * m.d_model * m.seq_len
    no_attention = 6 * m.matmul_parameters
    for flops in (causal_half, no_attention):
        assert peak_tokens / flops / 136_334 > 1.10


def test_default_mfu_comes_from_the_nearest_published_row():
    assert default_mfu(6_649_286_656, GPUS['h100'], 8)[0] == 0.464
    assert default_mfu(6_649_286_656, GPUS['h100'], 1024)[0] == 0.422
    assert default_mfu(6_649_286_656, GPUS['h200'], 8)[0] == 0.464  # same chip as H100
    assert default_mfu(6_649_286_656, GPUS['a100-40gb'], 440)[0] == 0.501
    assert default_mfu(1.3e9, GPUS['a100-80gb'], 8)[0] == 0.562  # A100 rows, any memory size
    assert default_mfu(125e6, GPUS['a100-80gb'], 8)[0] == 0.448  # exact GPU kind preferred
    mfu, source = default_mfu(70e9, GPUS['h100'], 64)  # nothing within 3x: the fallback
    assert mfu == Assumptions().fallback_mfu and 'no published' in source


# --------------------------------------------------------------------------- MPT-7B: 440 A100-40GB, ~9.5 days

# The card: 1T tokens (277,433 batches of 1760 x 2048) on 440 A100-40GB in about 9.5 days. At
# 4.3117e10 FLOPs per token that is 1.0e12 * 4.3117e10 / (9.5 days * 440 * 312 TFLOP/s) = 38.3% MFU,
# below the 50.1% llm-foundry measured for the 7b on 128 A100s: the wall-clock 9.5 days also holds
# evaluation, checkpointing, and restarts after the hardware failures the MPT-7B post reports.
IMPLIED_MFU_7B = 0.383


def test_mpt7b_card_time_at_the_implied_mfu(cfg7b):
    p = plan(cfg7b, 440, 'a100-40gb', IMPLIED_MFU_7B)
    assert p.duration.tokens == pytest.approx(1e12, rel=1e-5)
    assert p.duration_s / DAY == pytest.approx(9.5, rel=0.10)
    implied = p.duration.tokens * p.flops_per_token / (9.5 * DAY * 440 * GPUS['a100-40gb'].peak_flops)
    assert implied == pytest.approx(IMPLIED_MFU_7B, abs=0.001)
    assert 0.30 < implied < 0.55  # a plausible MFU for FSDP on A100s


def test_mpt7b_card_time_at_the_default_mfu(cfg7b):
    p = plan(cfg7b, 440, 'a100-40gb', None)
    assert p.mfu == 0.501
    assert 7 <= p.duration_s / DAY <= 13


def test_mpt7b_fits_the_cards_setup(cfg7b):
    """440 A100-40GB, FULL_SHARD, activation checkpointing, micro-batch 4 (1760 / 440)."""
    p = plan(cfg7b, 440, 'a100-40gb')
    assert p.checkpointing_activations and p.micro_batch == 4 and p.per_device_batch == 4
    assert p.parallelism.shard == 440
    assert p.memory.fits and p.memory.total < 40 * 2 ** 30
    assert p.max_micro_batch >= 4
    # Without checkpointing the same micro-batch is past 40 GiB: why the card's run needed it.
    assert not p.memory_other.fits


def test_mpt7b_does_not_fit_one_unsharded_a100(cfg7b):
    for overrides, gpus in ((('fsdp_config.sharding_strategy=NO_SHARD',), 8), ((), 1)):
        p = plan(cfg('7b', *overrides), gpus, 'a100-40gb', micro_batch=1)
        assert p.parallelism.shard == 1
        # fp32 weights + fp32 gradients + LION momentum alone are 12 bytes x 6.65B = 74 GiB.
        assert p.memory.model_state == 12 * 6_649_286_656
        assert p.memory.status == 'does not fit'
        assert p.max_micro_batch == 0


def test_mpt7b_on_8_h100(cfg7b):
    p = plan(cfg7b, 8, 'h100')
    assert p.mfu == 0.464
    assert p.tokens_per_s_gpu == pytest.approx(10_643, rel=0.01)
    assert p.memory.fits
    assert p.communication.link == 'NVLink' and p.communication.ratio < 1


# --------------------------------------------------------------------------- memory model

def test_model_state_is_sharded_over_the_shard_group():
    p = plan(cfg('7b', 'fsdp_config.sharding_strategy=HYBRID_SHARD'), 64, 'h100')
    assert (p.parallelism.shard, p.parallelism.replicate) == (8, 8)
    assert p.memory.weights == 4 * p.model.parameters / 8
    p = plan(cfg('7b', 'fsdp_config.sharding_strategy=HYBRID_SHARD',
                 'fsdp_config.data_parallel_shard_degree=16'), 64, 'h100')
    assert (p.parallelism.shard, p.parallelism.replicate) == (16, 4)
    p = plan(cfg('7b'), 64, 'h100')
    assert p.parallelism.shard == 64 and p.memory.optimizer == 4 * p.model.parameters / 64


def test_optimizer_state_count():
    assert optimizer_states('decoupled_lionw')[0] == 1
    assert optimizer_states('lion')[0] == 1
    assert optimizer_states('adamw')[0] == 2
    assert optimizer_states('decoupled_adamw')[0] == 2
    lion = plan(cfg('1b'), 8, 'a100-40gb')
    adam = plan(cfg('1b', 'optimizer.name=decoupled_adamw', 'optimizer.betas=[0.9,0.95]',
                    'optimizer.eps=1e-8'), 8, 'a100-40gb')
    assert adam.memory.optimizer == 2 * lion.memory.optimizer
    assert adam.checkpoint.size_bytes == 12 * adam.model.parameters
    assert lion.checkpoint.size_bytes == 8 * lion.model.parameters


def test_mixed_precision_sets_the_gathered_and_reduced_dtypes():
    pure = plan(cfg('7b'), 8, 'h100').parallelism
    default = plan(cfg('7b', 'fsdp_config.mixed_precision=DEFAULT'), 8, 'h100').parallelism
    full = plan(cfg('7b', 'fsdp_config.mixed_precision=FULL'), 8, 'h100').parallelism
    assert (pure.compute_bytes, pure.reduce_bytes) == (2, 2)
    assert (default.compute_bytes, default.reduce_bytes) == (2, 4)
    assert (full.compute_bytes, full.reduce_bytes) == (4, 4)


def test_zero2_keeps_every_unit_gathered():
    z3 = plan(cfg('7b'), 8, 'h100')
    z2 = plan(cfg('7b', 'fsdp_config.sharding_strategy=SHARD_GRAD_OP'), 8, 'h100')
    assert z2.memory.gathered > z3.memory.gathered
    assert z2.memory.gathered >= 2 * z2.model.parameters


def test_checkpointing_keeps_only_block_inputs(cfg7b):
    m = model_shape(cfg7b)
    on, off = activations(m, 4, 2, True), activations(m, 4, 2, False)
    sbh = 4 * 2048 * 4096
    assert on.blocks == 32 * 2 * sbh
    # 32 sbh bytes per layer in bf16: Korthikanti et al.'s 34 sbh without the two dropout masks;
    # no 5 a s^2 b term because SDPA never stores the scores.
    assert off.blocks == pytest.approx(32 * 32 * sbh, rel=0.001)
    assert on.total < off.total


def test_largest_micro_batch_is_the_edge_of_fitting(cfg7b):
    from foundry.plan.memory import memory, parallelism

    p = plan(cfg7b, 440, 'a100-40gb')
    m, par, gpu = p.model, parallelism(cfg7b, 440, 8), GPUS['a100-40gb']
    assert memory(m, par, gpu, 1, p.max_micro_batch, True).fits
    assert not memory(m, par, gpu, 1, p.max_micro_batch + 1, True).fits


def _saved_activation_bytes(n_layers: int, b: int, s: int, **model_kwargs) -> int:
    """Bytes autograd saves for backward in one forward under bf16 autocast, weights excluded."""
    import torch

    from foundry.models import MPTConfig, MPTForCausalLM

    config = MPTConfig(d_model=192, n_heads=4, n_layers=n_layers, max_seq_len=s, vocab_size=704,
                       init_device='cpu', **model_kwargs)
    model = MPTForCausalLM(config)
    # Shapes are chosen so no activation has a weight's shape: bf16 weight casts are left out.
    weight_shapes = {tuple(p.shape) for p in model.parameters()} | {tuple(p.shape)[::-1] for p in model.parameters()}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if tuple(t.shape) not in weight_shapes:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    x = torch.randint(0, 704, (b, s))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast('cpu', dtype=torch.bfloat16):
        model(input_ids=x, labels=x)
    return sum(saved.values())


@pytest.mark.parametrize('model_kwargs', [
    {},
    {'attn_config': {'attn_type': 'grouped_query_attention', 'kv_n_heads': 2}},
    {'attn_config': {'qk_ln': True}},
    {'expansion_ratio': 2},
])
def test_per_layer_activation_formula_matches_autograd(model_kwargs):
    b, s = 2, 80
    one = _saved_activation_bytes(1, b, s, **model_kwargs)
    three = _saved_activation_bytes(3, b, s, **model_kwargs)
    per_layer = (three - one) / 2
    a = model_kwargs.get('attn_config', {})
    kv = a.get('kv_n_heads', 4)
    m = ModelShape(d_model=192, n_layers=3, n_heads=4, kv_n_heads=kv,
                   ffn_hidden_size=int(192 * model_kwargs.get('expansion_ratio', 4)), vocab_size=704,
                   max_seq_len=s, seq_len=s, no_bias=True, norm_type='low_precision_layernorm',
                   qk_ln=a.get('qk_ln', False), alibi=True, attn_uses_sequence_id=False, learned_pos_emb=False,
                   tie_word_embeddings=True, dropout=False)
    assert layer_activation_bytes(m, b, 2) == pytest.approx(per_layer, rel=0.02)
    # Around the blocks autograd keeps the final norm's input and output (2 x bf16 sbh), the fp32
    # log-softmax of the loss (4 b s V) and the ALiBi bias (heads x s^2 bf16).
    outside = one - per_layer
    acts = activations(m, b, 2, False)
    expected = 2 * 2 * b * s * 192 + 4 * b * s * 704 + acts.attn_bias
    assert outside == pytest.approx(expected, rel=0.03)


# --------------------------------------------------------------------------- durations and checkpoints

def test_parse_span():
    tpb, seq = 1760 * 2048, 2048
    assert parse_span('277433ba', tpb, seq).tokens == 277433 * tpb
    assert parse_span('1_000ba', tpb, seq).tokens == 1000 * tpb
    assert parse_span('1e12tok', tpb, seq).tokens == 1e12
    assert parse_span('100sp', tpb, seq).tokens == 100 * seq
    assert parse_span('0.5dur', tpb, seq, total_tokens=1e12).tokens == 5e11
    for unknown in ('1ep', 3, 'soon'):
        span = parse_span(unknown, tpb, seq)
        assert span.tokens is None and span.why_unknown


def test_duration_in_tokens_and_epochs():
    # Warmup in the same unit as the schedule (Composer refuses 100ba of warmup on a schedule counted in tokens).
    p = plan(cfg('7b', 'max_duration=1000000000000tok', 'scheduler.t_warmup=0.01dur'), 440, 'a100-40gb', 0.5)
    assert p.duration.tokens == 1e12
    assert p.duration_s == pytest.approx(1e12 / p.tokens_per_s)
    p = plan(cfg('7b', 'max_duration=1ep'), 440, 'a100-40gb')
    assert p.duration_s is None and 'epoch' in format_plan(p)


def test_failure_cost_is_half_an_interval_plus_restart(cfg7b):
    a = Assumptions(restart_overhead_s=600, ckpt_node_gbps=2.0, ckpt_storage_gbps=1e9)
    p = plan(cfg7b, 440, 'a100-40gb', 0.5, assumptions=a)
    ck = p.checkpoint
    assert ck.sharded and ck.writing_nodes == 55
    assert ck.size_bytes == 8 * p.model.parameters  # fp32 weights + LION momentum
    assert ck.write_s == pytest.approx(ck.size_bytes / (55 * 2.0e9))
    assert ck.interval_s == pytest.approx(2000 * p.step_s)  # save_interval: 2000ba
    assert ck.failure_cost_s == pytest.approx(ck.interval_s / 2 + 600 + ck.read_s)
    assert ck.count == 277433 // 2000


def test_full_state_dict_is_written_by_one_node():
    p = plan(cfg('7b', 'fsdp_config.state_dict_type=full'), 440, 'a100-40gb')
    assert not p.checkpoint.sharded and p.checkpoint.writing_nodes == 1


def test_bad_arguments_are_config_errors(cfg7b):
    from foundry.config.errors import ConfigError

    with pytest.raises(ConfigError, match='gpus'):
        plan(cfg7b, 0, 'h100')
    with pytest.raises(ConfigError, match='mfu'):
        plan(cfg7b, 8, 'h100', 45)
    with pytest.raises(ConfigError, match='unknown GPU'):
        plan(cfg7b, 8, 'v100')
    with pytest.raises(ConfigError, match='replicas'):
        plan(cfg('7b', 'fsdp_config.data_parallel_shard_degree=3', 'fsdp_config.sharding_strategy=HYBRID_SHARD'),
             8, 'h100')


def test_uneven_batch_is_noted(cfg7b):
    p = plan(cfg7b, 512, 'h100')
    assert any('not divisible' in n for n in p.notes)


# --------------------------------------------------------------------------- command line

def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'foundry.plan', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def test_cli_prints_a_table():
    r = _run('yamls/pretrain/mpt-7b.yaml', '--gpus', '440', '--gpu', 'a100-40gb')
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for needle in ('6,649,286,656', 'FULL_SHARD', 'weights (fp32 master', 'optimizer (1 x fp32',
                   'act. ckpt ON *', 'largest micro-batch', 'tokens/s/GPU', 'days', 'save every', 'failure'):
        assert needle in out, needle


def test_cli_json_overrides_and_errors():
    r = _run('yamls/pretrain/mpt-7b.yaml', 'global_train_batch_size=2048', '--gpus', '8', '--gpu', 'H100',
             '--mfu', '0.4', '--json')
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data['global_batch'] == 2048 and data['mfu'] == 0.4 and data['gpu']['name'] == 'h100'
    assert data['memory']['status'] in ('fits', 'tight', 'does not fit')
    r = _run('yamls/pretrain/mpt-7b.yaml', 'model.d_modle=8', '--gpus', '8', '--gpu', 'h100')
    assert r.returncode == 2 and 'config error' in r.stderr and 'd_modle' in r.stderr
    r = _run('yamls/pretrain/mpt-7b.yaml', '--gpus', '8', '--gpu', 'v100')
    assert r.returncode == 2 and 'invalid choice' in r.stderr


def test_add_plan_parser_wires_into_a_foundry_parser():
    import argparse

    from foundry.plan import add_plan_parser
    from foundry.plan.cli import cmd_plan

    parser = argparse.ArgumentParser(prog='foundry')
    add_plan_parser(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(['plan', 'x.yaml', 'a=1', '--gpus', '16', '--gpu', 'h200', '--gpus-per-node', '4'])
    assert args.func is cmd_plan
    assert (args.yaml, args.overrides, args.gpus, args.gpu, args.gpus_per_node, args.mfu) == \
        ('x.yaml', ['a=1'], 16, 'h200', 4, None)


# llm-foundry's benchmark table (scripts/train/benchmarking/README.md, H100 80GB BF16, seq 2048,
# 8 GPUs, FULL_SHARD, mixed_precision DEFAULT, no activation checkpointing) ran these micro-batches.
# Planned with torch_crossentropy (full fp32 logits), which leaves less room than the fused loss those
# runs used; still, the largest micro-batch we predict lands on or just above each one they chose.
# (foundry's default chunked loss keeps no full logits and leaves more room: see the test after.)
@pytest.mark.parametrize('d_model,n_layers,n_heads,ran', [
    (2048, 24, 16, 14),  # 1b
    (2560, 32, 20, 10),  # 3b
    (4096, 32, 32, 6),  # 7b
    (5120, 40, 40, 2),  # 13b
])
def test_largest_micro_batch_agrees_with_llm_foundrys_h100_runs(d_model, n_layers, n_heads, ran):
    c = cfg('7b', f'model.d_model={d_model}', f'model.n_layers={n_layers}', f'model.n_heads={n_heads}',
            'fsdp_config.mixed_precision=DEFAULT', 'fsdp_config.activation_checkpointing=false',
            f'device_train_microbatch_size={ran}', f'global_train_batch_size={8 * ran}',
            'model.loss_fn=torch_crossentropy')
    p = plan(c, 8, 'h100')
    assert p.memory.fits
    assert ran <= p.max_micro_batch <= ran + max(1, ran // 4)


def test_hsdp_traffic_stays_on_nvlink_inside_a_node():
    p = plan(cfg('1b', 'fsdp_config.sharding_strategy=HYBRID_SHARD'), 16, 'h100')
    assert p.communication.link == 'NVLink + NIC'
    full = plan(cfg('1b'), 16, 'h100')
    assert full.communication.link == 'NIC'
    assert p.communication.comm_s < full.communication.comm_s
