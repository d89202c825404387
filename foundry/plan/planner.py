"""`plan(cfg, gpus, gpu, mfu)`: will this config fit, how fast will it go, what does a failure cost."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from foundry.config.errors import ConfigError
from foundry.config.schema import TrainConfig
from foundry.plan.checkpoint import Checkpointing, checkpointing
from foundry.plan.hardware import GPU, Assumptions, get_gpu
from foundry.plan.memory import (Memory, Parallelism, largest_micro_batch, largest_power_of_two_at_most,
                                 memory, optimizer_states, parallelism)
from foundry.plan.model import ModelShape, model_shape
from foundry.plan.throughput import (Communication, Span, communication, default_mfu, flops_per_token,
                                     parse_span)


@dataclass
class Plan:
    model: ModelShape
    gpu: GPU
    gpus: int
    gpus_per_node: int
    nodes: int
    parallelism: Parallelism
    optimizer: str
    optimizer_state_count: int
    optimizer_note: str
    global_batch: int
    per_device_batch: float
    micro_batch: int  # the micro-batch the memory table is shown for
    micro_batch_source: str
    checkpointing_activations: bool  # fsdp_config.activation_checkpointing or model.ac_every_n_blocks
    memory: Memory  # at micro_batch, as configured
    memory_other: Memory  # at micro_batch, with activation checkpointing flipped
    max_micro_batch: int  # as configured
    max_micro_batch_other: int  # activation checkpointing flipped
    mfu: float
    mfu_source: str
    flops_per_token: float
    tokens_per_s_gpu: float
    tokens_per_s: float
    tokens_per_batch: int
    step_s: float
    duration: Span
    duration_s: Optional[float]
    communication: Optional[Communication]
    checkpoint: Checkpointing
    assumptions: Assumptions
    notes: list[str] = field(default_factory=list)

    @property
    def gpu_hours(self) -> Optional[float]:
        return None if self.duration_s is None else self.duration_s * self.gpus / 3600


def plan(cfg: TrainConfig, gpus: int, gpu: str, mfu: Optional[float] = None, *, gpus_per_node: int = 8,
         micro_batch: Optional[int] = None, assumptions: Assumptions = Assumptions()) -> Plan:
    """Estimate memory, speed, duration and checkpoint cost of `cfg` on `gpus` x `gpu`.

    Nothing is allocated: parameters are counted from the config. `mfu` is model-FLOPs
    utilisation (0-1); None uses llm-foundry's published figure for the nearest size and GPU.
    `micro_batch` overrides the config's device_train_microbatch_size.
    """
    if gpus < 1:
        raise ConfigError(f'--gpus must be at least 1, got {gpus}')
    if gpus_per_node < 1:
        raise ConfigError(f'--gpus-per-node must be at least 1, got {gpus_per_node}')
    if mfu is not None and not 0 < mfu <= 1:
        raise ConfigError(f'--mfu is a fraction in (0, 1], got {mfu} (write 0.45 for 45%)')
    try:
        device = get_gpu(gpu)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    notes: list[str] = []
    m = model_shape(cfg)
    per_node = min(gpus_per_node, gpus)
    nodes = math.ceil(gpus / gpus_per_node)
    if gpus > gpus_per_node and gpus % gpus_per_node:
        notes.append(f'{gpus} GPUs do not fill {nodes} nodes of {gpus_per_node}')
    par = parallelism(cfg, gpus, per_node)
    opt_name = str(cfg.optimizer.get('name', 'unknown'))
    n_states, opt_note = optimizer_states(opt_name)

    per_device = cfg.global_train_batch_size / gpus
    if cfg.global_train_batch_size % gpus:
        notes.append(f'global_train_batch_size {cfg.global_train_batch_size} is not divisible by {gpus} GPUs; '
                     f'Composer needs a whole per-device batch')
    ac = bool(cfg.fsdp_config and cfg.fsdp_config.activation_checkpointing) or m.own_checkpointed_blocks > 0
    max_mb = largest_micro_batch(m, par, device, n_states, ac, assumptions)
    max_mb_other = largest_micro_batch(m, par, device, n_states, not ac, assumptions)
    if micro_batch is not None:
        mb, mb_source = micro_batch, '--micro-batch'
    elif isinstance(cfg.device_train_microbatch_size, int):
        mb, mb_source = cfg.device_train_microbatch_size, 'device_train_microbatch_size'
    else:
        mb = max(1, min(max_mb, max(1, int(per_device))))
        mb_source = "'auto': the largest that fits, up to the per-device batch"
    mem = memory(m, par, device, n_states, mb, ac, assumptions)
    mem_other = memory(m, par, device, n_states, mb, not ac, assumptions)
    if mb > per_device >= 1:
        notes.append(f'micro-batch {mb} exceeds the per-device batch {per_device:g}; '
                     f'each step runs one micro-batch of {per_device:g}')

    if mfu is None:
        mfu, mfu_source = default_mfu(m.parameters, device, gpus, assumptions)
    else:
        mfu_source = 'given (--mfu)'
    fpt = flops_per_token(m)
    tps_gpu = mfu * device.peak_flops / fpt
    tps = tps_gpu * gpus
    tokens_per_batch = cfg.global_train_batch_size * m.seq_len
    duration = parse_span(cfg.max_duration, tokens_per_batch, m.seq_len)
    duration_s = duration.tokens / tps if duration.tokens else None
    micro_batches = max(1, math.ceil(per_device / mb)) if per_device >= 1 else 1
    comm = communication(m, par, device, gpus, gpus_per_node, min(mb, max(1, int(per_device))),
                         micro_batches, tps_gpu)
    if comm is not None and comm.ratio > 1:
        notes.append(f'{par.strategy} traffic ({comm.comm_s:.2f} s per micro-batch over {comm.link}) exceeds '
                     f'compute ({comm.compute_s:.2f} s): it cannot be hidden and the MFU will fall short; '
                     f'raise the micro-batch or use HYBRID_SHARD')

    interval = parse_span(cfg.save_interval, tokens_per_batch, m.seq_len, duration.tokens)
    ckpt = checkpointing(cfg, m.parameters, n_states, nodes, par.fsdp, interval.tokens, interval.text,
                         interval.why_unknown, tps, duration.tokens, assumptions)
    if cfg.save_folder is None:
        notes.append('save_folder is unset: no checkpoints are written, a failure restarts the run from scratch')
    if m.seq_len > m.max_seq_len:
        notes.append(f'training sequence length {m.seq_len} exceeds model.max_seq_len {m.max_seq_len}')
    if cfg.precision == 'amp_fp8':
        notes.append('amp_fp8: activations are bf16-sized (torchao saves bf16 inputs for backward) plus one '
                     "Linear's float8 casts; throughput is estimated at the bf16 MFU")

    return Plan(
        model=m, gpu=device, gpus=gpus, gpus_per_node=gpus_per_node, nodes=nodes, parallelism=par,
        optimizer=opt_name, optimizer_state_count=n_states, optimizer_note=opt_note,
        global_batch=cfg.global_train_batch_size, per_device_batch=per_device, micro_batch=mb,
        micro_batch_source=mb_source, checkpointing_activations=ac, memory=mem, memory_other=mem_other,
        max_micro_batch=max_mb, max_micro_batch_other=max_mb_other, mfu=mfu, mfu_source=mfu_source,
        flops_per_token=fpt, tokens_per_s_gpu=tps_gpu, tokens_per_s=tps, tokens_per_batch=tokens_per_batch,
        step_s=tokens_per_batch / tps, duration=duration, duration_s=duration_s, communication=comm,
        checkpoint=ckpt, assumptions=assumptions, notes=notes,
    )


__all__ = ['Plan', 'plan', 'largest_power_of_two_at_most']
