"""A plan as a readable table (and as JSON for scripts)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from foundry.plan.hardware import GB, GiB
from foundry.plan.memory import Memory, largest_power_of_two_at_most
from foundry.plan.planner import Plan
from foundry.plan.throughput import human_duration


def _count(n: float) -> str:
    for unit, size in (('T', 1e12), ('B', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{n / size:.2f}{unit}'
    return f'{n:.0f}'


def _gib(x: float) -> str:
    return f'{x / GiB:8.2f}'


def _max_mb(n: int) -> str:
    return 'none' if n == 0 else f'{n} (pow2 {largest_power_of_two_at_most(n)})'


def _memory_rows(p: Plan) -> list[tuple[str, str, str]]:
    on, off = (p.memory, p.memory_other) if p.checkpointing_activations else (p.memory_other, p.memory)
    par = p.parallelism
    dt = {2: 'bf16', 4: 'fp32'}
    shard = f', 1/{par.shard} each' if par.shard > 1 else ', unsharded'
    if par.fsdp:
        units = ('every unit (ZeRO-2)' if par.zero2 else 'root + 2 blocks')
        gathered = f'all-gathered {units} {dt[par.compute_bytes]} + grad {dt[par.reduce_bytes]}'
    else:
        gathered = 'autocast bf16 weight cache' if par.compute_bytes == 2 else 'gathered units (none)'

    def row(label: str, get) -> tuple[str, str, str]:
        return (label, _gib(get(on)), _gib(get(off)))

    rows = [
        row(f'weights (fp32 master{shard})', lambda m: m.weights),
        row(f'gradients (fp32{shard})', lambda m: m.gradients),
        row(f'optimizer ({p.optimizer_state_count} x fp32{shard})', lambda m: m.optimizer),
        row(gathered, lambda m: m.gathered),
        row('activations: transformer blocks', lambda m: m.activations.blocks),
        row('activations: recomputed block', lambda m: m.activations.recompute),
        row('activations: backward workspace', lambda m: m.activations.workspace),
        row('activations: final norm, logits, loss', lambda m: m.activations.head),
        row('activations: attention bias', lambda m: m.activations.attn_bias),
        row('reserved (CUDA context, NCCL)', lambda m: m.reserved),
        row('total', lambda m: m.total),
    ]
    return rows


def _status(m: Memory) -> str:
    free = m.headroom / GiB
    return f'{m.status} ({free:+.1f} GiB)'


def format_plan(p: Plan, source: str = '') -> str:
    m, par, g = p.model, p.parallelism, p.gpu
    out: list[str] = []
    add = out.append
    where = f'{source} on ' if source else ''
    add(f'foundry plan: {where}{p.gpus} x {g.label} ({p.nodes} node{"s" if p.nodes > 1 else ""} '
        f'x {min(p.gpus_per_node, p.gpus)}; per GPU: {g.memory_gib:g} GiB, {g.peak_bf16_tflops:g} bf16 TFLOP/s, '
        f'NVLink {g.nvlink_gbps:g} GB/s, NIC {g.nic_gbps:g} GB/s)')
    add('')
    kv = f' ({m.kv_n_heads} kv)' if m.kv_n_heads != m.n_heads else ''
    add(f'  model        {_count(m.parameters)} parameters ({m.parameters:,}); d_model {m.d_model}, '
        f'{m.n_layers} layers, {m.n_heads} heads{kv}, ffn {m.ffn_hidden_size}, vocab {m.vocab_size}, seq {m.seq_len}')
    replicas = f' x {par.replicate} replicas' if par.replicate > 1 else ''
    add(f'  parallelism  {par.strategy}: shard group {par.shard}{replicas}')
    add(f'  precision    {par.precision_note}')
    add(f'  optimizer    {p.optimizer} ({p.optimizer_note})')
    add(f'  batch        global {p.global_batch} x {m.seq_len} = {p.tokens_per_batch:,} tokens; '
        f'{p.per_device_batch:g} per GPU; micro-batch {p.micro_batch} ({p.micro_batch_source})')
    add('')
    k, n = p.memory.checkpointed_blocks if p.checkpointing_activations else p.memory_other.checkpointed_blocks, m.n_layers
    on_label = ('act. ckpt ON' if k == n else f'act. ckpt {k}/{n} blocks') + (' *' if p.checkpointing_activations else '')
    off_label = 'act. ckpt OFF' + ('' if p.checkpointing_activations else ' *')
    width, col = 46, 20
    head = f'memory per GPU (GiB) at micro-batch {p.micro_batch}'
    add(f'  {head:<{width}} {on_label:>{col}} {off_label:>{col}}')
    for label, a, b in _memory_rows(p):
        if label == 'total':
            add(f'  {"-" * (width + 2 * col + 2)}')
        add(f'  {label:<{width}} {a:>{col}} {b:>{col}}')
    on, off = (p.memory, p.memory_other) if p.checkpointing_activations else (p.memory_other, p.memory)
    mx_on, mx_off = ((p.max_micro_batch, p.max_micro_batch_other) if p.checkpointing_activations
                     else (p.max_micro_batch_other, p.max_micro_batch))
    add(f'  {f"on {g.memory_gib:g} GiB":<{width}} {_status(on):>{col}} {_status(off):>{col}}')
    add(f'  {"largest micro-batch that fits":<{width}} {_max_mb(mx_on):>{col}} {_max_mb(mx_off):>{col}}')
    add(f'  (* = as configured; "fits" leaves {1 - p.assumptions.fit_fraction:.0%} of the non-reserved memory '
        f'for fragmentation)')
    add('')
    add(f'  MFU          {p.mfu:.1%}  [{p.mfu_source}]')
    add(f'  FLOPs/token  {p.flops_per_token:.4g}  (6N + 12 n_layers d_model seq, N = {_count(m.matmul_parameters)})')
    add(f'  throughput   {p.tokens_per_s_gpu:,.0f} tokens/s/GPU, {_count(p.tokens_per_s)} tokens/s in all; '
        f'{p.step_s:.2f} s per batch')
    if p.duration.tokens:
        hours = f', {p.gpu_hours:,.0f} GPU-hours' if p.gpu_hours else ''
        add(f'  duration     max_duration {p.duration.text} = {_count(p.duration.tokens)} tokens '
            f'-> {human_duration(p.duration_s)}{hours}')
    else:
        add(f'  duration     max_duration {p.duration.text}: unknown ({p.duration.why_unknown})')
    c = p.communication
    if c is not None:
        add(f'  traffic      {c.bytes_per_micro_batch / GB:.1f} GB per GPU per micro-batch over {c.link}: '
            f'{c.comm_s:.2f} s vs {c.compute_s:.2f} s of compute '
            f'({c.ratio:.0%}, {"can be hidden by overlap" if c.ratio <= 1 else "communication-bound"})')
    add('')
    ck = p.checkpoint
    what = 'fp32 weights' + ('' if p.optimizer_state_count == 0 else f' + {p.optimizer_state_count} fp32 optimizer state'
                             f'{"s" if p.optimizer_state_count > 1 else ""}')
    add(f'  checkpoint   {ck.size_bytes / GB:,.1f} GB ({what}), '
        f'{"sharded, " + str(ck.writing_nodes) + " node(s) writing" if ck.sharded else "written by rank 0"} '
        f'at {ck.bandwidth_gbps:g} GB/s -> {human_duration(ck.write_s)} per save')
    if ck.interval_s:
        overhead = ''
        if ck.write_overhead is not None and ck.write_overhead < 1:
            overhead = f'; each save ({human_duration(ck.write_s)}) adds {ck.write_overhead:.2%} to that training time'
        elif ck.write_overhead is not None:
            overhead = (f'; each save ({human_duration(ck.write_s)}) takes {ck.write_overhead:,.1f}x that training '
                        f'time: raise save_interval')
        add(f'  save every   {ck.interval_text} = {human_duration(ck.interval_s)}{overhead}')
        kept = ''
        if ck.count is not None:
            kept = f'; {ck.count} saves, {ck.kept} kept = {ck.kept * ck.size_bytes / 1e12:,.2f} TB'
        add(f'  failure      ~{human_duration(ck.failure_cost_s)} lost per failure (half an interval '
            f'{human_duration(ck.interval_s / 2)} + restart {human_duration(p.assumptions.restart_overhead_s)} '
            f'+ read {human_duration(ck.read_s)}) = {ck.failure_cost_s * p.gpus / 3600:,.0f} GPU-hours{kept}')
    else:
        add(f'  save every   {ck.interval_text}: unknown ({ck.interval_unknown_why})')
    if p.notes:
        add('')
        for note in p.notes:
            add(f'  note: {note}')
    return '\n'.join(out)


def plan_to_dict(p: Plan) -> dict[str, Any]:
    def convert(obj):
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            d = {f.name: convert(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
            for name in ('total', 'status', 'headroom', 'parameters', 'matmul_parameters', 'block_parameters',
                         'root_parameters', 'gpu_hours', 'write_overhead', 'ratio'):
                if hasattr(type(obj), name) and isinstance(getattr(type(obj), name), property):
                    d[name] = convert(getattr(obj, name))
            return d
        if isinstance(obj, (list, tuple)):
            return [convert(x) for x in obj]
        return obj

    return convert(p)


def plan_to_json(p: Plan) -> str:
    return json.dumps(plan_to_dict(p), indent=2, default=str)
