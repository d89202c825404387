"""MPTConfig: the MPT hyperparameters, with the key layout of mosaicml/mpt-7b's config.json.

Keeping MPT-7B's layout (and `model_type = "mpt"`) means a folder we save loads in transformers'
native `MptForCausalLM`, and MPT-7B's own config.json loads here. Everything is validated in
`__init__`, so a bad YAML fails at build time with a message that says what to change.
"""

from __future__ import annotations

import difflib
import inspect
import math
import warnings
from typing import Any, Optional, Union

import torch
from transformers import PretrainedConfig

from foundry import FoundryWarning

from .foreign_keys import check_foreign_keys, split_foreign_keys

# Every supported `attn_config` key with its default. The YAML loader validates user keys against
# this dict (and uses each default's type as the accepted type), so it must stay complete.
ATTN_CONFIG_DEFAULTS: dict[str, Any] = {
    "attn_type": "multihead_attention",  # | 'multiquery_attention' | 'grouped_query_attention'
    "attn_pdrop": 0.0,
    "attn_impl": "torch",  # 'torch' (SDPA) | 'flex' (flex_attention) | 'flash' (flash-attn package)
    # LayerNorm on queries and keys (training stability at high lr). As in MPT, these two norms are
    # always low_precision_layernorm with eps 1e-5, whatever norm_type and norm_eps say.
    "qk_ln": False,
    "clip_qkv": None,  # None = no clipping, else clamp the fused qkv to [-clip_qkv, clip_qkv]
    "softmax_scale": None,  # None = 1/sqrt(head_dim)
    "prefix_lm": False,  # accepted for MPT-7B compatibility; True is not supported yet
    "attn_uses_sequence_id": False,  # mask attention across packed documents
    "alibi": True,
    "alibi_bias_max": 8,
    "kv_n_heads": None,  # None = derived from attn_type (n_heads for MHA, 1 for MQA)
}

# Every supported `init_config` key with its default (MPT-7B's values).
INIT_CONFIG_DEFAULTS: dict[str, Any] = {
    "name": "kaiming_normal_",
    "fan_mode": "fan_in",
    "init_nonlinearity": "relu",
    "init_div_is_residual": True,  # scale residual output projections by 1/sqrt(2 * n_layers)
    "emb_init_std": None,  # None = embeddings use the same scheme as the weights
    "emb_init_uniform_lim": None,  # None, a float L (uniform in [-L, L]) or [lo, hi]
    "init_std": 0.02,  # used by the 'baseline_' scheme
    "init_gain": 0.0,  # kaiming: negative slope `a`; xavier: gain
    "verbose": 0,  # present in MPT-7B's config.json; unused
}

ATTN_TYPES = ("multihead_attention", "multiquery_attention", "grouped_query_attention")
NORM_TYPES = ("layernorm", "low_precision_layernorm", "rmsnorm", "low_precision_rmsnorm")
INIT_NAMES = (
    "kaiming_normal_",
    "kaiming_uniform_",
    "xavier_normal_",
    "xavier_uniform_",
    "baseline_",
    "small_init_",
)

# llm-foundry's and mosaicml's switches for features foundry does not implement (rope, sliding
# windows, ...) are accepted at their "off" value and refused otherwise: see foreign_keys.py.
_ATTN_KEYS_NOT_YET = ("flash_attn_config",)
NORM_TYPES_ALIASES = {"triton_rmsnorm": "rmsnorm"}  # flash-attn's Triton kernel for the same RMSNorm
ATTN_IMPLS = ("torch", "flex", "flash")
# Kernels of other MPT code bases for the same attention: MPT-7B's remote code had 'triton'.
_FLASH_LIKE_IMPLS = ("flash", "triton")
QK_LN_NORM_TYPE, QK_LN_EPS = "low_precision_layernorm", 1e-5

