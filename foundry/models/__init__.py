"""Model registry: YAML `model.name` -> builder.

A builder takes the YAML `model:` section without `name` (a plain dict) and an optional tokenizer,
and returns a ComposerModel.

Composer is imported only when the composer wrapper is asked for, so `foundry.models.mpt` (the
plain torch / transformers model) imports without it, e.g. in launch/bench/gpu_bench.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .mpt.loss import DEFAULT_LOSS_FN, LOSS_FNS

if TYPE_CHECKING:
    from .composer_model import ComposerMPTCausalLM
    from .flops import count_parameters, flops_per_sequence, flops_per_token, matmul_parameters
    from .mpt import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS, MPTConfig, MPTForCausalLM

# Imported on first use: the config check before launch needs MPTConfig alone, and the modeling code
# (attention kernels, transformers' masking utilities, dynamo) takes most of a process's import time.
_LAZY = {
    "ComposerMPTCausalLM": ".composer_model",
    "count_parameters": ".flops", "flops_per_sequence": ".flops", "flops_per_token": ".flops",
    "matmul_parameters": ".flops",
    "ATTN_CONFIG_DEFAULTS": ".mpt.configuration", "INIT_CONFIG_DEFAULTS": ".mpt.configuration",
    "MPTConfig": ".mpt.configuration", "MPTForCausalLM": ".mpt.modeling",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")




def build_mpt_causal_lm(model_cfg: dict, tokenizer: Any = None) -> "ComposerMPTCausalLM":
    """An MPT causal LM from the YAML `model:` section (MPTConfig raises on unknown keys).

    `loss_fn` is the one key that is not an MPTConfig argument (llm-foundry compatibility):
    'chunked_crossentropy' (the default: no full-vocabulary logits, see foundry.models.mpt.loss;
    faster and smaller on CPU and GPU, launch/bench/) or 'torch_crossentropy' (full logits).
    'fused_crossentropy', llm-foundry's flash-attn Triton kernel for the same purpose, runs as
    chunked_crossentropy, so llm-foundry YAMLs get the fused-loss behaviour they ask for.
    """
    from .composer_model import ComposerMPTCausalLM

    from .pretrained import model_config_from_section

    loss_fn = model_cfg.get("loss_fn", DEFAULT_LOSS_FN)
    if loss_fn not in LOSS_FNS:
        raise ValueError(f"model.loss_fn must be one of {LOSS_FNS}, got {loss_fn!r}")
    config = model_config_from_section(model_cfg)  # reads pretrained_model_name_or_path's config.json if set
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        from foundry.config.errors import ConfigError  # a ValueError: one config-error line from main()

        raise ConfigError(
            f"`model.vocab_size` ({config.vocab_size}) is smaller than the tokenizer's vocabulary "
            f"({len(tokenizer)}); token ids past the embedding table would crash training: set model.vocab_size "
            f"to at least {len(tokenizer)}")
    return ComposerMPTCausalLM(config, tokenizer=tokenizer, loss_fn=loss_fn)


MODELS: dict[str, Callable[..., Any]] = {"mpt_causal_lm": build_mpt_causal_lm}

__all__ = [
    "ATTN_CONFIG_DEFAULTS",
    "INIT_CONFIG_DEFAULTS",
    "MODELS",
    "ComposerMPTCausalLM",
    "MPTConfig",
    "MPTForCausalLM",
    "build_mpt_causal_lm",
    "count_parameters",
    "flops_per_sequence",
    "flops_per_token",
    "matmul_parameters",
]
