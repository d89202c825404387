"""Per-GPU memory of one training step: model state, gathered FSDP units, activations.

Precision assumptions (what Composer's FSDP2 path does with foundry's configs):

- Parameters live in fp32 and are sharded over the shard group: the sharded fp32 parameters *are*
  the master weights; there is no separate master copy. `mixed_precision` PURE/DEFAULT all-gather
  a bf16 compute copy one FSDP unit at a time (FULL gathers fp32); PURE reduce-scatters gradients
  in bf16, DEFAULT and FULL in fp32. Reduced gradient shards are stored in the parameter dtype,
  fp32. So weights 4 B, gradients 4 B, optimizer 4 B x states, all per parameter / shard degree.
- Optimizer states are fp32: LION keeps 1 (momentum), Adam/AdamW 2 (first and second moment).
- Shard degree: FULL_SHARD / SHARD_GRAD_OP over all ranks; HYBRID_SHARD over
  `data_parallel_shard_degree` (default: one node), replicated across groups; NO_SHARD or no
  fsdp_config: 1 (a full replica per GPU; without FSDP autocast also caches a bf16 copy of every
  weight for the step).

Gathered units: every MPT block is one FSDP unit and the root (embeddings, final norm, untied head)
is another. FSDP2 keeps the root gathered for the whole step and prefetches the next block, so we
count root + 2 blocks in the compute dtype, plus the largest unit's unsharded gradient in the
reduce dtype. SHARD_GRAD_OP (ZeRO-2) keeps every unit gathered from forward to backward.

Activations, per micro-batch of b sequences of s tokens, width h, ffn width f, in bytes with
a = 2 (bf16 autocast; 4 in fp32). Starting from Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models"), sbh(34 + 5 a_heads s / h) bytes per layer in 16-bit,
we drop what foundry does not store:

- the 5 a_heads s^2 b term (attention scores, softmax, attention dropout): SDPA's fused kernels
  keep only the output and a fp32 log-sum-exp (4 b a_heads s bytes);
- the two 1-byte residual dropout masks (MPT-7B trains without dropout; counted when
  resid_pdrop > 0).

Stored per layer, in elements: block input (LN1 input) sbh, LN1 output sbh, Q, K, V 3sbh, attention
output sbh, LN2 input sbh, LN2 output sbh, up_proj output sbf, GELU output sbf:
    8 sbh + 2 sbf  ->  a(8 + 2f/h) sbh = 32 sbh bytes at f = 4h (Korthikanti's 34 less the masks)
(+ sbh + s b kv_dim for q_ln/k_ln inputs; + 2 s b kv_dim under grouped-query attention, K and V
before repetition). tests/plan measures what autograd saves for a small MPT on CPU and matches
this within 2%. The largest micro-batch it predicts for 1b-13b on 8 H100s lands on or just above
the micro-batches of llm-foundry's published H100 benchmark runs (tests/plan).

Activation checkpointing is counted per block: a checkpointed block keeps only its input, a*sbh, and
one block at a time is recomputed in backward (one layer's activations). `fsdp_config.
activation_checkpointing` checkpoints every block; the model's own `ac_every_n_blocks: n` blocks 0,
n, 2n, ... (and turns FSDP's off), the others keep everything. Both cases add one layer's worth as
backward workspace (activation gradients in flight).

Around the blocks: the final norm's input and output (2a sbh), and the loss. With
`torch_crossentropy` the logits exist whole at the start of backward, b s vocab x (a kept in the model
outputs + 4 for the fp32 log-softmax cross-entropy saves + 8 for its fp32 gradient buffers). With the
chunked loss (foundry's default, foundry/models/mpt/loss.py) no full logits exist: it keeps the
gradient for the hidden states (a sbh) and an fp32 gradient for the output embedding (4 vocab d),
and while it runs one chunk of c = min(b s, 2^27 / vocab) tokens: fp32 logits and their cast
(c vocab (4 + a)), the embedding cast to the compute dtype when the weights are not already in it
(a vocab d) and the chunk's embedding-gradient matmul before its fp32 accumulation (vocab d (a + 4);
none in fp32, where it accumulates in place). Attention: only `attn_impl: torch` builds an additive
bias (ALiBi/causal), once per forward: (b if attn_uses_sequence_id else 1) x (heads if ALiBi else 1)
x s^2 x a; flex and flash take ALiBi inside the kernel.

amp_fp8 (torchao float8 linears, foundry/fp8.py): the matmuls run in float8 but each Float8Linear
saves its bf16 input and weight for backward (it re-scales them along the other axis for the weight
gradient), so stored activations are the bf16 ones above; the float8 casts are transient, one Linear
at a time: its input, output gradient and weight in 1 byte, twice for the rowwise recipes' transposed
casts, added to the backward workspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from foundry.config.schema import FSDPConfig, TrainConfig
from foundry.plan.hardware import GPU, Assumptions
from foundry.plan.model import ModelShape

ZERO2_STRATEGIES = ('SHARD_GRAD_OP', '_HYBRID_SHARD_ZERO2')


def optimizer_states(name: str) -> tuple[int, str]:
    """fp32 state tensors per parameter for an optimizer name, and a note on where it came from."""
    key = name.lower()
    if 'lion' in key:
        return 1, 'LION: 1 fp32 momentum'
    if 'adam' in key:
        return 2, 'Adam: 2 fp32 moments'
    if key in ('sgd', 'decoupled_sgdw'):
        return 1, 'SGD: 1 fp32 momentum'
    return 2, f'{name}: unknown optimizer, assuming 2 fp32 states like Adam'


@dataclass(frozen=True)
class Parallelism:
    """How the model state is spread: `shard` ranks hold one copy; `replicate` copies exist."""

    strategy: str  # FULL_SHARD, HYBRID_SHARD, ..., or DDP when there is no fsdp_config
    shard: int
    replicate: int
    fsdp: bool
    zero2: bool
    compute_bytes: int  # dtype of the gathered compute copy of the weights
    reduce_bytes: int  # dtype of gradient reduction
    act_bytes: int  # dtype of activations
    precision_note: str
    fp8: bool = False  # amp_fp8: float8 matmuls in the blocks' Linear layers


def parallelism(cfg: TrainConfig, gpus: int, gpus_per_node: int) -> Parallelism:
    from foundry.distributed.fsdp import mesh_shape

    amp = cfg.precision != 'fp32'
    act = 2 if amp else 4
    fp8 = cfg.precision == 'amp_fp8'
    fp8_note = '; amp_fp8: float8 matmuls in the blocks\' Linears (torchao), bf16 elsewhere' if fp8 else ''
    fsdp: Optional[FSDPConfig] = cfg.fsdp_config
    if fsdp is None:
        note = ('no fsdp_config: DDP, a full fp32 replica per GPU' +
                (f' with {cfg.precision} autocast (bf16 copies of the weights cached per step)' if amp else ''))
        return Parallelism('DDP' if gpus > 1 else 'single GPU', 1, gpus, False, False,
                           2 if amp else 4, 4, act, note + fp8_note, fp8)
    shape = mesh_shape(fsdp, gpus, min(gpus_per_node, gpus))
    mp = fsdp.mixed_precision if amp else 'FULL'
    compute = 4 if mp == 'FULL' else 2
    reduce = 2 if mp == 'PURE' else 4
    zero2 = fsdp.sharding_strategy in ZERO2_STRATEGIES or not fsdp.reshard_after_forward
    strategy = fsdp.sharding_strategy
    if shape.is_hybrid and strategy not in ('HYBRID_SHARD', '_HYBRID_SHARD_ZERO2', 'NO_SHARD'):
        strategy = f'{strategy} (hybrid mesh)'
    note = (f'FSDP2 mixed_precision {mp}: fp32 sharded params (the master weights), '
            f'{"bf16" if compute == 2 else "fp32"} all-gathered compute copy, '
            f'{"bf16" if reduce == 2 else "fp32"} gradient reduce-scatter, fp32 gradient shards')
    return Parallelism(strategy, shape.shard, shape.replicate, True, zero2, compute, reduce, act, note + fp8_note, fp8)


@dataclass(frozen=True)
class Activations:
    blocks: float  # stored by the transformer blocks (all, or their inputs under checkpointing)
    recompute: float  # one block's activations recomputed during backward (checkpointing only)
    workspace: float  # backward working set, one layer's worth
    head: float  # final norm + logits and cross-entropy buffers
    attn_bias: float

    @property
    def total(self) -> float:
        return self.blocks + self.recompute + self.workspace + self.head + self.attn_bias


def layer_activation_bytes(m: ModelShape, b: int, act_bytes: int) -> float:
    """Bytes one MPT block keeps for backward at micro-batch b (see the module docstring)."""
    s, h = m.seq_len, m.d_model
    sbh = s * b * h
    elements = 8 * sbh + 2 * s * b * m.ffn_hidden_size
    if m.qk_ln:
        elements += sbh + s * b * m.kv_dim
    if m.kv_n_heads != m.n_heads:
        elements += 2 * s * b * m.kv_dim  # K and V before their heads are repeated for SDPA
    nbytes = elements * act_bytes + 4 * b * m.n_heads * s  # + fp32 log-sum-exp of SDPA
    if m.dropout:
        nbytes += 2 * sbh  # two 1-byte residual dropout masks
    return nbytes


def checkpointed_blocks(m: ModelShape, checkpointing: bool) -> int:
    """Blocks recomputed in backward: the model's own ac_every_n_blocks, else all of them when
    `checkpointing` (fsdp_config.activation_checkpointing, or the planner's flipped column)."""
    if m.own_checkpointed_blocks:
        return m.own_checkpointed_blocks if checkpointing else 0
    return m.n_layers if checkpointing else 0


def fp8_cast_bytes(m: ModelShape, b: int) -> float:
    """Float8 casts of the largest block Linear in flight: input, output gradient and weight in 1 byte,
    twice for the rowwise recipes' transposed copies (see the module docstring)."""
    s, h = m.seq_len, m.d_model
    shapes = [(h, h + 2 * m.kv_dim), (h, h), (h, m.ffn_hidden_size), (m.ffn_hidden_size, h)]
    return 2 * max(s * b * n_in + s * b * n_out + n_in * n_out for n_in, n_out in shapes)


def head_bytes(m: ModelShape, b: int, act_bytes: int, weight_bytes: int) -> float:
    """Final norm and loss (see the module docstring); `weight_bytes`: dtype the embedding is read in."""
    s, v, h = m.seq_len, m.vocab_size, m.d_model
    norm = 2 * s * b * h * act_bytes
    if not m.chunked_loss:
        return norm + b * s * v * (act_bytes + 4 + 8)
    from foundry.models.mpt.loss import CHUNK_ELEMENTS, GPU_CHUNK_ELEMENTS

    chunk = min(b * s, max(1, (CHUNK_ELEMENTS or GPU_CHUNK_ELEMENTS) // v))
    kept = chunked_loss_saved_bytes(m, b, act_bytes)
    cast_weight = v * h * act_bytes if weight_bytes != act_bytes else 0
    chunk_logits = chunk * v * (4 + (act_bytes if act_bytes != 4 else 0))
    grad_w_matmul = v * h * (act_bytes + 4) if act_bytes != 4 else 0
    return norm + kept + cast_weight + chunk_logits + grad_w_matmul


def chunked_loss_saved_bytes(m: ModelShape, b: int, act_bytes: int) -> float:
    """What the chunked loss keeps for backward: the gradients it made in forward, for the hidden
    states (their dtype) and for the output embedding (fp32)."""
    return m.seq_len * b * m.d_model * act_bytes + 4 * m.vocab_size * m.d_model


def activations(m: ModelShape, b: int, act_bytes: int, checkpointing: bool, *, fp8: bool = False,
                weight_bytes: Optional[int] = None) -> Activations:
    s = m.seq_len
    sbh = s * b * m.d_model
    layer = layer_activation_bytes(m, b, act_bytes)
    k = checkpointed_blocks(m, checkpointing)
    blocks = k * sbh * act_bytes + (m.n_layers - k) * layer
    recompute = layer if k else 0.0
    workspace = layer + (fp8_cast_bytes(m, b) if fp8 else 0.0)
    head = head_bytes(m, b, act_bytes, act_bytes if weight_bytes is None else weight_bytes)
    bias = 0.0
    if m.attn_impl == 'torch':
        bias = (b if m.attn_uses_sequence_id else 1) * (m.n_heads if m.alibi else 1) * s * s * act_bytes
    return Activations(blocks, recompute, workspace, head, bias)


@dataclass(frozen=True)
class Memory:
    micro_batch: int
    checkpointing: bool
    checkpointed_blocks: int
    weights: float
    gradients: float
    optimizer: float
    gathered: float  # temporary all-gathered units (+ unsharded gradient), or the autocast cache
    activations: Activations
    reserved: float
    capacity: float
    fit_fraction: float

    @property
    def model_state(self) -> float:
        return self.weights + self.gradients + self.optimizer

    @property
    def total(self) -> float:
        """Everything the job puts on the device, the non-allocator reserve included."""
        return self.model_state + self.gathered + self.activations.total + self.reserved

    @property
    def usable(self) -> float:
        return self.capacity - self.reserved

    @property
    def status(self) -> str:
        used = self.total - self.reserved
        if used <= self.fit_fraction * self.usable:
            return 'fits'
        return 'tight' if used <= self.usable else 'does not fit'

    @property
    def fits(self) -> bool:
        return self.status == 'fits'

    @property
    def headroom(self) -> float:
        return self.capacity - self.total


def gathered_bytes(m: ModelShape, par: Parallelism) -> float:
    if not par.fsdp:
        # DDP under autocast: bf16 casts of every weight are cached for the step.
        return m.parameters * 2 if par.compute_bytes == 2 else 0.0
    block, root = m.block_parameters, m.root_parameters
    if par.zero2:
        params = m.parameters * par.compute_bytes
    else:
        params = (root + 2 * block) * par.compute_bytes
    return params + max(block, root) * par.reduce_bytes


def memory(m: ModelShape, par: Parallelism, gpu: GPU, optimizer_state_count: int, micro_batch: int,
           checkpointing: bool, assumptions: Assumptions = Assumptions()) -> Memory:
    p = m.parameters
    shard = par.shard
    return Memory(
        micro_batch=micro_batch,
        checkpointing=checkpointing,
        checkpointed_blocks=checkpointed_blocks(m, checkpointing),
        weights=4 * p / shard,
        gradients=4 * p / shard,
        optimizer=4 * optimizer_state_count * p / shard,
        gathered=gathered_bytes(m, par),
        activations=activations(m, micro_batch, par.act_bytes, checkpointing, fp8=par.fp8,
                                weight_bytes=par.compute_bytes),
        reserved=assumptions.reserved_gib * 1024 ** 3,
        capacity=gpu.memory_bytes,
        fit_fraction=assumptions.fit_fraction,
    )


def largest_micro_batch(m: ModelShape, par: Parallelism, gpu: GPU, optimizer_state_count: int,
                        checkpointing: bool, assumptions: Assumptions = Assumptions(),
                        limit: int = 65536) -> int:
    """The largest micro-batch whose estimate fits (0 if not even 1 does). Memory grows with b."""
    def ok(b: int) -> bool:
        return memory(m, par, gpu, optimizer_state_count, b, checkpointing, assumptions).fits

    if not ok(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and ok(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # ok(lo) and not ok(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def largest_power_of_two_at_most(n: int) -> int:
    return 0 if n < 1 else 2 ** int(math.floor(math.log2(n)))
