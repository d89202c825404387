"""The foreach DecoupledLionW step against the per-parameter reference (lion-pytorch's update_fn).

Equality is bit-for-bit (rtol = atol = 0), for fp32 and bf16 parameters: the foreach step performs
the reference's operations in the same order with the same Python scalars, and on CPU torch's
`_foreach_*` ops run the same per-tensor kernels, so no rounding can differ. (On a GPU the fused
foreach kernels may contract a*b+c into an FMA where the per-tensor kernel does not, or the other
way round: at most 1 ulp per step there; launch/bench/lion_bench.py compares on the device.)
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import foundry.optim.lion_foreach as lion_foreach
from foundry.config.errors import ConfigError
from foundry.optim.builders import OPTIMIZER_KEYS, build_optimizer
from foundry.optim.lion import DecoupledLionW
from foundry.optim.lion_foreach import _chunks, _local_triple, _step_lists

SHAPES = [(33, 17), (17,), (5, 4, 3), (1,), (64, 8)]


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SHAPES]


def _grads(params, step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    # Exact zeros too: sign(0) = 0 must agree, and momentum starts at zero.
    out = [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]
    out[0][0] = 0
    return out


def _run(dtype, foreach: bool, steps: int = 6, weight_decay: float = 0.1, two_groups: bool = True):
    params = _params(dtype)
    if two_groups:  # groups keep their own initial lr
        groups = [{'params': params[:3]}, {'params': params[3:], 'lr': 3e-3, 'weight_decay': 0.0}]
    else:
        groups = params
    opt = DecoupledLionW(groups, lr=1e-2, betas=(0.9, 0.99), weight_decay=weight_decay, foreach=foreach)
    for step in range(steps):
        for p, grad in zip(params, _grads(params, step)):
            p.grad = grad
        params[2].grad = None if step == 1 else params[2].grad  # a parameter without a gradient
        for group in opt.param_groups:
            group['lr'] = group['initial_lr'] * (1 - step / 10)  # what a scheduler does
        opt.step()
    return params, opt


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
@pytest.mark.parametrize('weight_decay', [0.1, 0.0])
def test_foreach_equals_reference_bit_for_bit(dtype, weight_decay):
    ref_params, ref_opt = _run(dtype, foreach=False, weight_decay=weight_decay)
    params, opt = _run(dtype, foreach=True, weight_decay=weight_decay)
    for p, q in zip(ref_params, params):
        assert q.dtype == dtype and opt.state[q]['exp_avg'].dtype == dtype
        torch.testing.assert_close(q, p, rtol=0, atol=0)
        torch.testing.assert_close(opt.state[q]['exp_avg'], ref_opt.state[p]['exp_avg'], rtol=0, atol=0)
    assert not torch.equal(params[0].detach(), _params(dtype)[0]), 'the step moved the parameters'


def test_chunking_changes_nothing(monkeypatch):
    ref, _ = _run(torch.float32, foreach=True)
    monkeypatch.setattr(lion_foreach, 'MAX_CHUNK_ELEMENTS', 100)  # one or two tensors per chunk
    small, _ = _run(torch.float32, foreach=True)
    for p, q in zip(ref, small):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_chunks_bound_the_temporaries():
    assert list(_chunks([10, 10, 10], 25)) == [(0, 2), (2, 3)]
    assert list(_chunks([40, 5, 5, 40], 20)) == [(0, 1), (1, 3), (3, 4)]  # a big tensor stands alone
    assert list(_chunks([], 10)) == []


def test_state_dicts_interchange():
    """A checkpoint written with either step resumes with the other: the state is the same."""
    params, opt = _run(torch.float32, foreach=True, steps=3)
    ref_params = [torch.nn.Parameter(p.detach().clone()) for p in params]
    ref = DecoupledLionW([{'params': ref_params[:3]}, {'params': ref_params[3:], 'lr': 3e-3, 'weight_decay': 0.0}],
                         lr=1e-2, weight_decay=0.1, foreach=False)
    ref.load_state_dict(opt.state_dict())
    assert ref.foreach is False and set(ref.state[ref_params[0]]) == {'exp_avg'}
    for p, q in zip(params, ref_params):
        p.grad = q.grad = torch.ones_like(p)
    opt.step()
    ref.step()
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_config_key_and_default():
    assert OPTIMIZER_KEYS['decoupled_lionw']['foreach'] is True
    model = torch.nn.Linear(3, 2)
    assert build_optimizer(model, 'decoupled_lionw', {'lr': 1e-3}).foreach is True
    assert build_optimizer(model, 'decoupled_lionw', {'lr': 1e-3, 'foreach': False}).foreach is False


def test_yaml_key_is_validated():
    from foundry.config.load import load_config

    path = Path(__file__).resolve().parents[1] / 'fixtures' / 'tiny.yaml'
    cfg = load_config(str(path), ['optimizer.name=decoupled_lionw', 'optimizer.foreach=false'])
    assert cfg.optimizer['foreach'] is False
    with pytest.raises(ConfigError, match=r'optimizer\.foreach.*true or false'):
        load_config(str(path), ['optimizer.name=decoupled_lionw', 'optimizer.foreach=1'])


def test_step_is_one_graph_under_torch_compile():
    """fullgraph=True: the list step compiles without a graph break and gives the same bits.

    (A compiled training step would also need lr as a tensor: dynamo specialises on the float.)
    """
    import torch._dynamo

    torch._dynamo.reset()
    # reset() leaves dynamo's global counters alone: graphs compiled by earlier tests would count.
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(_step_lists, backend='aot_eager', fullgraph=True)
    a, b = _params(torch.float32), _params(torch.float32)
    ma, mb = [torch.zeros_like(p) for p in a], [torch.zeros_like(p) for p in b]
    lr = 1e-2
    with torch.no_grad():
        for step in range(3):
            grads = _grads(a, step)
            _step_lists(list(a), grads, ma, lr, 1. - lr * 1.0, 0.9, 0.99)
            compiled(list(b), grads, mb, lr, 1. - lr * 1.0, 0.9, 0.99)
    for p, q, m, n in zip(a, b, ma, mb):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
        torch.testing.assert_close(n, m, rtol=0, atol=0)
    assert torch._dynamo.utils.counters['stats']['unique_graphs'] == 1
    torch._dynamo.reset()


# --------------------------------------------------------------------------- DTensors (FSDP2 parameters)

def _dtensor_run(mesh, placements, foreach: bool, steps: int = 4):
    from torch.distributed.tensor import distribute_tensor

    torch.manual_seed(0)
    inits = [torch.randn(8, 6), torch.randn(6)]
    params = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, placements)) for t in inits]
    opt = DecoupledLionW(params, lr=0.1, weight_decay=0.1, foreach=foreach)
    for step in range(steps):
        for p in params:
            g = torch.Generator().manual_seed(step)
            p.grad = distribute_tensor(torch.randn(p.shape, generator=g), mesh, placements)
        opt.param_groups[0]['lr'] *= 0.5
        opt.step()
    return params, opt


def test_dtensor_params_step_through_local_shards(tmp_path, no_process_group, monkeypatch):
    """A 1-rank gloo mesh: foreach on FSDP2-style DTensors equals the per-parameter DTensor step bit for bit,
    and really takes the local-shard path (no DTensor dispatch of `_foreach_sign_`, which has no rule)."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard

    tdist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        mesh = init_device_mesh('cpu', (1,))
        ref, ref_opt = _dtensor_run(mesh, [Shard(0)], foreach=False)
        seen = []
        real = lion_foreach._step_lists
        monkeypatch.setattr(lion_foreach, '_step_lists', lambda ps, *a: (seen.extend(ps), real(ps, *a)))
        params, opt = _dtensor_run(mesh, [Shard(0)], foreach=True)
        assert seen and not any(isinstance(t, DTensor) for t in seen)
        for p, q in zip(ref, params):
            assert isinstance(opt.state[q]['exp_avg'], DTensor)
            torch.testing.assert_close(q.full_tensor(), p.full_tensor(), rtol=0, atol=0)
            torch.testing.assert_close(opt.state[q]['exp_avg'].full_tensor(), ref_opt.state[p]['exp_avg'].full_tensor(),
                                       rtol=0, atol=0)
        # Mixed layouts cannot be stepped shard by shard: those go to the per-parameter DTensor step.
        from torch.distributed.tensor import distribute_tensor

        p = distribute_tensor(torch.ones(4), mesh, [Shard(0)])
        assert _local_triple(p, distribute_tensor(torch.ones(4), mesh, [Replicate()]), torch.zeros_like(p)) is None
        assert _local_triple(p, torch.ones(4), torch.zeros(4)) is None
        assert _local_triple(p, p.clone(), torch.zeros_like(p)) is not None
    finally:
        tdist.destroy_process_group()


