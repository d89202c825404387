"""The decoupled LION step over lists of tensors with torch's multi-tensor (`_foreach_*`) kernels.

Why: the per-parameter step (lion-pytorch's `update_fn`) launches 7 kernels per parameter, and on
FSDP2 each of them is a DTensor dispatch that costs far more host time than the kernel itself
(sharding propagation in Python). `lion_foreach_` runs the same 7 operations, in the same order and
with the same scalars, once per list: on a GPU the kernels cover many parameters each, and DTensors
are stepped through their local shards with no DTensor dispatch at all.

Same math, same rounding: every operation is the one `update_fn` does, elementwise with the same
Python scalars, and on CPU the results are bit-identical for fp32 and bf16 parameters
(tests/optim/test_lion_foreach.py; one CPU quirk is worked around in `_mul_`). CUDA's fused foreach
kernels compute in the same opmath type (fp32 for bf16/fp32); a difference there would come from
the compiler contracting a*b+c into one FMA in one kernel and not the other, about 1 ulp of the
parameter per step (launch/bench/lion_bench.py reports it on the device).

DTensors: every operation is pointwise, so when a parameter, its gradient and its momentum share
mesh and placements, and none is Partial (a pending reduction), stepping the local shards is
stepping the DTensor. That also sidesteps DTensor's missing sharding rule for `_foreach_sign_`
(torch 2.7 and 2.11 both refuse it). Anything else falls back to the per-parameter reference step.

Memory: the step needs one temporary (the update direction) per tensor. The list is stepped in
chunks of at most `MAX_CHUNK_ELEMENTS` elements (or one tensor, if larger), so the temporary stays
near the per-parameter step's (its largest parameter) instead of a copy of the whole model.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from lion_pytorch.lion_pytorch import update_fn

# 2^27 elements: 512 MiB of fp32 temporaries per chunk. MPT-7B's largest tensor (the 50k x 4096
# embedding) is 2^27.6, so the chunking adds nothing to its peak; mpt-125m steps in one chunk.
MAX_CHUNK_ELEMENTS = 2 ** 27


def lion_foreach_(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], exp_avgs: Sequence[torch.Tensor],
                  *, lr: float, wd: float, beta1: float, beta2: float) -> None:
    """In place, for each i: `update_fn(params[i], grads[i], exp_avgs[i], lr, wd, beta1, beta2)`.

    `wd` is lion-pytorch's (the decay factor is 1 - lr * wd); DecoupledLionW passes
    weight_decay / initial_lr. Tensors may mix devices, dtypes and DTensor layouts.
    """
    groups: dict[tuple, tuple[list, list, list]] = {}
    for p, g, m in zip(params, grads, exp_avgs):
        local = _local_triple(p, g, m)
        if local is None:
            update_fn(p, g, m, lr, wd, beta1, beta2)  # the reference step, DTensor-dispatched
            continue
        lp, lg, lm = local
        key = (lp.device, lp.dtype, lg.dtype)
        lists = groups.setdefault(key, ([], [], []))
        lists[0].append(lp)
        lists[1].append(lg)
        lists[2].append(lm)
    decay = 1. - lr * wd  # written as update_fn writes it: same double, same rounding
    for ps, gs, ms in groups.values():
        for lo, hi in _chunks([p.numel() for p in ps], MAX_CHUNK_ELEMENTS):
            _step_lists(ps[lo:hi], gs[lo:hi], ms[lo:hi], lr, decay, beta1, beta2)


def _step_lists(ps: list[torch.Tensor], gs: list[torch.Tensor], ms: list[torch.Tensor],
                lr: float, decay: float, beta1: float, beta2: float) -> None:
    # update_fn, line by line. Pure tensor-list code: torch.compile captures it as one graph
    # (tests/optim/test_lion_foreach.py). Compiling it for training would need lr as a tensor:
    # dynamo specialises on the Python float and would recompile at every new learning rate.
    if decay != 1.:  # x * 1.0 == x exactly, so skipping the no-decay multiply changes no bit
        _mul_(ps, decay)  # p.data.mul_(1. - lr * wd)
    updates = torch._foreach_mul(ms, beta1)  # exp_avg.clone().mul_(beta1)
    torch._foreach_add_(updates, gs, alpha=1. - beta1)  # .add(grad, alpha=1. - beta1)
    torch._foreach_sign_(updates)  # .sgn_() (equal to sign for real tensors)
    torch._foreach_add_(ps, updates, alpha=-lr)  # p.add_(update, alpha=-lr)
    del updates
    _mul_(ms, beta2)  # exp_avg.mul_(beta2)
    torch._foreach_add_(ms, gs, alpha=1. - beta2)  # .add_(grad, alpha=1. - beta2)


def _mul_(tensors: list[torch.Tensor], scalar: float) -> None:
    """`t.mul_(scalar)` for each t (one list: one device, one dtype)."""
    if tensors[0].device.type == 'cpu' and tensors[0].dtype in (torch.bfloat16, torch.float16):
        # On CPU, in-place `_foreach_mul_` with a Python scalar rounds the scalar to the tensors'
        # 16-bit dtype first (0.9 -> 0.8984375 in bf16) where `Tensor.mul_` multiplies by it in fp32
        # (seen on torch 2.7 and 2.11; out-of-place `_foreach_mul` and `_foreach_add_`'s alpha agree
        # with the per-tensor ops). Loop, to keep update_fn's rounding; CPUs train with fp32 weights.
        for t in tensors:
            t.mul_(scalar)
    else:
        torch._foreach_mul_(tensors, scalar)


def _chunks(numels: list[int], max_elements: int) -> Iterator[tuple[int, int]]:
    """Consecutive [lo, hi) index ranges whose element counts add up to at most `max_elements`
    (a single larger tensor gets a range of its own)."""
    lo, total = 0, 0
    for i, n in enumerate(numels):
        if i > lo and total + n > max_elements:
            yield lo, i
            lo, total = i, 0
        total += n
    if lo < len(numels):
        yield lo, len(numels)


def _local_triple(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor):
    """Plain tensors to step with foreach kernels: the tensors themselves, or the local shards of
    three DTensors laid out alike; None when only the per-parameter DTensor step is right."""
    dtensor = _dtensor_type()
    kinds = [dtensor is not None and isinstance(t, dtensor) for t in (p, g, m)]
    if not any(kinds):
        return p, g, m
    if not all(kinds):
        return None
    spec = (p.device_mesh, tuple(p.placements))
    for t in (g, m):
        if (t.device_mesh, tuple(t.placements)) != spec or t.shape != p.shape:
            return None
    if any(pl.is_partial() for pl in p.placements):
        return None
    return p._local_tensor, g._local_tensor, m._local_tensor


def _dtensor_type():
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed
        return None
    return DTensor
