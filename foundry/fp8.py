"""`precision: amp_fp8`: float8 matmuls in the transformer blocks' Linear layers, through torchao.

Composer's own `amp_fp8` drives NVIDIA TransformerEngine, whose layers would replace foundry's MPT
modules. torchao instead swaps each chosen `nn.Linear` for a `Float8Linear` (same parameters, same
state dict keys, FSDP2- and torch.compile-aware) whose three matmuls (forward, grad input, grad
weight) run in float8 with dynamic scales, while everything else stays in bf16 autocast with fp32
master weights. So foundry runs `amp_fp8` as Composer's `amp_bf16` plus that conversion.

`fp8_config: {recipe: rowwise}` picks torchao's recipe: `rowwise` (the default: a scale per row,
closest to bf16 numerics), `tensorwise` (one scale per tensor: fastest), `rowwise_with_gw_hp`
(rowwise, weight gradient in bf16).

Refused before any process group or tensor exists, with one line (a ConfigError), when float8
cannot run: no CUDA device, compute capability below 8.9 (FP8 tensor cores: Ada L4/L40, Hopper
H100/H200, Blackwell), torchao missing (the message names the torchao release for this torch), or
a torchao whose Python API needs a newer torch than the one installed. torchao is imported only
when a run converts its model, so nothing here needs it on a CPU machine.

Which Linear layers convert (`fp8_linear_names`, a pure function of the module tree):
- not the LM head (`lm_head`) nor a Linear sharing an embedding's weight: the output projection is
  the layer most sensitive to float8 rounding (torchtitan leaves it out too), and foundry's chunked
  loss multiplies by that weight itself rather than calling the module;
- both dimensions divisible by 16: `torch._scaled_mm`, float8's matmul, refuses other shapes.
"""

from __future__ import annotations

import importlib.metadata
import typing
from typing import Optional

import torch
from torch import nn

from foundry.config.errors import ConfigError
from foundry.config.schema import FP8Config

RECIPES: tuple[str, ...] = typing.get_args(typing.get_type_hints(FP8Config)['recipe'])  # the schema's list
DEFAULT_RECIPE = FP8Config().recipe
MIN_CAPABILITY = (8, 9)
HEAD_NAMES = ('lm_head',)
# The torchao release to install for each torch (pytorch/ao's compatibility table, issue 2919;
# from 0.17.0 torchao is ABI-stable against torch 2.11 and later).
TORCHAO_FOR_TORCH = {(2, 7): '0.12.0', (2, 8): '0.13.0', (2, 9): '0.14.1', (2, 10): '0.16.0', (2, 11): '0.17.0'}
# The oldest torch each torchao minor's Python API (all float8 training uses) works with.
MIN_TORCH_FOR_TORCHAO = {(0, 12): (2, 5), (0, 13): (2, 6), (0, 14): (2, 7), (0, 15): (2, 7), (0, 16): (2, 8),
                         (0, 17): (2, 9), (0, 18): (2, 9)}
OLDEST_TORCH = (2, 7)


def check_fp8_environment() -> None:
    """Raise a one-line ConfigError unless this machine can train with torchao float8 linears."""
    torch_version = _major_minor(torch.__version__)
    use = 'use precision: amp_bf16'
    if not torch.cuda.is_available():
        raise ConfigError('precision amp_fp8 needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+: '
                          f'L4/L40, H100, H200, B200) and this machine has none; {use}')
    capability = tuple(torch.cuda.get_device_capability())
    if capability < MIN_CAPABILITY:
        raise ConfigError(f'precision amp_fp8 needs compute capability 8.9+ (FP8 tensor cores: L4/L40, H100, H200, '
                          f'B200); {torch.cuda.get_device_name()} is {capability[0]}.{capability[1]}; {use}')
    if torch_version < OLDEST_TORCH:
        raise ConfigError(f'precision amp_fp8 needs torch >= {_dotted(OLDEST_TORCH)} for torchao float8 training '
                          f'(this is torch {torch.__version__}); {use}')
    install = f'pip install torchao=={torchao_release_for(torch_version)} (the release for torch {_dotted(torch_version)})'
    installed = _torchao_version()
    if installed is None:
        raise ConfigError(f'precision amp_fp8 trains with torchao float8 linears and torchao is not installed: {install}')
    needs = _min_torch_for(installed)
    if torch_version < needs:
        raise ConfigError(f'precision amp_fp8: torchao {installed} needs torch >= {_dotted(needs)} and this is torch '
                          f'{torch.__version__}: {install}')