def test_dtensor_shards_on_a_fake_four_rank_mesh(no_process_group, monkeypatch):
    """Rank 0 of a fake 4-rank group (no peers, no traffic): uneven Shard(0) local shards step like
    the matching rows of a plain tensor, in both implementations."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.testing._internal.distributed.fake_pg import FakeStore

    for name, value in {'WORLD_SIZE': '4', 'RANK': '0', 'LOCAL_WORLD_SIZE': '4', 'LOCAL_RANK': '0'}.items():
        monkeypatch.setenv(name, value)
    tdist.init_process_group('fake', rank=0, world_size=4, store=FakeStore())
    try:
        mesh = DeviceMesh('cpu', [0, 1, 2, 3])
        full = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))  # 10 rows: rank 0 holds 3
        grads = [torch.randn(10, 3, generator=torch.Generator().manual_seed(s)) for s in range(3)]
        results = []
        for foreach in (False, True):
            local = full[:3].clone()
            p = torch.nn.Parameter(DTensor.from_local(local, mesh, [Shard(0)], run_check=False,
                                                      shape=full.shape, stride=full.stride()))
            opt = DecoupledLionW([p], lr=0.1, weight_decay=0.1, foreach=foreach)
            for g in grads:
                p.grad = DTensor.from_local(g[:3].clone(), mesh, [Shard(0)], run_check=False,
                                            shape=g.shape, stride=g.stride())
                opt.step()
            results.append((p.to_local().clone(), opt.state[p]['exp_avg'].to_local().clone()))
        plain = torch.nn.Parameter(full[:3].clone())
        opt = DecoupledLionW([plain], lr=0.1, weight_decay=0.1, foreach=False)
        for g in grads:
            plain.grad = g[:3].clone()
            opt.step()
        for got, momentum in results:
            torch.testing.assert_close(got, plain.detach(), rtol=0, atol=0)
            torch.testing.assert_close(momentum, opt.state[plain]['exp_avg'], rtol=0, atol=0)
    finally:
        tdist.destroy_process_group()
