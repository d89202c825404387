"""Model registry: YAML `model.name` -> builder.

A builder takes the YAML `model:` section without `name` (a plain dict) and an optional tokenizer,
and returns a ComposerModel.
"""

from __future__ import annotations

from typing import Any, Callable

from .composer_model import ComposerMPTCausalLM
from .flops import count_parameters, flops_per_sequence, flops_per_token, matmul_parameters
from .mpt import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS, MPTConfig, MPTForCausalLM


def build_mpt_causal_lm(model_cfg: dict, tokenizer: Any = None) -> ComposerMPTCausalLM:
    """An MPT causal LM from the YAML `model:` section (MPTConfig raises on unknown keys)."""
    config = MPTConfig(**dict(model_cfg))
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise ValueError(
            f"model.vocab_size ({config.vocab_size}) is smaller than the tokenizer's vocabulary "
            f"({len(tokenizer)}); token ids past the embedding table would crash training")
    return ComposerMPTCausalLM(config, tokenizer=tokenizer)


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
