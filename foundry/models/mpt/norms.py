"""Normalisation layers selectable by `norm_type`.

Parameters are named `weight` (and `bias` when biases are on), the same as torch.nn.LayerNorm, so
checkpoints interchange with MPT-7B and transformers' MptForCausalLM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm(nn.LayerNorm):
    """Plain LayerNorm. Under autocast torch runs layer_norm in fp32 (autocast's fp32 op list)."""


class LowPrecisionLayerNorm(nn.LayerNorm):
    """LayerNorm computed in the autocast dtype instead of fp32.

    Autocast upcasts layer_norm to fp32, which costs a cast of the activations in and out of every
    norm. MPT found bf16 layer norm trains just as well and is faster, so under autocast we cast
    input and parameters to the autocast dtype and run with autocast off. Without autocast this
    is exactly nn.LayerNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        weight = self.weight.to(dtype) if self.weight is not None else None
        bias = self.bias.to(dtype) if self.bias is not None else None
        with torch.autocast(device_type=device_type, enabled=False):
            return F.layer_norm(x.to(dtype), self.normalized_shape, weight, bias, self.eps)


class RMSNorm(nn.Module):
    """Root-mean-square norm: x / rms(x) * weight. It has no bias by construction."""

    def __init__(self, normalized_shape: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.normalized_shape = (normalized_shape,)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Accumulate in fp32 so the mean of squares does not lose precision in bf16.
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (out * self.weight.float()).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class LowPrecisionRMSNorm(RMSNorm):
    """RMSNorm computed in the autocast dtype (as LowPrecisionLayerNorm); exactly RMSNorm without autocast."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if not torch.is_autocast_enabled(device_type):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        xd = x.to(dtype)
        with torch.autocast(device_type=device_type, enabled=False):
            out = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + self.eps)
            return out * self.weight.to(dtype)


NORM_CLASSES = {
    "layernorm": LayerNorm,
    "low_precision_layernorm": LowPrecisionLayerNorm,
    "rmsnorm": RMSNorm,
    "low_precision_rmsnorm": LowPrecisionRMSNorm,
}


def build_norm(norm_type: str, dim: int, eps: float, no_bias: bool) -> nn.Module:
    """A norm of `dim` features; LayerNorms carry a bias only when biases are on."""
    cls = NORM_CLASSES[norm_type]
    if issubclass(cls, RMSNorm):
        return cls(dim, eps=eps)
    return cls(dim, eps=eps, bias=not no_bias)


def is_norm(module: nn.Module) -> bool:
    return isinstance(module, (nn.LayerNorm, RMSNorm))
