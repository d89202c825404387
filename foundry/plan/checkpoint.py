"""Checkpoint size, write time, and the compute lost to one failure.

A sharded checkpoint (fsdp_config.state_dict_type: sharded, the default) holds the fp32 weights and
the fp32 optimizer state: 4 x (1 + states) bytes per parameter (LION: 8, AdamW: 12), split into one
file per shard rank, so every node writes its part at once. A `full` state dict, or DDP, is
gathered and written by rank 0 alone. `save_weights_only` drops the optimizer state.

Write (and read) rate = min(writing nodes x per-node rate, storage cap), both assumptions.
Expected loss per failure = half a save interval of training (a failure lands uniformly between
two saves) + restart overhead (reschedule, start, rendezvous) + reading the checkpoint back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from foundry.config.schema import TrainConfig
from foundry.plan.hardware import GB, Assumptions


@dataclass(frozen=True)
class Checkpointing:
    size_bytes: float
    sharded: bool
    writing_nodes: int
    bandwidth_gbps: float
    write_s: float
    read_s: float
    interval_text: str
    interval_s: Optional[float]
    interval_unknown_why: str
    failure_cost_s: Optional[float]
    count: Optional[int]  # checkpoints written over the run
    kept: Optional[int]  # of those, kept on storage

    @property
    def write_overhead(self) -> Optional[float]:
        """Fraction of training time spent blocked in writes."""
        return self.write_s / self.interval_s if self.interval_s else None


def checkpointing(cfg: TrainConfig, parameters: int, optimizer_state_count: int, nodes: int,
                  fsdp: bool, interval_tokens: Optional[float], interval_text: str, why_unknown: str,
                  tokens_per_s: float, total_tokens: Optional[float],
                  assumptions: Assumptions = Assumptions()) -> Checkpointing:
    states = 0 if cfg.save_weights_only else optimizer_state_count
    size = 4 * (1 + states) * parameters
    sharded = fsdp and (cfg.fsdp_config is not None and cfg.fsdp_config.state_dict_type == 'sharded')
    writers = nodes if sharded else 1
    bw = min(writers * assumptions.ckpt_node_gbps, assumptions.ckpt_storage_gbps)
    write_s = size / (bw * GB)
    read_s = write_s
    interval_s = interval_tokens / tokens_per_s if interval_tokens else None
    failure = (0.5 * interval_s + assumptions.restart_overhead_s + read_s) if interval_s else None
    count = kept = None
    if interval_tokens and total_tokens:
        count = int(math.floor(total_tokens / interval_tokens))
        keep = cfg.save_num_checkpoints_to_keep
        kept = count if keep is None or keep < 0 else min(keep, count)
    return Checkpointing(size, sharded, writers, bw, write_s, read_s, interval_text, interval_s,
                         why_unknown, failure, count, kept)
