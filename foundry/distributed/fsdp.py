"""Map llm-foundry's `fsdp_config` onto Composer's FSDP2 (`fully_shard`) path.

Why FSDP2 everywhere: Composer's FSDP1 path calls CUDA and cannot run on a CPU box, while
FSDP2 runs on gloo as well as NCCL, so tests on CPU shard for real. Composer silently
drops the FSDP1-only keys (`sharding_strategy`, `data_parallel_*_degree`) on that path;
we translate them here instead:

- FULL_SHARD             -> 1-D mesh over all ranks, reshard after forward (ZeRO-3)
- SHARD_GRAD_OP          -> 1-D mesh, keep params gathered after forward (ZeRO-2)
- HYBRID_SHARD           -> 2-D mesh (replicate, shard): shard within groups of
                            `data_parallel_shard_degree` ranks (default: one node), replicate across
- _HYBRID_SHARD_ZERO2    -> the same mesh, ZeRO-2 style
- NO_SHARD               -> 2-D mesh (world, 1): plain replication (DDP-like)

Why a subclass of FSDP2Config rather than `FSDP2Config(device_mesh=...)`: Composer's `State`
builds the job's device mesh itself, from `fsdp_config.data_parallel_replicate_degree` and
`data_parallel_shard_degree`, and then *overwrites* `fsdp_config.device_mesh` with it
(composer/core/state.py, `_create_device_mesh`). On FSDP2Config those two are read-only properties
hardwired to None and -1, so whatever 2-D mesh we passed in was silently replaced by a 1-D mesh
over all ranks: HYBRID_SHARD trained as FULL_SHARD, and every rank wrote checkpoint shards.
`FoundryFSDP2Config` turns the two degrees back into fields, so Composer builds the 2-D mesh with
its own dim names (`ParallelismType.DATA_PARALLEL_REPLICATE/SHARD`, i.e. 'data_parallel_replicate',
'data_parallel_shard'). Those names are what composer/utils/checkpoint.py looks for to let only
the first replica write a sharded checkpoint (and only its members download one from remote).

On CPU (gloo) FSDP2 needs three more things from torch 2.7 (`enable_gloo_fsdp2`):
- FSDP2 averages fp32/bf16 gradients with `reduce_scatter_tensor(op=ReduceOp.AVG)` over the shard
  dim: gloo silently *sums* instead (pytorch/pytorch#162338), so every CPU FSDP2 gradient came out
  multiplied by the shard degree (harmless for LION's sign update, wrong for gradient clipping
  thresholds and Adam's epsilon);
- HSDP then averages across the replicate dim with `all_reduce(op=ReduceOp.AVG)`, which gloo refuses
  ("Cannot use ReduceOp.AVG with Gloo"; pytorch/pytorch#149781 added it after 2.7.0);
- `torch.cpu.Stream.record_event()` returns None, and FSDP2's HSDP path asserts that the
  all-reduce recorded an event.
NCCL has none of these problems, so the fixes are installed for CPU runs only: FSDP2's collectives
module gets a torch.distributed whose AVG on gloo is SUM then divide by the group size (every other
call is torch.distributed's own), and CPU streams return an (always complete) `torch.cpu.Event`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional

from foundry.config.errors import ConfigError
from foundry.config.schema import FSDPConfig


@dataclass(frozen=True)
class MeshShape:
    replicate: int
    shard: int

    @property
    def is_hybrid(self) -> bool:
        return self.replicate > 1


def mesh_shape(fsdp: FSDPConfig, world_size: int, local_world_size: int) -> MeshShape:
    """How many replicas of how many shards, checked against the world size."""
    strategy = fsdp.sharding_strategy
    if strategy == 'NO_SHARD':
        return MeshShape(replicate=world_size, shard=1)
    shard = fsdp.data_parallel_shard_degree
    replicate = fsdp.data_parallel_replicate_degree
    hybrid = strategy in ('HYBRID_SHARD', '_HYBRID_SHARD_ZERO2') or replicate > 1 or 0 < shard < world_size
    if not hybrid:
        return MeshShape(replicate=1, shard=world_size)
    if shard < 1:
        shard = world_size // replicate if replicate > 1 else local_world_size
    if replicate <= 1:
        replicate = max(world_size // shard, 1)
    if shard * replicate != world_size:
        raise ConfigError(
            f'fsdp_config asks for {replicate} replicas x {shard} shards = {replicate * shard} ranks, but the job has '
            f'{world_size}; set `fsdp_config.data_parallel_shard_degree` and `data_parallel_replicate_degree` '
            f'so that their product is {world_size}')
    return MeshShape(replicate=replicate, shard=shard)


@functools.cache
def _foundry_fsdp2_config_class():
    # Defined on first use: importing Composer takes seconds, and `foundry plan` imports this module.
    from composer.utils.parallelism import FSDP2Config

    @dataclass
    class FoundryFSDP2Config(FSDP2Config):
        """FSDP2Config whose mesh degrees Composer's State reads (see foundry.distributed.fsdp).

        `data_parallel_replicate_degree=None` means no replicate dim (a 1-D mesh);
        `data_parallel_shard_degree=-1` means "all remaining ranks". Leave `device_mesh` None:
        Composer creates the mesh from the degrees when it builds the State.
        """

        data_parallel_shard_degree: int = -1
        data_parallel_replicate_degree: Optional[int] = None

        def __post_init__(self):
            # FSDP2Config's only __post_init__ work is a warning that the API is experimental: foundry pins
            # Composer and tests this path, so it is nothing a user could act on (printed on every run).
            pass

    FoundryFSDP2Config.__module__ = __name__
    FoundryFSDP2Config.__qualname__ = FoundryFSDP2Config.__name__
    return FoundryFSDP2Config


def __getattr__(name: str):
    if name == 'FoundryFSDP2Config':
        return _foundry_fsdp2_config_class()
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


class _GlooAveraging:
    """torch.distributed as FSDP2's collectives module sees it, with ReduceOp.AVG done right on gloo."""

    def __init__(self, dist):
        self._dist = dist

    def __getattr__(self, name):
        return getattr(self._dist, name)

    def _is_gloo_avg(self, op, group, async_op) -> bool:
        return op == self._dist.ReduceOp.AVG and not async_op and 'gloo' in str(self._dist.get_backend(group))

    def all_reduce(self, tensor, op=None, group=None, async_op=False):
        dist = self._dist
        op = dist.ReduceOp.SUM if op is None else op
        if self._is_gloo_avg(op, group, async_op):
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
            tensor.div_(dist.get_world_size(group))
            return None
        return dist.all_reduce(tensor, op=op, group=group, async_op=async_op)

    def reduce_scatter_tensor(self, output, input, op=None, group=None, async_op=False):
        dist = self._dist
        op = dist.ReduceOp.SUM if op is None else op
        if self._is_gloo_avg(op, group, async_op):
            dist.reduce_scatter_tensor(output, input, op=dist.ReduceOp.SUM, group=group)
            output.div_(dist.get_world_size(group))
            return None
        return dist.reduce_scatter_tensor(output, input, op=op, group=group, async_op=async_op)


