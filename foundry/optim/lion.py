"""DecoupledLionW: LION with weight decay that follows the learning-rate schedule.

Update per parameter (llm-foundry semantics):

    p   *= 1 - (lr / initial_lr) * weight_decay      # decoupled decay, tracks the schedule
    p   -= lr * sign(beta1 * m + (1 - beta1) * g)
    m    = beta2 * m + (1 - beta2) * g

lion-pytorch's `update_fn` already does the last two lines and decays by `1 - lr * wd`,
so passing `wd = weight_decay / initial_lr` gives exactly the decay above. We reuse it
rather than re-implementing the step. lion-pytorch's own `decoupled_weight_decay` flag
divides by one optimizer-wide initial lr; we keep `initial_lr` per param group so groups
with different learning rates decay correctly.

`initial_lr` is stored in each param group under the same key torch's LRScheduler uses
(it only `setdefault`s it), so Composer's schedulers, which rescale `group['lr']` from
`group['initial_lr']`, agree with us on what the base lr is, and it is checkpointed with
the rest of the group.

`foreach: true` (the default, `optimizer.foreach` in the YAML) steps each group with torch's
multi-tensor kernels (foundry/optim/lion_foreach.py): the same operations and scalars as
`update_fn`, bit-identical on CPU; `foreach: false` keeps lion-pytorch's per-parameter step. The
state (`exp_avg` per parameter) is the same either way, so a checkpoint resumes with either.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import torch
from lion_pytorch import Lion
from lion_pytorch.lion_pytorch import update_fn

from foundry.optim.lion_foreach import lion_foreach_


class DecoupledLionW(Lion):
    """LION (Chen et al. 2023) with decoupled, lr-scaled weight decay.

    State is a single `exp_avg` buffer per parameter (half of Adam's). Works on plain
    tensors and FSDP2 DTensors alike: the step is pointwise ops only (mul_, add, sgn_),
    all of which DTensor shards locally, with no `.item()` or host sync per parameter.
    lion-pytorch's own foreach variant cannot run on DTensors (DTensor has no sharding
    rule for `_foreach_sign_`, on torch 2.7 or 2.11); ours steps their local shards.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: float = 0.0,
        foreach: bool = True,
    ):
        if lr <= 0.0:
            raise ValueError(f'DecoupledLionW needs lr > 0 (it divides weight decay by the initial lr), got {lr}')
        if not all(0.0 <= b <= 1.0 for b in betas):
            raise ValueError(f'DecoupledLionW betas must lie in [0, 1], got {betas}')
        if weight_decay < 0.0:
            raise ValueError(f'DecoupledLionW weight_decay must be >= 0, got {weight_decay}')
        # Lists come from YAML; keep the group value a tuple like torch's optimizers do.
        # lion-pytorch's use_triton / decoupled_weight_decay stay off: step() below always
        # calls the reference update_fn and does its own lr/initial_lr scaling.
        super().__init__(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
        # An attribute, not a group key: it is how to step, not state, and checkpoints written
        # before it existed (or by the other setting) load unchanged.
        self.foreach = bool(foreach)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # Record each group's starting lr before any scheduler touches group['lr'].
        initial_lr = param_group.setdefault('initial_lr', param_group.get('lr', self.defaults['lr']))
        if initial_lr <= 0.0:
            raise ValueError(f'DecoupledLionW needs each group\'s initial lr > 0 (it divides weight decay), got {initial_lr}')
        super().add_param_group(param_group)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        for group in self.param_groups:
            lr = group['lr']
            beta1, beta2 = group['betas']
            # Folding 1/initial_lr into wd makes update_fn's `1 - lr * wd` our lr-scaled decay.
            wd = group['weight_decay'] / group['initial_lr']
            params, grads, exp_avgs = [], [], []
            for p in group['params']:
                if p.grad is None:
                    continue
                state = self.state[p]
                if len(state) == 0:
                    state['exp_avg'] = torch.zeros_like(p)
                if self.foreach:
                    params.append(p)
                    grads.append(p.grad)
                    exp_avgs.append(state['exp_avg'])
                else:
                    update_fn(p, p.grad, state['exp_avg'], lr, wd, beta1, beta2)
            if params:
                lion_foreach_(params, grads, exp_avgs, lr=lr, wd=wd, beta1=beta1, beta2=beta2)
        return loss
