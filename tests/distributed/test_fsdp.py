"""fsdp_config -> mesh shape and Composer's FSDP2 config: the FSDP1 keys Composer drops on its FSDP2 path."""

import pytest

from foundry.config.errors import ConfigError
from foundry.config.schema import FSDPConfig
from foundry.distributed.fsdp import build_fsdp2_config, mesh_shape


def test_full_shard_is_one_dimensional():
    shape = mesh_shape(FSDPConfig(), world_size=8, local_world_size=8)
    assert (shape.replicate, shape.shard) == (1, 8) and not shape.is_hybrid


def test_hybrid_shard_defaults_to_one_node_per_shard_group():
    shape = mesh_shape(FSDPConfig(sharding_strategy='HYBRID_SHARD'), world_size=16, local_world_size=8)
    assert (shape.replicate, shape.shard) == (2, 8)


def test_explicit_degrees_map_to_a_two_dimensional_mesh():
    shape = mesh_shape(FSDPConfig(data_parallel_shard_degree=2, data_parallel_replicate_degree=2),
                       world_size=4, local_world_size=2)
    assert (shape.replicate, shape.shard) == (2, 2) and shape.is_hybrid


def test_a_shard_degree_below_the_world_size_alone_means_hybrid():
    shape = mesh_shape(FSDPConfig(data_parallel_shard_degree=4), world_size=16, local_world_size=8)
    assert (shape.replicate, shape.shard) == (4, 4)


def test_hybrid_shard_on_a_single_node_is_plain_full_sharding():
    # The same YAML resumed on one node: nothing left to replicate across.
    shape = mesh_shape(FSDPConfig(sharding_strategy='HYBRID_SHARD'), world_size=2, local_world_size=2)
    assert (shape.replicate, shape.shard) == (1, 2) and not shape.is_hybrid


def test_no_shard_replicates_everywhere():
    shape = mesh_shape(FSDPConfig(sharding_strategy='NO_SHARD'), world_size=4, local_world_size=4)
    assert (shape.replicate, shape.shard) == (4, 1)


def test_degrees_that_do_not_multiply_to_world_size_are_refused():
    fsdp = FSDPConfig(data_parallel_shard_degree=3, data_parallel_replicate_degree=2)
    with pytest.raises(ConfigError, match='product is 8'):
        mesh_shape(fsdp, world_size=8, local_world_size=8)


@pytest.mark.parametrize('fsdp, world, local, degrees', [
    (FSDPConfig(sharding_strategy='HYBRID_SHARD'), 4, 2, (2, 2)),
    (FSDPConfig(data_parallel_shard_degree=2, data_parallel_replicate_degree=2), 4, 4, (2, 2)),
    (FSDPConfig(sharding_strategy='NO_SHARD'), 4, 4, (4, 1)),
    (FSDPConfig(), 4, 2, (None, -1)),  # 1-D: Composer's own default mesh over every rank
    (FSDPConfig(sharding_strategy='HYBRID_SHARD'), 2, 2, (None, -1)),
])
def test_composer_config_carries_the_mesh_as_degrees(fsdp, world, local, degrees):
    from composer.utils.parallelism import FSDP2Config

    config = build_fsdp2_config(fsdp, world, local, device_type='cuda')
    assert isinstance(config, FSDP2Config)  # Composer's Trainer routes it to the FSDP2 path by type
    assert (config.data_parallel_replicate_degree, config.data_parallel_shard_degree) == degrees
    assert config.device_mesh is None  # Composer builds the mesh from the degrees


def test_zero2_strategies_keep_parameters_gathered_after_forward():
    assert build_fsdp2_config(FSDPConfig(sharding_strategy='_HYBRID_SHARD_ZERO2'), 4, 2).reshard_after_forward is False
    assert build_fsdp2_config(FSDPConfig(sharding_strategy='HYBRID_SHARD'), 4, 2).reshard_after_forward is True
