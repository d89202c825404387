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
"""

from __future__ import annotations

from dataclasses import dataclass

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


def build_fsdp2_config(fsdp: FSDPConfig, world_size: int, local_world_size: int, device_type: str):
    """Composer's FSDP2Config for this job; creates the device mesh when sharding is hybrid.

    Needs torch.distributed initialised when the mesh is 2-D (the mesh builds process groups).
    """
    from composer.utils.parallelism import FSDP2Config
    from torch.distributed.device_mesh import init_device_mesh

    shape = mesh_shape(fsdp, world_size, local_world_size)
    device_mesh = None
    if shape.is_hybrid or shape.shard == 1 and world_size > 1:
        device_mesh = init_device_mesh(device_type, (shape.replicate, shape.shard),
                                       mesh_dim_names=('dp_replicate', 'dp_shard'))
    zero2 = fsdp.sharding_strategy in ('SHARD_GRAD_OP', '_HYBRID_SHARD_ZERO2')
    return FSDP2Config(
        device_mesh=device_mesh,
        reshard_after_forward=False if zero2 else fsdp.reshard_after_forward,
        activation_checkpointing=fsdp.activation_checkpointing,
        activation_cpu_offload=fsdp.activation_cpu_offload,
        state_dict_type=fsdp.state_dict_type,
        load_monolith_rank0_only=fsdp.load_monolith_rank0_only,
        mixed_precision=fsdp.mixed_precision,
        verbose=fsdp.verbose,
    )
