"""Training FLOPs, the MFU to assume, and durations in tokens and seconds.

FLOPs per token (model FLOPs, llm-foundry's formula, the same as foundry.models.flops):

    6 * N + 12 * n_layers * d_model * seq_len

N is the matmul parameter count (all non-embedding parameters + the d_model x vocab output
projection; for MPT's tied embeddings, the total parameter count). This is the formula that
reproduces llm-foundry's published throughput table from its MFU column within ~1% (7b: 10,643
tokens/s/GPU on H100 at 46.4%; 1b: 19,271 on A100 at 56.2%; 125m: 136,334 at 42.8%). Counting
only the causal half of attention (6 * n_layers * d_model * seq) or dropping it misses the 125m row by
14-32%. Activation checkpointing does not change *model* FLOPs; it adds a forward's worth of
hardware FLOPs (HFU = MFU x 4/3), which is why a plan's MFU means model FLOPs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Union

from foundry.plan.hardware import GPU, Assumptions
from foundry.plan.model import ModelShape


def flops_per_token(m: ModelShape) -> float:
    return 6 * m.matmul_parameters + 12 * m.n_layers * m.d_model * m.seq_len


@dataclass(frozen=True)
class PublishedMFU:
    model: str
    parameters: float
    gpu: str
    gpus: int
    mfu: float
    note: str = ''


# llm-foundry's published throughput table (seq 2048, bf16); see /work/shared/REFERENCE.md.
PUBLISHED_MFU: tuple[PublishedMFU, ...] = (
    PublishedMFU('125m', 125e6, 'a100-40gb', 8, 0.428),
    PublishedMFU('125m', 125e6, 'a100-80gb', 8, 0.448),
    PublishedMFU('1b', 1.3e9, 'a100-40gb', 8, 0.562),
    PublishedMFU('1b', 1.3e9, 'h100', 8, 0.418),
    PublishedMFU('7b', 6.7e9, 'a100-40gb', 8, 0.509, 'activation checkpointing'),
    PublishedMFU('7b', 6.7e9, 'a100-40gb', 128, 0.501),
    PublishedMFU('7b', 6.7e9, 'h100', 8, 0.464),
    PublishedMFU('7b', 6.7e9, 'h100', 512, 0.422),
)

# A published row is used for models within this factor of its size; else the fallback MFU.
MFU_SIZE_FACTOR = 3.0


def default_mfu(parameters: int, gpu: GPU, gpus: int,
                assumptions: Assumptions = Assumptions()) -> tuple[float, str]:
    """The MFU llm-foundry published for the nearest model size on the same chip, and its source.

    Nearest size first; among that size's rows the exact GPU kind (A100-40GB vs -80GB), then the
    nearest GPU count (both on a log scale). H200 uses H100 rows: same compute die and peak.
    """
    from foundry.plan.hardware import GPUS

    rows = [r for r in PUBLISHED_MFU if GPUS[r.gpu].family == gpu.family]
    if rows:
        nearest = min(abs(math.log(parameters / r.parameters)) for r in rows)
        if nearest <= math.log(MFU_SIZE_FACTOR):
            same_size = [r for r in rows if abs(math.log(parameters / r.parameters)) == nearest]
            best = min(same_size, key=lambda r: (r.gpu != gpu.name, abs(math.log(gpus / r.gpus))))
            note = f', {best.note}' if best.note else ''
            return best.mfu, (f"llm-foundry's published {best.model} on {best.gpus} x {best.gpu}"
                              f'{note}: {best.mfu:.1%}')
    return assumptions.fallback_mfu, (f'no published llm-foundry figure near this size on {gpu.family}; '
                                      f'assumed {assumptions.fallback_mfu:.0%}')


_TIME_RE = re.compile(r'^\s*(\d[\d_]*(?:\.\d*)?(?:e[+-]?\d+)?)\s*(ba|tok|sp|ep|dur)\s*$', re.IGNORECASE)


@dataclass(frozen=True)
class Span:
    """A Composer time string in tokens, when it can be known without the dataset."""

    text: str
    tokens: Optional[float]
    why_unknown: str = ''


def parse_span(value: Union[str, int], tokens_per_batch: int, seq_len: int,
               total_tokens: Optional[float] = None) -> Span:
    """'277433ba', '1000000000tok', '512sp', '0.1dur' -> tokens. Epochs ('1ep' or a bare int,
    which Composer reads as epochs) depend on the dataset's size and stay unknown."""
    text = str(value)
    if isinstance(value, bool):
        return Span(text, None, f'{text!r} is not a duration')
    if isinstance(value, int):
        return Span(text, None, f'{value} (an integer) means epochs in Composer; give batches (ba) or tokens (tok)')
    match = _TIME_RE.match(text)
    if not match:
        return Span(text, None, f'{text!r} is not a single Composer time (e.g. 1000ba, 1e9tok)')
    number, unit = float(match.group(1).replace('_', '')), match.group(2).lower()
    if unit == 'ba':
        return Span(text, number * tokens_per_batch)
    if unit == 'tok':
        return Span(text, number)
    if unit == 'sp':
        return Span(text, number * seq_len)
    if unit == 'dur':
        if total_tokens is None:
            return Span(text, None, 'a fraction of a duration that is itself unknown')
        return Span(text, number * total_tokens)
    return Span(text, None, f'{text} is in epochs, which depend on the dataset size; give batches or tokens')


