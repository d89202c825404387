"""compile_config (torch.compile per block) and selective activation checkpointing (ac_every_n_blocks)."""

from __future__ import annotations

import pytest
import torch
from mpt_helpers import make_ids, tiny_config

from foundry.distributed.compile import apply_compile, check_compile_config
from foundry.models.mpt import MPTForCausalLM


def grads_and_loss(model, ids):
    model.zero_grad(set_to_none=True)
    loss = model(ids, labels=ids).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def saved_bytes(model, ids) -> int:
    """Bytes autograd keeps for backward during one training forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(ids, labels=ids).loss
    loss.backward()
    return total


def test_compile_config_keys():
    assert check_compile_config(None) == {"mode": None, "fullgraph": False, "dynamic": False,
                                          "backend": "inductor", "options": None}
    assert check_compile_config({"mode": "max-autotune", "dynamic": None})["dynamic"] is False
    with pytest.raises(ValueError, match="did you mean 'fullgraph'"):
        check_compile_config({"full_graph": True})
    with pytest.raises(ValueError, match="mode"):
        check_compile_config({"mode": "fastest"})
    with pytest.raises(ValueError, match="not both"):
        check_compile_config({"mode": "default", "options": {"triton.cudagraphs": False}})


@pytest.mark.parametrize("every,expected", [(0, 0), (1, 4), (2, 2), (3, 2), (4, 1)])
def test_checkpointed_block_count(every, expected):
    model = MPTForCausalLM(tiny_config(n_layers=4, ac_every_n_blocks=every, init_device="meta"))
    assert model.transformer.checkpointed_blocks() == expected
    # The model checkpoints itself: FSDP's wrapper must not checkpoint the blocks a second time.
    assert model.activation_checkpointing_fn(model.transformer.blocks[0]) == (every == 0)


def test_activation_checkpointing_same_gradients_less_saved():
    ids = make_ids(batch=2, seq=32)
    results, saved = {}, {}
    for every in (0, 1, 2):
        torch.manual_seed(0)
        model = MPTForCausalLM(tiny_config(n_layers=4, ac_every_n_blocks=every)).train()
        results[every] = grads_and_loss(model, ids)
        saved[every] = saved_bytes(model, ids)
    for every in (1, 2):
        torch.testing.assert_close(results[every][0], results[0][0])
        for name, g in results[0][1].items():
            torch.testing.assert_close(results[every][1][name], g, msg=name)
    assert saved[1] < saved[2] < saved[0]


def test_compiled_blocks_match_eager_with_checkpointing():
    """One compile (CPU inductor) covering both features: same loss/gradients, same parameter names."""
    ids = make_ids(batch=2, seq=16)
    torch.manual_seed(0)
    eager = MPTForCausalLM(tiny_config(ac_every_n_blocks=1)).train()
    torch.manual_seed(0)
    compiled = MPTForCausalLM(tiny_config(ac_every_n_blocks=1)).train()
    assert apply_compile(compiled, {"dynamic": False}) == 2
    assert apply_compile(compiled, {}) == 0  # idempotent
    loss_e, grads_e = grads_and_loss(eager, ids)
    loss_c, grads_c = grads_and_loss(compiled, ids)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-5, rtol=1e-5)
    for name, g in grads_e.items():
        torch.testing.assert_close(grads_c[name], g, atol=1e-5, rtol=1e-4, msg=name)
    assert list(compiled.state_dict()) == list(eager.state_dict())


# ---------------------------------------------------------------- precision amp_bf16 on CPU
def test_cpu_bf16_autocast_on_the_composer_model():
    from foundry.models import ComposerMPTCausalLM

    ids = make_ids(batch=2, seq=16)
    batch = {"input_ids": ids, "labels": ids}
    torch.manual_seed(0)
    model = ComposerMPTCausalLM(tiny_config(), loss_fn="torch_crossentropy")  # forward returns logits
    fp32 = model.loss(model(batch), batch)
    model.cpu_autocast_dtype = torch.bfloat16
    logits = model(batch)
    assert logits.dtype == torch.bfloat16  # the matmuls ran in bf16
    bf16 = model.loss(logits, batch)
    bf16.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    assert bf16.item() != fp32.item() and abs(bf16.item() - fp32.item()) < 0.05
    assert model.eval_forward(batch).dtype == torch.bfloat16


def test_cpu_bf16_autocast_with_the_chunked_loss():
    from foundry.models import ComposerMPTCausalLM

    ids = make_ids(batch=2, seq=16)
    batch = {"input_ids": ids, "labels": ids}
    torch.manual_seed(0)
    model = ComposerMPTCausalLM(tiny_config(), loss_fn="chunked_crossentropy")
    fp32 = model.loss(model(batch), batch)
    model.cpu_autocast_dtype = torch.bfloat16
    bf16 = model.loss(model(batch), batch)
    bf16.backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    assert bf16.item() != fp32.item() and abs(bf16.item() - fp32.item()) < 0.05


def test_plan_run_makes_amp_bf16_on_cpu_our_autocast():
    import warnings
    from pathlib import Path

    from foundry.config.load import load_config
    from foundry.train import plan_run

    tiny = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny.yaml")
    plan = plan_run(load_config(tiny, ["precision=amp_bf16"]))
    assert plan.precision == "fp32" and plan.cpu_bf16_autocast
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = plan_run(load_config(tiny, ["precision=amp_fp16"]))
    assert plan.precision == "fp32" and not plan.cpu_bf16_autocast
    assert any("needs a GPU" in str(w.message) for w in caught)
    assert not plan_run(load_config(tiny, [])).cpu_bf16_autocast  # tiny.yaml says fp32
