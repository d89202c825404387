"""The MPT decoder: configuration, layers, and the Hugging Face compatible model classes."""

from .attention import MPTAttention, alibi_slopes, build_attn_bias
from .blocks import MPTBlock, MPTMLP
from .configuration import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS, MPTConfig
from .loss import causal_lm_loss, shift_labels
from .modeling import MPTForCausalLM, MPTModel, MPTPreTrainedModel

__all__ = [
    "ATTN_CONFIG_DEFAULTS",
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
    "shift_labels",
]
