"""The MPT decoder: configuration, layers, and the Hugging Face compatible model classes."""

from .attention import AttentionInputs, MPTAttention, alibi_slopes, build_attn_bias, prepare_attention
from .blocks import MPTBlock, MPTMLP
from .configuration import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS, MPTConfig
from .loss import causal_lm_loss, chunked_causal_lm_loss, shift_labels
from .modeling import MPTForCausalLM, MPTModel, MPTPreTrainedModel

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
