"""foundry plan's memory model, the parts beyond test_plan.py: activation checkpointing per block
(ac_every_n_blocks), the chunked loss, attention kernels without a bias, amp_fp8, and a single GPU
with bf16 autocast over fp32 master weights."""

from __future__ import annotations

import os

import pytest
import torch

from foundry.config.load import load_config
from foundry.plan import format_plan, plan
from foundry.plan.memory import (activations, checkpointed_blocks, chunked_loss_saved_bytes, fp8_cast_bytes,
                                 head_bytes, layer_activation_bytes)
from foundry.plan.model import model_shape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
YAML7B = os.path.join(ROOT, 'yamls', 'pretrain', 'mpt-7b.yaml')
GiB = 2 ** 30


def cfg7b(*overrides: str):
    return load_config(YAML7B, list(overrides))


# --------------------------------------------------------------------------- checkpointing per block

@pytest.mark.parametrize('every', [1, 2, 3, 32, 40])
def test_checkpointed_block_count_is_the_models(every):
    """The planner counts the blocks foundry's MPT really recomputes (blocks 0, n, 2n, ...)."""
    from foundry.models.mpt import MPTConfig
    from foundry.models.mpt.modeling import MPTModel

    c = cfg7b(f'model.ac_every_n_blocks={every}')
    m = model_shape(c)
    model = MPTModel(MPTConfig(**{k: v for k, v in c.model.items() if k not in ('name', 'loss_fn')}))
    assert m.own_checkpointed_blocks == model.checkpointed_blocks() == len(range(0, 32, every))
    assert checkpointed_blocks(m, True) == m.own_checkpointed_blocks and checkpointed_blocks(m, False) == 0


def test_every_second_block_stores_half_the_blocks():
    m_all, m_half = model_shape(cfg7b()), model_shape(cfg7b('model.ac_every_n_blocks=2'))
    b, a = 4, 2
    sbh, layer = 2048 * b * 4096, layer_activation_bytes(m_half, b, a)
    half = activations(m_half, b, a, True)
    assert half.blocks == 16 * sbh * a + 16 * layer  # inputs of 16 checkpointed blocks, all of the other 16
    assert half.recompute == layer
    full, none = activations(m_all, b, a, True), activations(m_all, b, a, False)
    assert full.blocks < half.blocks < none.blocks
    assert none.recompute == 0


def test_plan_uses_the_models_own_checkpointing_and_says_how_many_blocks():
    p = plan(cfg7b('model.ac_every_n_blocks=2', 'fsdp_config.activation_checkpointing=false'), 8, 'h100')
    assert p.checkpointing_activations and p.memory.checkpointed_blocks == 16
    assert p.memory_other.checkpointed_blocks == 0 and p.memory_other.total > p.memory.total
    assert 'act. ckpt 16/32 blocks *' in format_plan(p)
    # FSDP's wrapper checkpoints every block; with ac_every_n_blocks the model turns it off.
    assert plan(cfg7b(), 8, 'h100').memory.checkpointed_blocks == 32
    assert plan(cfg7b('model.ac_every_n_blocks=4'), 8, 'h100').memory.checkpointed_blocks == 8


# --------------------------------------------------------------------------- loss and attention

def test_chunked_loss_keeps_what_the_planner_says():
    """Bytes the chunked loss saves for backward, measured with saved-tensor hooks under bf16 autocast."""
    from foundry.models.mpt.loss import chunked_causal_lm_loss

    m = model_shape(cfg7b('model.d_model=64', 'model.n_heads=4', 'model.vocab_size=512', 'variables.max_seq_len=32'))
    b = 3
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    hidden = torch.randn(b, m.seq_len, m.d_model, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.nn.Parameter(torch.randn(m.vocab_size, m.d_model))
    labels = torch.randint(0, m.vocab_size, (b, m.seq_len))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast('cpu', dtype=torch.bfloat16):
        chunked_causal_lm_loss(hidden, weight, labels)
    scalars = 8  # the count of valid targets, an int64 0-d tensor
    assert sum(saved.values()) == chunked_loss_saved_bytes(m, b, 2) + scalars


def test_chunked_loss_is_far_smaller_than_full_logits():
    chunked, full = model_shape(cfg7b()), model_shape(cfg7b('model.loss_fn=torch_crossentropy'))
    assert chunked.chunked_loss and not full.chunked_loss
    assert model_shape(cfg7b('model.loss_fn=fused_crossentropy')).chunked_loss  # runs as the chunked loss
    b = 8
    full_head = head_bytes(full, b, 2, 2)
    assert full_head == pytest.approx(2 * 2048 * b * 4096 * 2 + b * 2048 * 50432 * 14)
    # Chunked: no per-token vocabulary term beyond one 2^27-logit chunk; the fp32 embedding gradient
    # (0.77 GiB) and its per-chunk matmul dominate, independent of the micro-batch.
    assert head_bytes(chunked, b, 2, 2) < 4 * GiB < full_head / 2
    assert head_bytes(chunked, 16, 2, 2) - head_bytes(chunked, 8, 2, 2) < 0.6 * GiB
    # DDP autocast reads the fp32 embedding: the loss casts a bf16 copy (FSDP PURE gathers bf16 already).
    assert head_bytes(chunked, b, 2, 4) - head_bytes(chunked, b, 2, 2) == 50432 * 4096 * 2


def test_only_sdpa_materialises_an_attention_bias():
    for impl, has_bias in (('torch', True), ('flex', False), ('flash', False)):
        m = model_shape(cfg7b(f'model.attn_config.attn_impl={impl}'))
        bias = activations(m, 4, 2, True).attn_bias
        assert (bias == 32 * 2048 * 2048 * 2) if has_bias else bias == 0, impl


# --------------------------------------------------------------------------- precision

def test_amp_fp8_keeps_bf16_activations_plus_one_layers_casts():
    bf16, fp8 = plan(cfg7b(), 8, 'h100', micro_batch=4), plan(cfg7b('precision=amp_fp8'), 8, 'h100', micro_batch=4)
    assert fp8.parallelism.fp8 and not bf16.parallelism.fp8
    assert fp8.parallelism.act_bytes == 2 and 'float8' in fp8.parallelism.precision_note
    a, b = bf16.memory.activations, fp8.memory.activations
    assert (a.blocks, a.recompute, a.head) == (b.blocks, b.recompute, b.head)
    # The largest Linear (d x 4d): input, output gradient and weight in 1 byte, twice.
    s, d, f, mb = 2048, 4096, 4 * 4096, 4
    assert b.workspace - a.workspace == fp8_cast_bytes(fp8.model, mb) == 2 * (s * mb * d + s * mb * f + d * f)
    assert any('amp_fp8' in n for n in fp8.notes)


def test_one_gpu_without_fsdp_holds_fp32_master_weights_and_a_bf16_cast():
    p = plan(cfg7b('fsdp_config=null'), 1, 'h200', micro_batch=1)
    n = p.model.parameters
    assert p.parallelism.strategy == 'single GPU' and p.parallelism.shard == 1
    assert (p.memory.weights, p.memory.gradients, p.memory.optimizer) == (4 * n, 4 * n, 4 * n)  # LION: 1 state
    assert p.memory.gathered == 2 * n  # autocast's bf16 copies of the weights, cached for the step
