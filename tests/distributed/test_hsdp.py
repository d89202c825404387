"""HSDP on the FSDP2 path: the mesh Composer builds from our config, and gradients on gloo.

- Composer's State builds the job's device mesh from `fsdp_config.data_parallel_*_degree` and
  overwrites `fsdp_config.device_mesh` with it; our config must make that mesh the 2-D
  (data_parallel_replicate, data_parallel_shard) one (checked in-process on a fake 4-rank group).
- On gloo, FSDP2's gradient averaging must equal one process training on all the ranks' samples,
  for HSDP (2 x 2) and FULL_SHARD (1 x 4), and HSDP replicas must stay bitwise identical
  (checked with 4 real gloo processes on loopback).
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch


@pytest.fixture
def fake_world_of_4(no_process_group, monkeypatch):
    """A fake 4-rank process group in this process: meshes and groups without peers or traffic."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    # Composer checks its group against these; an earlier in-process Trainer set them for 1 rank.
    for name, value in {'WORLD_SIZE': '4', 'RANK': '0', 'LOCAL_WORLD_SIZE': '4', 'LOCAL_RANK': '0',
                        'NODE_RANK': '0'}.items():
        monkeypatch.setenv(name, value)
    dist.init_process_group('fake', rank=0, world_size=4, store=FakeStore())
    try:
        yield
    finally:
        dist.destroy_process_group()


def _state(parallelism_config):
    from composer.core import State
    from composer.devices import DeviceCPU

    return State(model=torch.nn.Linear(4, 4), rank_zero_seed=0, run_name='mesh', device=DeviceCPU(),
                 parallelism_config=parallelism_config)


def test_composer_builds_the_hybrid_mesh_from_our_config(fake_world_of_4):
    from composer.utils.misc import ParallelismType
    from composer.utils.parallelism import ParallelismConfig

    from foundry.config.schema import FSDPConfig
    from foundry.distributed.fsdp import build_fsdp2_config

    # device_type 'cuda' only to leave this pytest process's torch.distributed unpatched (see enable_gloo_fsdp2).
    config = build_fsdp2_config(FSDPConfig(sharding_strategy='HYBRID_SHARD'), 4, 2, device_type='cuda')
    state = _state(ParallelismConfig(fsdp2=config))
    names = (ParallelismType.DATA_PARALLEL_REPLICATE.value, ParallelismType.DATA_PARALLEL_SHARD.value)
    # The names composer/utils/checkpoint.py looks up to let only the first replica write shards.
    assert state.device_mesh.mesh_dim_names == names == ('data_parallel_replicate', 'data_parallel_shard')
    assert state.device_mesh.mesh.tolist() == [[0, 1], [2, 3]]
    assert state.fsdp_config is config
    assert config.device_mesh.mesh_dim_names == names and config.device_mesh.ndim == 2


def test_a_mesh_passed_in_plain_fsdp2config_is_replaced_by_composer(fake_world_of_4):
    # Why FoundryFSDP2Config exists: this is what the previous `FSDP2Config(device_mesh=...)` did.
    from composer.utils.parallelism import FSDP2Config, ParallelismConfig
    from torch.distributed.device_mesh import init_device_mesh

    ours = init_device_mesh('cpu', (2, 2), mesh_dim_names=('dp_replicate', 'dp_shard'))
    config = FSDP2Config(device_mesh=ours)
    state = _state(ParallelismConfig(fsdp2=config))
    assert config.device_mesh.ndim == 1 and state.device_mesh.mesh_dim_names == ('data_parallel_shard',)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _train_step_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    """One rank: shard a small MLP on a 2-D and a 1-D mesh, one step on this rank's samples."""
    import copy

    import torch.distributed as dist
    from torch import nn
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    from foundry.distributed.fsdp import describe_layout, enable_gloo_fsdp2, local_shard_fingerprint

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port))
    dist.init_process_group('gloo', rank=rank, world_size=world)
    try:
        enable_gloo_fsdp2()
        torch.manual_seed(0)
        base = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        data = torch.Generator().manual_seed(1)
        x, y = torch.randn(world, 3, 8, generator=data), torch.randn(world, 3, 4, generator=data)

        # One process on every rank's samples: the gradient data parallelism must reproduce.
        reference = copy.deepcopy(base)
        ((reference(x.flatten(0, 1)) - y.flatten(0, 1))**2).mean().backward()
        expected = {n: p.grad for n, p in reference.named_parameters()}

        report = {}
        meshes = {
            'hsdp': init_device_mesh('cpu', (2, 2), mesh_dim_names=('data_parallel_replicate', 'data_parallel_shard')),
            'full_shard': init_device_mesh('cpu', (world,), mesh_dim_names=('data_parallel_shard',)),
        }
        for label, mesh in meshes.items():
            model = copy.deepcopy(base)
            fully_shard(model[0], mesh=mesh)
            fully_shard(model[2], mesh=mesh)
            fully_shard(model, mesh=mesh)
            ((model(x[rank]) - y[rank])**2).mean().backward()
            errors = {}
            for name, p in model.named_parameters():
                assert isinstance(p.grad, DTensor)
                errors[name] = (p.grad.full_tensor() - expected[name]).abs().max().item()
            torch.optim.SGD(model.parameters(), lr=0.5).step()
            report[label] = {
                'layout': describe_layout(model, mesh),
                'grad_placements': sorted({str(tuple(p.grad.placements)) for p in model.parameters()}),
                'max_grad_error': max(errors.values()),
                'fingerprint': local_shard_fingerprint(model),
            }
        with open(os.path.join(out_dir, f'rank{rank}.json'), 'w') as f:
            json.dump(report, f)
    finally:
        dist.destroy_process_group()


def test_gloo_hsdp_and_full_shard_average_gradients_like_one_process(tmp_path):
    import torch.multiprocessing as mp

    world = 4
    mp.spawn(_train_step_worker, args=(world, _free_port(), str(tmp_path)), nprocs=world, join=True)
    reports = [json.loads((tmp_path / f'rank{r}.json').read_text()) for r in range(world)]

    for rank, report in enumerate(reports):
        hsdp, full = report['hsdp'], report['full_shard']
        assert (f'rank {rank}: FSDP2 mesh data_parallel_replicate=2 x data_parallel_shard=2 '
                f'(ranks [[0, 1], [2, 3]]), coordinate [{rank // 2}, {rank % 2}]; '
                f'parameter placements (Replicate(), Shard(dim=0)); 0.weight local [8, 8] of [16, 8]') == hsdp['layout']
        assert hsdp['grad_placements'] == ['(Replicate(), Shard(dim=0))']
        assert full['layout'].endswith('parameter placements (Shard(dim=0),); 0.weight local [4, 8] of [16, 8]')
        # Averaged, not summed over the shard dim (gloo's AVG reduce-scatter sums) nor refused
        # over the replicate dim (gloo has no AVG all-reduce).
        assert hsdp['max_grad_error'] < 1e-6, hsdp
        assert full['max_grad_error'] < 1e-6, full

    prints = [r['hsdp']['fingerprint'] for r in reports]
    assert prints[0] == prints[2] and prints[1] == prints[3], prints  # replicas after a step on different data
    assert prints[0] != prints[1]
