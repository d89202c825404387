"""Optimizer and LR-scheduler registries, keyed by the names llm-foundry configs use.

`OPTIMIZERS` / `SCHEDULERS` map a config `name` to the class that builds it;
`OPTIMIZER_KEYS` / `SCHEDULER_KEYS` map each name to its valid keys and defaults
(read off the class signature) so the config validator can reject typos early.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from composer.core import Time
from composer.optim import DecoupledAdamW
from composer.optim.scheduler import (
    ComposerScheduler,
    ConstantScheduler,
    ConstantWithWarmupScheduler,
    CosineAnnealingScheduler,
    CosineAnnealingWithWarmupScheduler,
    LinearWithWarmupScheduler,
)
from lion_pytorch import Lion

from foundry.optim.lion import DecoupledLionW
from foundry.registry import check_kwargs, check_name, required_keys, signature_keys

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    'decoupled_lionw': DecoupledLionW,  # what MPT was trained with
    'lion': Lion,  # lion-pytorch as is: weight decay scaled by lr, not lr/initial_lr
    'decoupled_adamw': DecoupledAdamW,
    'adamw': torch.optim.AdamW,
}

# `params` comes from the model, never from the config.
OPTIMIZER_KEYS: dict[str, dict[str, Any]] = {
    name: signature_keys(cls, skip=('params',)) for name, cls in OPTIMIZERS.items()
}

SCHEDULERS: dict[str, Callable[..., ComposerScheduler]] = {
    'cosine_with_warmup': CosineAnnealingWithWarmupScheduler,
    'linear_decay_with_warmup': LinearWithWarmupScheduler,
    'constant_with_warmup': ConstantWithWarmupScheduler,
    'constant': ConstantScheduler,
    'cosine': CosineAnnealingScheduler,
}

SCHEDULER_KEYS: dict[str, dict[str, Any]] = {name: signature_keys(cls) for name, cls in SCHEDULERS.items()}

# Scheduler keys that hold a duration such as '100ba', '1000tok' or '0.1dur'.
_TIME_KEYS = ('t_warmup', 't_max')


def build_optimizer(model: torch.nn.Module, name: str, kwargs: Mapping[str, Any]) -> torch.optim.Optimizer:
    """Build optimizer `name` over the model's trainable parameters.

    Raises ValueError for an unknown name or key, suggesting the nearest valid one.
    """
    check_name(name, OPTIMIZERS, 'optimizer')
    kwargs = dict(kwargs)
    check_kwargs(name, kwargs, OPTIMIZER_KEYS[name], required_keys(OPTIMIZERS[name], skip=('params',)), 'optimizer')
    if kwargs.get('betas') is not None:
        # YAML gives a list; torch optimizers store and compare betas as a tuple.
        kwargs['betas'] = tuple(kwargs['betas'])
    params = [p for p in model.parameters() if p.requires_grad]
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(name: str, kwargs: Mapping[str, Any]) -> ComposerScheduler:
    """Build Composer scheduler `name`; time keys accept strings like '100ba' or '0.1dur'.

    Durations are parsed here, not at the first step, so a bad one fails at startup.
    """
    check_name(name, SCHEDULERS, 'scheduler')
    kwargs = dict(kwargs)
    check_kwargs(name, kwargs, SCHEDULER_KEYS[name], required_keys(SCHEDULERS[name]), 'scheduler')
    for key in _TIME_KEYS:
        if isinstance(kwargs.get(key), str):
            kwargs[key] = _parse_time(name, key, kwargs[key])
    return SCHEDULERS[name](**kwargs)


def _parse_time(name: str, key: str, value: str) -> Time:
    try:
        return Time.from_timestring(value)
    except ValueError as e:
        raise ValueError(
            f"scheduler '{name}': {key}={value!r} is not a duration; use a number and a unit, "
            "e.g. '100ba' (batches), '1000tok', '2ep' or '0.1dur' (fraction of max_duration)",
        ) from e
