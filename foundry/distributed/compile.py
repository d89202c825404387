"""torch.compile per transformer block (`compile_config`).

`compile_config` (top-level YAML key, llm-foundry's name) holds torch.compile keyword arguments:

    compile_config:            # {} or null-valued keys = torch.compile's defaults
      mode: max-autotune-no-cudagraphs   # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
      fullgraph: false
      dynamic: false           # pretraining batches have one shape; false avoids dynamic-shape kernels
      backend: inductor
      options: {}              # inductor options

Unlike llm-foundry, which hands the dict to Composer to compile the whole model, we compile each
MPTBlock's forward, as torchtitan does: the compiled graph is one block, so compile time does not
grow with depth, and FSDP2's per-block hooks (all-gather before, reshard after) run outside the
compiled code, in the module's __call__. Parameter names are unchanged (no `_orig_mod.`), so
checkpoints of compiled and eager runs are interchangeable.

Activation checkpointing is a model key, `model.ac_every_n_blocks` (see MPTModel.forward): it
works with and without FSDP and composes with compilation (the checkpoint wraps the compiled
block). `fsdp_config.activation_checkpointing: true` alone keeps llm-foundry's meaning (every block).
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

import torch
from torch import nn

COMPILE_KEYS: dict[str, Any] = {
    "mode": None,
    "fullgraph": False,
    "dynamic": False,
    "backend": "inductor",
    "options": None,
}
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_compile_config(compile_config: Optional[dict]) -> dict[str, Any]:
    """Validated torch.compile kwargs (defaults filled in); raises ValueError naming the bad key."""
    given = dict(compile_config or {})
    for key in given:
        if key not in COMPILE_KEYS:
            close = difflib.get_close_matches(key, list(COMPILE_KEYS), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown compile_config key {key!r}{hint}; valid keys: {sorted(COMPILE_KEYS)}")
    merged = {**COMPILE_KEYS, **{k: v for k, v in given.items() if v is not None}}
    if merged["mode"] not in COMPILE_MODES:
        raise ValueError(f"compile_config.mode must be one of {COMPILE_MODES[1:]}, got {merged['mode']!r}")
    if merged["mode"] is not None and merged["options"]:
        raise ValueError("compile_config: set either mode or options, not both (torch.compile refuses both)")
    for key in ("fullgraph", "dynamic"):
        if merged[key] is not None and not isinstance(merged[key], bool):
            raise ValueError(f"compile_config.{key} must be true or false, got {merged[key]!r}")
    if not isinstance(merged["backend"], str):
        raise ValueError(f"compile_config.backend must be a backend name, got {merged['backend']!r}")
    if merged["options"] is not None and not isinstance(merged["options"], dict):
        raise ValueError("compile_config.options must be a mapping of inductor options")
    return merged


def apply_compile(model: nn.Module, compile_config: Optional[dict]) -> int:
    """Compile the forward of every MPTBlock inside `model` in place; returns how many.

    Call before the Trainer wraps the model (FSDP2 then registers its hooks on the same blocks).
    """
    from foundry.models.mpt.blocks import MPTBlock

    kwargs = check_compile_config(compile_config)
    n = 0
    for module in model.modules():
        if isinstance(module, MPTBlock) and not getattr(module, "_foundry_compiled", False):
            # An instance attribute shadows the class's forward: nn.Module.__call__ still runs the
            # hooks (FSDP2's all-gather, activation checkpointing) eagerly around it.
            module.forward = torch.compile(module.forward, **kwargs)
            module._foundry_compiled = True
            n += 1
    return n
