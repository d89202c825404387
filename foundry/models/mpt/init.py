"""MPT's parameter initialisation, one module at a time.

`init_module_(module, config)` touches only the module's *own* parameters (recurse=False). That is
the contract of composer's meta-device init: it materialises each module and calls the model's
`param_init_fn(module)` bottom-up, so a recursive init would re-draw children already done (and
on sharded tensors, waste work). Calling it on every module of a model initialises the whole model.

Schemes (init_config.name), with fan_in/fan_out of the weight matrix:
  kaiming_normal_ / kaiming_uniform_: std = gain(init_nonlinearity, a=init_gain) / sqrt(fan)
  xavier_normal_ / xavier_uniform_:   std = init_gain * sqrt(2 / (fan_in + fan_out))
  baseline_:                          std = init_std
  small_init_:                        std = sqrt(2 / (5 * d_model))
Uniform variants use bound = sqrt(3) * std (the same variance). Residual output projections
(`_is_residual`) get std / sqrt(2 * n_layers) (init_div_is_residual), biases 0, norm weights 1.

We draw with tensor.normal_/uniform_ and our own std rather than calling torch.nn.init on the
whole weight, because the fused Wqkv must use each of q, k, v's own fan (as MPT does), and this way
it still works on sharded DTensors, which do not support writing through a slice.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .configuration import MPTConfig
from .norms import is_norm


def _std(config: MPTConfig, fan_in: int, fan_out: int) -> float:
    c = config.init_config
    name = c["name"]
    if name.startswith("kaiming"):
        gain = nn.init.calculate_gain(c["init_nonlinearity"], c["init_gain"])
        return gain / math.sqrt(fan_in if c["fan_mode"] == "fan_in" else fan_out)
    if name.startswith("xavier"):
        return c["init_gain"] * math.sqrt(2.0 / (fan_in + fan_out))
    if name == "baseline_":
        return c["init_std"]
    if name == "small_init_":
        return math.sqrt(2.0 / (5 * config.d_model))
    raise ValueError(f"unknown init_config.name {name!r}")


def _draw_(tensor: torch.Tensor, std: float, uniform: bool) -> None:
    if uniform:
        bound = math.sqrt(3.0) * std
        tensor.uniform_(-bound, bound)
    else:
        tensor.normal_(0.0, std)


def _init_weight_(weight: torch.Tensor, config: MPTConfig, fused=None, divisor: float = 1.0) -> None:
    """Initialise a (out, in) weight; `fused` = (0, row boundaries) for stacked matrices."""
    uniform = config.init_config["name"].endswith("uniform_")
    out_features, in_features = weight.shape
    if fused is None:
        _draw_(weight, _std(config, in_features, out_features) / divisor, uniform)
        return
    dim, splits = fused
    if dim != 0:
        raise NotImplementedError("only row-fused weights are supported")
    bounds = [0, *splits, out_features]
    parts = list(zip(bounds[:-1], bounds[1:]))
    stds = [_std(config, in_features, hi - lo) / divisor for lo, hi in parts]
    if all(s == stds[0] for s in stds):
        _draw_(weight, stds[0], uniform)  # one draw: same distribution, works on DTensors
        return
    if isinstance(weight, DTensor):
        raise NotImplementedError(
            "this init scheme gives q, k, v different stds (grouped-query attention with fan_out or "
            "xavier); initialise before sharding or use fan_mode 'fan_in'")
    for (lo, hi), std in zip(parts, stds):
        _draw_(weight[lo:hi], std, uniform)


@torch.no_grad()
def init_module_(module: nn.Module, config: MPTConfig) -> None:
    """Initialise `module`'s own parameters (not its children's) by MPT's scheme."""
    own = dict(module.named_parameters(recurse=False))
    if not own:
        return
    c = config.init_config
    if isinstance(module, nn.Linear):
        divisor = config.residual_divisor if getattr(module, "_is_residual", False) else 1.0
        _init_weight_(module.weight, config, getattr(module, "_fused", None), divisor)
        if module.bias is not None:
            module.bias.zero_()
    elif isinstance(module, nn.Embedding):
        if c["emb_init_std"] is not None:
            module.weight.normal_(0.0, c["emb_init_std"])
        elif c["emb_init_uniform_lim"] is not None:
            lim = c["emb_init_uniform_lim"]
            lo, hi = (-lim, lim) if isinstance(lim, (int, float)) else lim
            module.weight.uniform_(lo, hi)
        else:
            _init_weight_(module.weight, config)
    elif is_norm(module):
        if getattr(module, "weight", None) is not None:
            module.weight.fill_(1.0)
        if getattr(module, "bias", None) is not None:
            module.bias.zero_()
    else:
        # Fail loudly: a new parameter-owning module type must get an explicit rule here, else
        # meta-device builds would leave it as uninitialised memory.
        raise TypeError(f"no init rule for {type(module).__name__} with parameters {list(own)}")