def human_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return 'unknown'
    if seconds < 1:  # tiny models on big clusters: '0 s' would hide a save that costs more than training
        return f'{seconds * 1000:.3g} ms'
    if seconds < 120:
        return f'{seconds:.0f} s'
    if seconds < 2 * 3600:
        return f'{seconds / 60:.1f} min'
    if seconds < 2 * 86400:
        return f'{seconds / 3600:.1f} h'
    return f'{seconds / 86400:.2f} days'


@dataclass(frozen=True)
class Communication:
    """FSDP (or DDP) traffic per GPU and how it compares with compute, per micro-batch."""

    bytes_per_micro_batch: float
    link: str  # the links it crosses: NVLink, NIC, or both (HSDP: shards in a node, replicas across)
    comm_s: float
    compute_s: float

    @property
    def ratio(self) -> float:
        return self.comm_s / self.compute_s if self.compute_s else math.inf


def communication(m: ModelShape, par, gpu: GPU, gpus: int, gpus_per_node: int, micro_batch: int,
                  micro_batches_per_step: int, tokens_per_s_gpu: float) -> Optional[Communication]:
    """Ring collective volume per GPU. FSDP all-gathers the compute copy twice (forward, backward)
    and reduce-scatters gradients once per micro-batch, each moving (k-1)/k of the model over the
    k shard ranks; replicas (HSDP, DDP) all-reduce their fp32 gradient shard, 2 (r-1)/r of it, once
    per step (spread here over its micro-batches). A ring runs at its slowest link: the NIC once the
    group spans nodes, NVLink inside one. Times assume no overlap; below 100% of compute, FSDP's
    prefetching can hide them."""
    p = m.parameters
    shard_bytes = replica_bytes = 0.0
    if par.fsdp and par.shard > 1:
        k = par.shard
        shard_bytes = (k - 1) / k * p * (2 * par.compute_bytes + par.reduce_bytes)
    if par.replicate > 1:
        r = par.replicate
        replica_bytes = 2 * (r - 1) / r * (4 * p / par.shard) / max(micro_batches_per_step, 1)
    if shard_bytes + replica_bytes == 0:
        return None
    shard_link = 'NIC' if par.shard > gpus_per_node else 'NVLink'
    # Replicas sit on different nodes unless the whole job fits on one node.
    replica_link = 'NIC' if gpus > gpus_per_node else 'NVLink'
    bw = {'NIC': gpu.nic_gbps * 1e9, 'NVLink': gpu.nvlink_gbps * 1e9}
    comm_s = shard_bytes / bw[shard_link] + replica_bytes / bw[replica_link]
    links = []
    for used, link in ((shard_bytes, shard_link), (replica_bytes, replica_link)):
        if used and link not in links:
            links.append(link)
    compute_s = micro_batch * m.seq_len / tokens_per_s_gpu
    return Communication(shard_bytes + replica_bytes, ' + '.join(links), comm_s, compute_s)