# Top-level keys that transformers itself writes into config.json (architectures, torch_dtype,
# generation defaults, ...) plus legacy keys of MPT-7B / transformers' MptConfig. They are
# accepted silently; anything else is a typo and raises. A folder may come from either
# transformers: 5 writes `dtype`, 4.x `torch_dtype` and a set of keys 5 no longer knows.
_LEGACY_KEYS = {"verbose", "initializer_range", "layer_norm_epsilon"}
_BASE_CONFIG_KEYS = set(PretrainedConfig().to_dict())
_HF4_KEYS = {
    "torch_dtype", "torchscript", "use_bfloat16", "tf_legacy_loss", "pruned_heads", "is_decoder",
    "add_cross_attention", "cross_attention_hidden_size", "tie_encoder_decoder", "finetuning_task",
    "tokenizer_class", "prefix", "bos_token_id", "pad_token_id", "eos_token_id", "sep_token_id",
    "decoder_start_token_id", "task_specific_params", "_attn_implementation_autoset", "max_length",
    "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups", "diversity_penalty",
    "temperature", "top_k", "top_p", "typical_p", "repetition_penalty", "length_penalty",
    "no_repeat_ngram_size", "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id", "forced_eos_token_id",
    "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
}
_HF_KEYS = _BASE_CONFIG_KEYS | _HF4_KEYS | {
    "dtype", "auto_map", "name_or_path", "_commit_hash", "attn_implementation",
    "_attn_implementation_internal", "num_labels", "gradient_checkpointing",
    "base_model_tp_plan", "base_model_pp_plan",
}
# Where the weights' dtype lives in this transformers ("dtype" from 5 on), and the other name.
DTYPE_KEY = "dtype" if "dtype" in _BASE_CONFIG_KEYS else "torch_dtype"
_OTHER_DTYPE_KEY = "torch_dtype" if DTYPE_KEY == "dtype" else "dtype"

# transformers 5's own MptConfig is a strict dataclass: it refuses a config.json whose
# values have other types than it declares, e.g. "attn_pdrop": 0.0 (declared int). to_dict writes
# whole numbers of its int fields as ints (as MPT-7B's config.json does: "attn_pdrop": 0) and
# numbers of its float fields as floats; transformers 4.x and this class read either.
_NATIVE_ATTN_TYPES = {"attn_pdrop": int, "alibi_bias_max": int, "clip_qkv": float, "softmax_scale": float}
_NATIVE_TOP_TYPES = {"expansion_ratio": int, "embedding_fraction": float, "layer_norm_epsilon": float}


