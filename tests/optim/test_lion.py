"""DecoupledLionW against hand-computed steps, plus the optimizer/scheduler registries."""

from __future__ import annotations

import math

import pytest
import torch
from composer.core import State, Time, Timestamp
from composer.devices import DeviceCPU
from composer.optim import DecoupledAdamW, compile_composer_scheduler
from lion_pytorch import Lion

from foundry.optim.builders import (
    OPTIMIZER_KEYS,
    OPTIMIZERS,
    SCHEDULER_KEYS,
    SCHEDULERS,
    build_optimizer,
    build_scheduler,
)
from foundry.optim.lion import DecoupledLionW


def _param(values: list[float]) -> torch.nn.Parameter:
    # float64 so the hand computation below matches to rounding, not to a tolerance.
    return torch.nn.Parameter(torch.tensor(values, dtype=torch.float64))


def test_one_step_with_weight_decay_and_changed_lr():
    p = _param([1.0, -2.0, 0.5])
    opt = DecoupledLionW([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.01)
    # What a scheduler does: rescale group['lr'], leaving initial_lr alone.
    opt.param_groups[0]['lr'] = 0.05
    p.grad = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    opt.step()

    # decay 1 - (0.05 / 0.1) * 0.01 = 0.995; exp_avg starts at 0, so the direction is sign(0.1 * g).
    expected = [1.0 * 0.995 - 0.05, -2.0 * 0.995 + 0.05, 0.5 * 0.995 - 0.0]
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    # m = 0.99 * 0 + 0.01 * g
    torch.testing.assert_close(opt.state[p]['exp_avg'], torch.tensor([0.005, -0.01, 0.0], dtype=torch.float64))
    assert opt.param_groups[0]['initial_lr'] == 0.1


def test_two_steps_use_momentum():
    p = _param([1.0, -2.0, 0.5])
    opt = DecoupledLionW([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.0)
    p.grad = torch.tensor([0.5, -1.0, 0.0], dtype=torch.float64)
    opt.step()  # p = [0.9, -1.9, 0.5], m = [0.005, -0.01, 0.0]
    p.grad = torch.tensor([-0.01, -1.0, 2.0], dtype=torch.float64)
    opt.step()

    # c = 0.9 * m + 0.1 * g = [0.0045 - 0.001, -0.009 - 0.1, 0.2] = [0.0035, -0.109, 0.2]:
    # the first coordinate moves against its current gradient because momentum dominates.
    expected = [0.9 - 0.1, -1.9 + 0.1, 0.5 - 0.1]
    torch.testing.assert_close(p.detach(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-15)
    # m = 0.99 * m + 0.01 * g
    m = [0.99 * 0.005 + 0.01 * -0.01, 0.99 * -0.01 + 0.01 * -1.0, 0.0 + 0.01 * 2.0]
    torch.testing.assert_close(opt.state[p]['exp_avg'], torch.tensor(m, dtype=torch.float64))


def test_state_is_one_buffer_per_param():
    model = torch.nn.Linear(4, 3)
    opt = build_optimizer(model, 'decoupled_lionw', {'lr': 1e-3})
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    for p in model.parameters():
        assert set(opt.state[p]) == {'exp_avg'}
        assert opt.state[p]['exp_avg'].shape == p.shape


def test_param_groups_keep_their_own_initial_lr():
    a, b = _param([1.0]), _param([1.0])
    opt = DecoupledLionW([{'params': [a]}, {'params': [b], 'lr': 0.2}], lr=0.1, weight_decay=0.5)
    for g in opt.param_groups:
        g['lr'] = g['lr'] / 2  # halve both, as a scheduler would
    a.grad, b.grad = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    opt.step()
    # Both groups are at half their initial lr, so both decay by 1 - 0.5 * 0.5.
    assert a.item() == pytest.approx(0.75)
    assert b.item() == pytest.approx(0.75)


def test_works_under_composer_scheduler():
    """Composer's LambdaLR keeps our initial_lr and only rescales group['lr']."""
    model = torch.nn.Linear(2, 1)
    opt = DecoupledLionW(model.parameters(), lr=0.1, weight_decay=0.01)
    state = State(model=model, rank_zero_seed=0, run_name='t', device=DeviceCPU(), max_duration='10ba', optimizers=opt)
    sched = compile_composer_scheduler(build_scheduler('cosine_with_warmup', {'t_warmup': '4ba'}), state)
    opt.step()  # no grads yet: a no-op, but torch wants the optimizer stepped before its scheduler
    state.timestamp = Timestamp(batch=1)
    sched.step()
    assert opt.param_groups[0]['initial_lr'] == 0.1
    assert opt.param_groups[0]['lr'] == pytest.approx(0.1 * 1 / 4)
    # and a checkpoint round trip keeps initial_lr
    clone = DecoupledLionW(torch.nn.Linear(2, 1).parameters(), lr=0.5)
    clone.load_state_dict(opt.state_dict())
    assert clone.param_groups[0]['initial_lr'] == 0.1


def test_dtensor_params_match_plain_tensors(tmp_path, no_process_group):
    """FSDP2 hands the optimizer DTensors; a 1-rank mesh on CPU shows the step is DTensor-clean."""
    import torch.distributed as tdist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    tdist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0, world_size=1)
    try:
        mesh = init_device_mesh('cpu', (1,))
        torch.manual_seed(0)
        init, grads = torch.randn(6, 4), [torch.randn(6, 4) for _ in range(3)]
        plain = torch.nn.Parameter(init.clone())
        sharded = torch.nn.Parameter(distribute_tensor(init.clone(), mesh, [Shard(0)]))
        opts = [DecoupledLionW([q], lr=0.1, weight_decay=0.1) for q in (plain, sharded)]
        for g in grads:
            plain.grad = g.clone()
            sharded.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
            for o in opts:
                o.param_groups[0]['lr'] *= 0.5
                o.step()
        assert isinstance(opts[1].state[sharded]['exp_avg'], DTensor)
        torch.testing.assert_close(sharded.full_tensor(), plain.detach(), rtol=0, atol=0)
    finally:
        tdist.destroy_process_group()


def test_lion_pytorch_builds_and_steps():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model, 'lion', {'lr': 1e-3, 'betas': [0.9, 0.99], 'weight_decay': 0.1})
    assert type(opt) is Lion
    model(torch.randn(4, 3)).sum().backward()
    opt.step()


def test_registry_covers_all_names():
    assert set(OPTIMIZERS) == {'decoupled_lionw', 'lion', 'decoupled_adamw', 'adamw'}
    assert OPTIMIZER_KEYS['decoupled_lionw'] == {'lr': 1e-4, 'betas': (0.9, 0.99), 'weight_decay': 0.0,
                                             'foreach': True}
    assert {'lr', 'betas', 'eps', 'weight_decay'} <= set(OPTIMIZER_KEYS['decoupled_adamw'])
    model = torch.nn.Linear(3, 2)
    assert type(build_optimizer(model, 'decoupled_adamw', {'lr': 1e-3, 'eps': 1e-8})) is DecoupledAdamW
    adamw = build_optimizer(model, 'adamw', {'lr': 1e-3, 'betas': [0.9, 0.95]})
    assert type(adamw) is torch.optim.AdamW and adamw.param_groups[0]['betas'] == (0.9, 0.95)


def test_frozen_params_are_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 1))
    model[0].requires_grad_(False)
    opt = build_optimizer(model, 'adamw', {})
    assert len(opt.param_groups[0]['params']) == 2