def _cpu_stream_record_event(self, event=None):
    import torch

    event = torch.cpu.Event() if event is None else event
    event.record(self)
    return event


def enable_gloo_fsdp2() -> None:
    """Make FSDP2 (FULL_SHARD and HSDP) average gradients correctly on gloo; see the module docstring.

    Idempotent; changes nothing for NCCL process groups or CUDA streams.
    """
    import torch
    import torch.distributed as dist
    from torch.distributed.fsdp._fully_shard import _fsdp_collectives

    if not isinstance(_fsdp_collectives.dist, _GlooAveraging):
        _fsdp_collectives.dist = _GlooAveraging(dist)
    if torch.cpu.Stream().record_event() is None:
        torch.cpu.Stream.record_event = _cpu_stream_record_event


def build_fsdp2_config(fsdp: FSDPConfig, world_size: int, local_world_size: int, device_type: str = 'cuda'):
    """Composer's FSDP2 config for this job, the mesh shape given as degrees for Composer to build.

    On `device_type` 'cpu' (gloo) this also calls `enable_gloo_fsdp2`.
    """
    shape = mesh_shape(fsdp, world_size, local_world_size)
    degrees = {}
    if shape.is_hybrid or shape.shard == 1 and world_size > 1:
        degrees = {'data_parallel_replicate_degree': shape.replicate, 'data_parallel_shard_degree': shape.shard}
    if device_type == 'cpu':
        enable_gloo_fsdp2()
    zero2 = fsdp.sharding_strategy in ('SHARD_GRAD_OP', '_HYBRID_SHARD_ZERO2')
    return _foundry_fsdp2_config_class()(
        reshard_after_forward=False if zero2 else fsdp.reshard_after_forward,
        activation_checkpointing=fsdp.activation_checkpointing,
        activation_cpu_offload=fsdp.activation_cpu_offload,
        state_dict_type=fsdp.state_dict_type,
        load_monolith_rank0_only=fsdp.load_monolith_rank0_only,
        mixed_precision=fsdp.mixed_precision,
        verbose=fsdp.verbose,
        **degrees,
    )