def torchao_release_for(torch_version: tuple[int, int]) -> str:
    if torch_version in TORCHAO_FOR_TORCH:
        return TORCHAO_FOR_TORCH[torch_version]
    newest = max(TORCHAO_FOR_TORCH)
    return TORCHAO_FOR_TORCH[newest] if torch_version > newest else TORCHAO_FOR_TORCH[min(TORCHAO_FOR_TORCH)]


def fp8_linear_names(model: nn.Module) -> list[str]:
    """Names (as `named_modules` gives them) of the Linear layers float8 training converts."""
    tied = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear:  # exact: a Float8Linear (already converted) is a Linear too
            continue
        if name.rsplit('.', 1)[-1] in HEAD_NAMES or id(module.weight) in tied:
            continue
        if module.in_features % 16 or module.out_features % 16:
            continue
        names.append(name)
    return names


def convert_to_fp8(model: nn.Module, recipe: str = DEFAULT_RECIPE) -> list[str]:
    """Swap the selected Linear layers for torchao Float8Linear in place; returns their names.

    Call on the unwrapped model (meta or materialised) before FSDP, torch.compile and the optimizer.
    """
    if recipe not in RECIPES:
        raise ConfigError(f'`fp8_config.recipe` is {recipe!r}; expected one of {", ".join(RECIPES)}')
    from torchao.float8 import Float8LinearConfig, convert_to_float8_training

    config = Float8LinearConfig.from_recipe_name(recipe)

    def convert(module: nn.Module, names: set[str]) -> None:
        convert_to_float8_training(module, config=config, module_filter_fn=lambda mod, fqn: fqn in names)

    return swap_linears(model, convert)


def swap_linears(model: nn.Module, convert) -> list[str]:
    """`convert(model, names)` replaces the `fp8_linear_names` modules; their own attributes carry over.

    torchao builds a new module per Linear (sharing the weight Parameter), which would drop the
    attributes foundry's MPT sets on its Linears for initialisation (`_is_residual`: the residual
    std divisor; `_fused`: Wqkv's q/k/v split). A meta-device build initialised after the swap
    (FSDP's param_init_fn) would otherwise draw those weights with the wrong std.
    """
    names = fp8_linear_names(model)
    extras = {name: _own_attributes(model.get_submodule(name)) for name in names}
    convert(model, set(names))
    for name, attributes in extras.items():
        new = model.get_submodule(name)
        for key, value in attributes.items():
            if key not in vars(new):
                setattr(new, key, value)
    return names


def _own_attributes(module: nn.Module) -> dict:
    """Instance attributes a plain nn.Linear does not have (set on this one by the model)."""
    plain = vars(nn.Linear(16, 16, device='meta'))
    return {k: v for k, v in vars(module).items() if k not in plain}


def _torchao_version() -> Optional[str]:
    try:
        return importlib.metadata.version('torchao')
    except importlib.metadata.PackageNotFoundError:
        return None


def _min_torch_for(torchao_version: str) -> tuple[int, int]:
    minor = _major_minor(torchao_version)
    if minor in MIN_TORCH_FOR_TORCHAO:
        return MIN_TORCH_FOR_TORCHAO[minor]
    newest = max(MIN_TORCH_FOR_TORCHAO)
    # Unknown: older than the table -> its oldest entry; newer -> at least what the newest needs.
    return MIN_TORCH_FOR_TORCHAO[newest] if minor > newest else MIN_TORCH_FOR_TORCHAO[min(MIN_TORCH_FOR_TORCHAO)]


def _major_minor(version: str) -> tuple[int, int]:
    parts = version.split('+', 1)[0].split('.')
    return int(parts[0]), int(''.join(c for c in parts[1] if c.isdigit()) or 0)


def _dotted(version: tuple[int, int]) -> str:
    return '.'.join(map(str, version))