def test_unknown_optimizer_name_suggests_nearest():
    with pytest.raises(ValueError, match=r"unknown optimizer 'decoupled_lion'.*did you mean 'decoupled_lionw'"):
        build_optimizer(torch.nn.Linear(1, 1), 'decoupled_lion', {})


def test_unknown_optimizer_kwarg_names_optimizer_and_keys():
    with pytest.raises(ValueError) as e:
        build_optimizer(torch.nn.Linear(1, 1), 'decoupled_lionw', {'lr': 1e-4, 'weight_decy': 0.1})
    msg = str(e.value)
    assert "'weight_decy'" in msg and "'decoupled_lionw'" in msg
    assert "did you mean 'weight_decay'" in msg
    assert 'betas, foreach, lr, weight_decay' in msg


def _state_at(batch: int, max_duration: str = '10ba') -> State:
    state = State(model=torch.nn.Linear(1, 1), rank_zero_seed=0, run_name='t', device=DeviceCPU(), max_duration=max_duration)
    state.timestamp = Timestamp(batch=batch)
    return state


@pytest.mark.parametrize(('name', 'kwargs', 'expected'), [
    # warmup 2 batches to 1, then cosine from 1 at batch 2 to alpha_f at batch 10
    ('cosine_with_warmup', {'t_warmup': '2ba', 'alpha_f': 0.1},
     {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 4 / 8)), 10: 0.1}),
    ('cosine_with_warmup', {'t_warmup': '0.2dur', 'alpha_f': 0.1}, {1: 0.5, 2: 1.0, 10: 0.1}),
    # linear from alpha_i=1 at batch 2 down to alpha_f at t_max
    ('linear_decay_with_warmup', {'t_warmup': '2ba', 'alpha_f': 0.1}, {1: 0.5, 2: 1.0, 6: 0.55, 10: 0.1}),
    ('linear_decay_with_warmup', {'t_warmup': '2ba', 'alpha_i': 0.5, 'alpha_f': 0.0}, {2: 0.5, 6: 0.25, 10: 0.0}),
    ('constant_with_warmup', {'t_warmup': '4ba'}, {0: 0.0, 2: 0.5, 4: 1.0, 9: 1.0}),
    ('constant', {}, {0: 1.0, 9: 1.0}),
    ('cosine', {'alpha_f': 0.0}, {0: 1.0, 5: 0.5, 10: 0.0}),
])
def test_scheduler_multipliers(name, kwargs, expected):
    scheduler = build_scheduler(name, kwargs)
    for batch, alpha in expected.items():
        assert scheduler(_state_at(batch)) == pytest.approx(alpha), f'{name} at batch {batch}'


def test_scheduler_parses_time_strings_up_front():
    scheduler = build_scheduler('cosine_with_warmup', {'t_warmup': '100ba', 't_max': '0.9dur'})
    assert scheduler.t_warmup == Time.from_timestring('100ba')
    with pytest.raises(ValueError, match=r"t_warmup='100' is not a duration"):
        build_scheduler('cosine_with_warmup', {'t_warmup': '100'})


def test_scheduler_errors():
    assert set(SCHEDULERS) == {'cosine_with_warmup', 'linear_decay_with_warmup', 'constant_with_warmup', 'constant', 'cosine'}
    assert {'t_warmup', 'alpha_f', 't_max'} <= set(SCHEDULER_KEYS['cosine_with_warmup'])
    with pytest.raises(ValueError, match=r"did you mean 'cosine_with_warmup'"):
        build_scheduler('cosine_warmup', {'t_warmup': '1ba'})
    with pytest.raises(ValueError, match=r"did you mean 'alpha_f'"):
        build_scheduler('cosine_with_warmup', {'t_warmup': '1ba', 'alpha': 0.1})
    with pytest.raises(ValueError, match=r"needs 't_warmup'"):
        build_scheduler('linear_decay_with_warmup', {})
