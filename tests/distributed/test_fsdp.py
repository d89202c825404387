"""fsdp_config -> mesh shape: the FSDP1 keys Composer drops on its FSDP2 path."""

import pytest

from foundry.config.errors import ConfigError
from foundry.config.schema import FSDPConfig
from foundry.distributed.fsdp import mesh_shape


def test_full_shard_is_one_dimensional():
    shape = mesh_shape(FSDPConfig(), world_size=8, local_world_size=8)
    assert (shape.replicate, shape.shard) == (1, 8) and not shape.is_hybrid


def test_hybrid_shard_defaults_to_one_node_per_shard_group():
    shape = mesh_shape(FSDPConfig(sharding_strategy='HYBRID_SHARD'), world_size=16, local_world_size=8)
    assert (shape.replicate, shape.shard) == (2, 8)


def test_explicit_degrees_map_to_a_two_dimensional_mesh():
    fsdp = FSDPConfig(data_parallel_shard_degree=2, data_parallel_replicate_degree=2)
    assert (mesh_shape(fsdp, world_size=4, local_world_size=2).replicate, 2) == (2, 2)


def test_no_shard_replicates_everywhere():
    shape = mesh_shape(FSDPConfig(sharding_strategy='NO_SHARD'), world_size=4, local_world_size=4)
    assert (shape.replicate, shape.shard) == (4, 1)


def test_degrees_that_do_not_multiply_to_world_size_are_refused():
    fsdp = FSDPConfig(data_parallel_shard_degree=3, data_parallel_replicate_degree=2)
    with pytest.raises(ConfigError, match='product is 8'):
        mesh_shape(fsdp, world_size=8, local_world_size=8)