def _as_native_type(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if kind is float and isinstance(value, int):
        return float(value)
    return value


def _unknown_key_error(kind: str, key: str, valid: list[str]) -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ValueError(f"Unknown {kind} key {key!r}.{hint} Valid keys: {sorted(valid)}")


def _not_yet(what: str, hint: str = "") -> ValueError:
    return ValueError(f"{what} is not supported yet in foundry.{' ' + hint if hint else ''}")


def _merge(kind: str, defaults: dict, given: Optional[dict], not_yet: tuple = ()) -> dict:
    """Defaults overlaid with the user's dict, rejecting keys we do not know."""
    given = dict(given or {})
    for key in given:
        if key in not_yet:
            raise _not_yet(f"{kind}.{key}")
        if key not in defaults:
            raise _unknown_key_error(kind, key, list(defaults))
    return {**defaults, **given}


class MPTConfig(PretrainedConfig):
    """MPT hyperparameters. Defaults are MPT-7B's (6.7B params, ALiBi, no biases, tied embeddings)."""

    model_type = "mpt"
    # The generic names transformers' utilities (generation, FSDP helpers) look for.
    attribute_map = {
        "hidden_size": "d_model",
        "num_attention_heads": "n_heads",
        "num_hidden_layers": "n_layers",
    }

    def __init__(
        self,
        d_model: int = 4096,
        n_heads: int = 32,
        n_layers: int = 32,
        expansion_ratio: Union[int, float] = 4,
        max_seq_len: int = 2048,
        vocab_size: int = 50432,
        resid_pdrop: float = 0.0,
        emb_pdrop: float = 0.0,
        learned_pos_emb: bool = False,
        attn_config: Optional[dict] = None,
        init_device: str = "cpu",
        logit_scale: Optional[Union[float, str]] = None,
        no_bias: bool = True,
        embedding_fraction: float = 1.0,
        norm_type: str = "low_precision_layernorm",
        norm_eps: float = 1e-5,
        use_cache: bool = False,
        init_config: Optional[dict] = None,
        tokenizer_name: Optional[str] = "EleutherAI/gpt-neox-20b",
        tie_word_embeddings: bool = True,
        ac_every_n_blocks: int = 0,
        **kwargs: Any,
    ):
        kwargs, attn_config, foreign_top, foreign_attn = split_foreign_keys(kwargs, attn_config)
        for key in kwargs:
            if key not in _HF_KEYS and key not in _LEGACY_KEYS:
                raise _unknown_key_error("model", key, self._top_level_keys())
        # transformers' native MptConfig calls the epsilon `layer_norm_epsilon`; accept it as an
        # alias so configs written by either class load here.
        legacy_eps = kwargs.pop("layer_norm_epsilon", None)
        if legacy_eps is not None and norm_eps == 1e-5:
            norm_eps = legacy_eps
        kwargs.pop("verbose", None)
        kwargs.pop("initializer_range", None)
        if _OTHER_DTYPE_KEY in kwargs:  # a folder written by the other major version of transformers
            other = kwargs.pop(_OTHER_DTYPE_KEY)
            if kwargs.get(DTYPE_KEY) is None:
                kwargs[DTYPE_KEY] = other

        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.expansion_ratio = expansion_ratio
        self.max_seq_len = max_seq_len
        self.vocab_size = vocab_size
        self.resid_pdrop = resid_pdrop
        self.emb_pdrop = emb_pdrop
        self.learned_pos_emb = learned_pos_emb
        self.attn_config = _merge("attn_config", ATTN_CONFIG_DEFAULTS, attn_config,
                                  _ATTN_KEYS_NOT_YET)
        self.init_device = init_device
        self.logit_scale = logit_scale
        self.no_bias = no_bias
        self.embedding_fraction = embedding_fraction
        self.norm_type = norm_type
        self.norm_eps = norm_eps
        self.use_cache = use_cache
        self.init_config = _merge("init_config", INIT_CONFIG_DEFAULTS, init_config)
        self.tokenizer_name = tokenizer_name
        # Selective activation checkpointing: in training, recompute blocks 0, N, 2N, ... in
        # backward instead of keeping their activations (0 = off; 1 = every block).
        self.ac_every_n_blocks = ac_every_n_blocks
        self._validate()
        # After _validate: the neutral values of some keys depend on d_model / n_heads.
        check_foreign_keys(foreign_top, foreign_attn, d_model, n_heads, expansion_ratio, no_bias)
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["layer_norm_epsilon"] = self.norm_eps  # the name transformers' MptForCausalLM reads
        for key, kind in _NATIVE_TOP_TYPES.items():
            out[key] = _as_native_type(out[key], kind)
        out["attn_config"] = {k: _as_native_type(v, _NATIVE_ATTN_TYPES.get(k, object))
                              for k, v in out["attn_config"].items()}
        return out

    def to_diff_dict(self) -> dict[str, Any]:
        # What save_pretrained writes. From transformers 5 the weights' dtype is `dtype`; 4.x reads
        # only `torch_dtype`, so a folder saved here records both.
        out = super().to_diff_dict()
        if DTYPE_KEY == "dtype" and out.get("dtype") is not None:
            out["torch_dtype"] = out["dtype"]
        if "attn_config" in out:
            out["attn_config"] = portable_attn_config(out["attn_config"])
        return out

    @classmethod
    def _top_level_keys(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters
        return [p for p in params if p not in ("self", "kwargs")]

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        for name in ("d_model", "n_heads", "n_layers", "max_seq_len", "vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
        if self.d_model % self.n_heads != 0:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if not isinstance(self.expansion_ratio, (int, float)) or self.expansion_ratio <= 0:
            raise ValueError(f"expansion_ratio must be > 0, got {self.expansion_ratio!r}")
        ffn = self.d_model * self.expansion_ratio
        if ffn != int(ffn):
            raise ValueError(f"d_model * expansion_ratio must be an integer, got {ffn}")
        for name in ("resid_pdrop", "emb_pdrop"):
            _check_prob(f"model.{name}", getattr(self, name))
        if not 0.0 < self.embedding_fraction <= 1.0:
            raise ValueError(f"embedding_fraction must be in (0, 1], got {self.embedding_fraction}")
        if self.norm_type in NORM_TYPES_ALIASES:
            self.norm_type = NORM_TYPES_ALIASES[self.norm_type]
        if self.norm_type not in NORM_TYPES:
            raise ValueError(f"norm_type must be one of {NORM_TYPES}, got {self.norm_type!r}")
        if not self.norm_eps > 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")
        if isinstance(self.logit_scale, str):
            if self.logit_scale != "inv_sqrt_d_model":
                raise ValueError(
                    f"logit_scale must be a number, None or 'inv_sqrt_d_model', got {self.logit_scale!r}")
        elif self.logit_scale is not None and not self.logit_scale:
            raise ValueError("logit_scale must not be 0 (use None for no scaling)")
        n = self.ac_every_n_blocks
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError(f"model.ac_every_n_blocks must be an integer >= 0 (0 = off), got {n!r}")
        if self.init_device == "mixed":
            raise _not_yet("init_device 'mixed'")
        try:
            torch.device(self.init_device)
        except (RuntimeError, TypeError) as err:
            raise ValueError(f"init_device {self.init_device!r} is not a torch device") from err
        self._validate_attn()
        self._validate_init()

    def _validate_attn(self) -> None:
        a = self.attn_config
        if a["attn_type"] not in ATTN_TYPES:
            raise ValueError(f"attn_config.attn_type must be one of {ATTN_TYPES}, got {a['attn_type']!r}")
        if a["attn_impl"] in _FLASH_LIKE_IMPLS:
            a["attn_impl"] = resolve_flash_impl(a["attn_impl"], a["attn_pdrop"])
        if a["attn_impl"] not in ATTN_IMPLS:
            raise ValueError(f"attn_config.attn_impl must be one of {ATTN_IMPLS}, got {a['attn_impl']!r}")
        if a["attn_impl"] == "flex" and a["attn_pdrop"]:
            raise ValueError("attn_config.attn_impl 'flex' has no attention dropout; set attn_pdrop: 0 "
                             "or use attn_impl 'torch'")
        if a["prefix_lm"]:
            raise _not_yet("attn_config.prefix_lm")
        _check_prob("attn_config.attn_pdrop", a["attn_pdrop"])
        for key in ("clip_qkv", "softmax_scale"):
            if a[key] is not None and not a[key] > 0:
                raise ValueError(f"attn_config.{key} must be None or > 0, got {a[key]!r}")
        if not a["alibi_bias_max"] > 0:
            raise ValueError(f"attn_config.alibi_bias_max must be > 0, got {a['alibi_bias_max']}")
        a["kv_n_heads"] = self._resolve_kv_n_heads()
        # MPT semantics: with ALiBi on, learned position embeddings are switched off. MPT-7B's own
        # config.json sets both, so refusing would make it unloadable.
        if a["alibi"] and self.learned_pos_emb:
            warnings.warn("attn_config.alibi is on, so learned_pos_emb is set to False (as MPT does).")
            self.learned_pos_emb = False
        # Both off is allowed: a causal decoder can learn positions from the mask alone (NoPE).

    def _resolve_kv_n_heads(self) -> int:
        kind, kv = self.attn_config["attn_type"], self.attn_config["kv_n_heads"]
        if kind == "multihead_attention":
            if kv not in (None, self.n_heads):
                raise ValueError(
                    f"multihead_attention uses kv_n_heads == n_heads ({self.n_heads}), got {kv}; "
                    "use attn_type 'grouped_query_attention' for fewer kv heads")
            return self.n_heads
        if kind == "multiquery_attention":
            if kv not in (None, 1):
                raise ValueError(f"multiquery_attention uses kv_n_heads == 1, got {kv}")
            return 1
        if kv is None:
            raise ValueError("grouped_query_attention needs attn_config.kv_n_heads")
        if not isinstance(kv, int) or not 1 <= kv <= self.n_heads or self.n_heads % kv:
            raise ValueError(
                f"kv_n_heads ({kv}) must be an integer in [1, n_heads] dividing n_heads ({self.n_heads})")
        return kv

    def _validate_init(self) -> None:
        c = self.init_config
        if c["name"] not in INIT_NAMES:
            raise ValueError(f"init_config.name must be one of {INIT_NAMES}, got {c['name']!r}")
        if c["fan_mode"] not in ("fan_in", "fan_out"):
            raise ValueError(f"init_config.fan_mode must be 'fan_in' or 'fan_out', got {c['fan_mode']!r}")
        try:
            torch.nn.init.calculate_gain(c["init_nonlinearity"], c["init_gain"])
        except ValueError as err:
            raise ValueError(f"init_config.init_nonlinearity: {err}") from err
        if c["name"].startswith("xavier") and not c["init_gain"] > 0:
            raise ValueError("xavier init multiplies by init_config.init_gain, which must be > 0")
        if c["name"] == "baseline_" and not (c["init_std"] or 0) > 0:
            raise ValueError("init_config.name 'baseline_' needs init_config.init_std > 0")
        div = c["init_div_is_residual"]
        if not isinstance(div, (bool, int, float)) or (not isinstance(div, bool) and div <= 0):
            raise ValueError(f"init_config.init_div_is_residual must be a bool or a number > 0, got {div!r}")
        lim = c["emb_init_uniform_lim"]
        if lim is not None and not isinstance(lim, (int, float)) and not (
                isinstance(lim, (list, tuple)) and len(lim) == 2):
            raise ValueError(f"init_config.emb_init_uniform_lim must be None, a number or [lo, hi], got {lim!r}")

    # ------------------------------------------------------------------ derived values
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_size(self) -> int:
        return int(self.d_model * self.expansion_ratio)

    @property
    def residual_divisor(self) -> float:
        """What residual output projections are divided by at init (1 = no scaling)."""
        div = self.init_config["init_div_is_residual"]
        if div is True:
            return math.sqrt(2 * self.n_layers)
        return 1.0 if div is False else float(div)


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def resolve_flash_impl(requested: str, attn_pdrop: float) -> str:
    """The kernel that runs for attn_impl 'flash' (or MPT-7B's 'triton'): flash-attn where installed.

    Without the package (llm-foundry's YAMLs and folders say 'flash'), the same attention runs on
    the fastest kernel torch has, with a one-line warning instead of a refusal: on a GPU flex
    (compiled flex_attention, ALiBi as a score_mod: no bias tensor, like flash), on a CPU torch's
    SDPA (flex is an uncompiled reference kernel there), and SDPA wherever attention dropout is on
    (flex has none). Set attn_impl to 'flex' or 'torch' to choose without a warning.
    """
    if requested == "flash" and flash_attn_installed():
        return "flash"
    chosen = "flex" if torch.cuda.is_available() and not attn_pdrop else "torch"
    package = "the flash-attn package, which is not installed" if requested == "flash" else \
        "MPT's Triton kernel, which foundry does not ship"
    warnings.warn(f"attn_config.attn_impl {requested!r} needs {package}; running attn_impl {chosen!r} "
                  f"(the same attention{', torch flex_attention' if chosen == 'flex' else ', torch SDPA'}). "
                  "Install flash-attn (pip install flash-attn --no-build-isolation) or set attn_impl: flex "
                  "or torch to choose explicitly.", FoundryWarning, stacklevel=3)
    return chosen


def portable_attn_config(attn: dict[str, Any]) -> dict[str, Any]:
    """attn_config as written to config.json: keys every MPT reader accepts.

    llm-foundry passes attn_config to its attention classes as keyword arguments, and its
    multi-head and multi-query classes refuse `kv_n_heads`, every class refuses `prefix_lm` and it
    knows only attn_impl 'torch' and 'flash'. So kv_n_heads is written for grouped-query attention
    only (the other types imply it), prefix_lm (always false here) not at all, and 'flex' as
    'torch' (the kernel is a run-time choice; the model computes the same either way).
    transformers' native MptConfig fills in what is missing with the same defaults.
    """
    out = dict(attn)
    if out.get("attn_type") != "grouped_query_attention":
        out.pop("kv_n_heads", None)
    if not out.get("prefix_lm"):
        out.pop("prefix_lm", None)
    if out.get("attn_impl") == "flex":
        out["attn_impl"] = "torch"
    return out


def _check_prob(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