def describe_layout(model, device_mesh) -> str:
    """One line: this rank's mesh coordinate and how the parameters are laid out over the mesh.

    Reads the DTensor parameters themselves (placements, local vs global shape), so it reports
    what FSDP2 actually did, not what was asked for.
    """
    import torch.distributed as dist
    from torch.distributed.tensor import DTensor

    rank = dist.get_rank() if dist.is_initialized() else 0
    if device_mesh is None:
        return f'rank {rank}: no device mesh (parameters not sharded)'
    names = device_mesh.mesh_dim_names or tuple(f'dim{i}' for i in range(device_mesh.ndim))
    dims = ' x '.join(f'{n}={s}' for n, s in zip(names, device_mesh.shape))
    # A list on torch 2.7, a tuple since 2.9: print one form so logs read the same on every stack.
    coord = list(device_mesh.get_coordinate() or [])
    params = [(n, p) for n, p in model.named_parameters()]
    placements = sorted({str(tuple(p.placements)) for _, p in params if isinstance(p, DTensor)})
    plain = [n for n, p in params if not isinstance(p, DTensor)]
    name, first = params[0]
    local = tuple(first.to_local().shape) if isinstance(first, DTensor) else tuple(first.shape)
    members = device_mesh.mesh.tolist() if device_mesh.mesh.numel() <= 16 else f'{device_mesh.mesh.numel()} in all'
    text = (f'rank {rank}: FSDP2 mesh {dims} (ranks {members}), coordinate {coord}; '
            f'parameter placements {", ".join(placements) or "none"}; {name} local {list(local)} of '
            f'{list(first.shape)}')
    if plain:
        text += f'; {len(plain)} parameter(s) not DTensors: {plain[:3]}'
    return text


def local_shard_fingerprint(model) -> str:
    """A fingerprint of this rank's local parameter shards, computed on device (two float64 sums per
    parameter; only a scalar leaves the device). Ranks holding bitwise-equal shards print the same
    string: HSDP replicas of one shard after training, when the replicate-dim all-reduce worked.
    """
    import torch
    from torch.distributed.tensor import DTensor

    total = None
    with torch.no_grad():
        for i, (_, p) in enumerate(sorted(model.named_parameters(), key=lambda kv: kv[0])):
            local = (p.to_local() if isinstance(p, DTensor) else p).double()
            term = (i + 1) * local.sum() + (local * local).sum()
            total = term if total is None else total + term
    return 'empty' if total is None else f'{float(total):.17g}'
