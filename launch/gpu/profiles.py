"""What the GPU check runs in each mode: the models, batches, overrides, budgets and bounds."""

from __future__ import annotations

import os
from dataclasses import dataclass

# The repository root: YAMLs, launch/train.py and foundry/ are found from it.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclass
class ModelRun:
    """One model's speed run. The first model is also the one of the resume and export steps."""
    name: str  # mpt-125m
    yaml: str
    batch: int  # global = per device (one process)
    batches: int
    warmup: int  # batches left out of the steady-state median (compilation, allocator warm-up)


@dataclass
class Profile:
    device: str
    seq: int
    vocab: int  # of the trained BPE
    corpus_bytes: int  # per stream
    models: list[ModelRun]
    save_interval: int  # of the reference / resume runs
    common: list[str]
    # Rates over this many batches (throughput_monitor's window); the median of the windows after warm-up.
    window: int
    # GPU: the speed runs are the plain path (no checkpoints, no evaluation, no data fingerprint and its
    # per-batch host sync), and the uninterrupted run the resume step compares with is a run of its own.
    # CPU smoke: the first speed run is that reference (one launch fewer on a 2-core machine).
    separate_reference: bool
    budget_s: float
    run_timeout_s: float
    logits_tokens: int
    logits_bound: float


def gpu_profile() -> Profile:
    return Profile(
        device='gpu', seq=2048, vocab=8192, corpus_bytes=6_000_000,
        models=[
            # gpu_bench.py's batches (16 and 8 sequences of 2048), so the figures compare with its table.
            ModelRun('mpt-125m', 'yamls/pretrain/mpt-125m.yaml', batch=16, batches=40, warmup=10),
            ModelRun('mpt-1b', 'yamls/pretrain/mpt-1b.yaml', batch=8, batches=30, warmup=10),
        ],
        save_interval=10,
        common=['precision=amp_bf16', 'model.attn_config.attn_impl=flex', 'compile_config={}'],
        # No host sync per batch on this path: a batch's end on the host can run ahead of the GPU by a batch,
        # so single-batch rates jitter; 5-batch windows do not.
        window=5, separate_reference=True,
        budget_s=470, run_timeout_s=240, logits_tokens=512,
        # fp32 on both sides; transformers' eager attention vs foundry's compiled flex kernel sum in different
        # orders over 12 layers: differences of ~1e-5 relative to logits of magnitude ~10.
        logits_bound=1e-3)


def cpu_profile(compile_on: bool) -> Profile:
    tiny = ['model.d_model=64', 'model.n_heads=4', 'model.n_layers=2', 'model.vocab_size=512',
            'train_loader.num_workers=0', 'eval_loader.num_workers=0', 'device_eval_batch_size=8',
            'eval_subset_num_batches=2',
            'callbacks.throughput_monitor.cpu_peak_seconds=0.2']
    return Profile(
        device='cpu', seq=128, vocab=512, corpus_bytes=150_000,
        models=[ModelRun('mpt-125m', 'yamls/pretrain/mpt-125m.yaml', batch=8, batches=8, warmup=2),
                ModelRun('mpt-1b', 'yamls/pretrain/mpt-1b.yaml', batch=8, batches=4, warmup=1)],
        save_interval=2,
        common=['precision=amp_bf16', 'model.attn_config.attn_impl=flex',
                *(['compile_config={}'] if compile_on else []), *tiny],
        window=1, separate_reference=False,
        budget_s=600, run_timeout_s=300, logits_tokens=64, logits_bound=1e-4)
