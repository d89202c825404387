"""The MPT decoder: configuration, layers, and the Hugging Face compatible model classes."""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .attention import AttentionInputs, MPTAttention, alibi_slopes, build_attn_bias, prepare_attention
    from .blocks import MPTBlock, MPTMLP
    from .configuration import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS, MPTConfig
    from .loss import causal_lm_loss, chunked_causal_lm_loss, shift_labels
    from .modeling import MPTForCausalLM, MPTModel, MPTPreTrainedModel

# Imported on first use, so `foundry.models.mpt.configuration` (the config check before launch) does not
# pull in the modeling code and its imports (attention kernels, transformers' masking utilities, dynamo).
_LAZY = {
    **dict.fromkeys(("AttentionInputs", "MPTAttention", "alibi_slopes", "build_attn_bias", "prepare_attention"),
                    ".attention"),
    **dict.fromkeys(("MPTBlock", "MPTMLP"), ".blocks"),
    **dict.fromkeys(("ATTN_CONFIG_DEFAULTS", "INIT_CONFIG_DEFAULTS", "MPTConfig"), ".configuration"),
    **dict.fromkeys(("causal_lm_loss", "chunked_causal_lm_loss", "shift_labels"), ".loss"),
    **dict.fromkeys(("MPTForCausalLM", "MPTModel", "MPTPreTrainedModel"), ".modeling"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ATTN_CONFIG_DEFAULTS",
    "AttentionInputs",
    "INIT_CONFIG_DEFAULTS",
    "MPTAttention",
    "MPTBlock",
    "MPTConfig",
    "MPTForCausalLM",
    "MPTMLP",
    "MPTModel",
    "MPTPreTrainedModel",
    "alibi_slopes",
    "build_attn_bias",
    "causal_lm_loss",
    "chunked_causal_lm_loss",
    "prepare_attention",
    "shift_labels",
]
