"""Config keys that llm-foundry's and mosaicml's MPT folders carry and foundry does not model.

llm-foundry (0.22) writes every key of its MPTConfig into config.json, including switches for
features foundry does not implement (rotary embeddings, sliding windows, soft-capping, ...).
Each switch has a value that means "feature off"; a folder holding that value describes a model
foundry computes exactly, so the key is accepted and dropped. Any other value is refused with one
line naming the key, the value, and that foundry does not implement it yet, so a model is never
loaded into a network that computes something else.

The neutral values were worked out from what each key does in llm-foundry's MPT:
  attention_bias           None or `not no_bias` (bias on Wqkv exactly when the other linears have one)
  head_dim                 None or d_model // n_heads (foundry's heads always split d_model evenly)
  fc_type                  'torch' / {name: torch} (te: TransformerEngine linears)
  ffn_config               ffn_type 'mptmlp' with the exact GELU and ffn_hidden_size = d_model * expansion_ratio
  use_pad_tok_in_ffn       either: False only skips the MLP on padding positions, which no real token attends to
  block_overrides          None (per-layer overrides)
  final_logit_softcapping  None
  attn_config.fused_qkv    True, or False: then the checkpoint has Wq/Wk/Wv, fused into Wqkv on load
  attn_config.qk_gn        False (per-head group norm instead of qk_ln)
  attn_config.rope         False; rope_theta/rope_impl/rope_dail_config/rope_hf_config are then unused
  attn_config.nope         False
  attn_config.sliding_window_size      -1 (no window)
  attn_config.attn_logit_softcapping   None
  attn_config.attn_temperature_tuning  None or attn_scale 0 (llm-foundry skips it then)
  attn_config.kv_dim       None or d_model (keys and values read the same stream as queries)
  attn_config.reuse_kv_layer_idx / reuse_kv_x_layer_idx  None
  attn_config.seq_parallel_world_size  None or 1
"""

from __future__ import annotations

from typing import Any, Callable, Optional

# Accepted everywhere a user writes model keys (YAML and config.json); see `check_foreign_keys`.
FOREIGN_TOP_KEYS = ("attention_bias", "head_dim", "fc_type", "ffn_config", "use_pad_tok_in_ffn",
                    "block_overrides", "final_logit_softcapping")
FOREIGN_ATTN_KEYS = ("fused_qkv", "qk_gn", "rope", "rope_theta", "rope_impl", "rope_dail_config",
                     "rope_hf_config", "nope", "sliding_window_size", "attn_logit_softcapping",
                     "attn_temperature_tuning", "kv_dim", "reuse_kv_layer_idx", "reuse_kv_x_layer_idx",
                     "seq_parallel_world_size")
_ROPE_DETAILS = ("rope_theta", "rope_impl", "rope_dail_config", "rope_hf_config")


class ForeignKeyError(ValueError):
    """A foreign key holding a value that switches on a feature foundry does not implement."""


def _refuse(path: str, value: Any, feature: str, neutral: str) -> ForeignKeyError:
    return ForeignKeyError(f"model.{path} is {value!r}: foundry does not implement {feature} yet; "
                           f"it loads this key only as {neutral}")


def _is_torch_fc(value: Any) -> bool:
    if value is None or value == "torch":
        return True
    return isinstance(value, dict) and value.get("name", "torch") == "torch" and set(value) <= {"name"}


def _exact_gelu(act: Any) -> bool:
    if act is None:
        return True
    if not isinstance(act, dict) or act.get("name") != "gelu":
        return False
    return set(act) <= {"name", "approximate"} and act.get("approximate", "none") == "none"


def _check_ffn(ffn: Any, d_model: int, expansion_ratio: float) -> None:
    if ffn is None or ffn == {}:
        return
    if not isinstance(ffn, dict):
        raise _refuse("ffn_config", ffn, "this feed-forward config", "{ffn_type: mptmlp}")
    ffn_type = ffn.get("ffn_type", "mptmlp")
    if ffn_type != "mptmlp":
        raise _refuse("ffn_config.ffn_type", ffn_type, f"the {ffn_type!r} feed-forward block", "mptmlp")
    for key, value in ffn.items():
        if key == "ffn_type":
            continue
        if key == "fc_type":
            if not _is_torch_fc(value):
                raise _refuse("ffn_config.fc_type", value, "non-torch linear layers", "torch")
        elif key == "ffn_act_fn":
            if not _exact_gelu(value):
                raise _refuse("ffn_config.ffn_act_fn", value, "activations other than the exact GELU",
                              "{name: gelu} (approximate: none)")
        elif key == "ffn_hidden_size":
            if value is not None and value != d_model * expansion_ratio:
                raise _refuse("ffn_config.ffn_hidden_size", value, "an MLP width other than d_model * "
                              "expansion_ratio", f"null or {d_model * expansion_ratio:g}")
        elif key == "bias":
            continue  # llm-foundry fills it in from no_bias
        else:
            raise _refuse(f"ffn_config.{key}", value, f"ffn_config.{key}", "an ffn_config without it")


# key -> (is the value neutral?, what the feature is, the neutral value(s) as the message says them)
_Rule = tuple[Callable[[Any, dict], bool], str, str]
_TOP_RULES: dict[str, _Rule] = {
    "attention_bias": (lambda v, c: v is None or v == (not c.get("no_bias", True)),
                       "a bias on Wqkv that differs from no_bias", "null or `not no_bias`"),
    "head_dim": (lambda v, c: v is None or v == c["d_model"] // c["n_heads"],
                 "heads narrower or wider than d_model / n_heads", "null or d_model / n_heads"),
    "fc_type": (lambda v, c: _is_torch_fc(v), "non-torch linear layers (TransformerEngine)", "torch"),
    "use_pad_tok_in_ffn": (lambda v, c: isinstance(v, bool), "this setting", "true or false"),
    "block_overrides": (lambda v, c: v is None, "per-block overrides", "null"),
    "final_logit_softcapping": (lambda v, c: v is None, "final logit soft-capping", "null"),
}
_ATTN_RULES: dict[str, _Rule] = {
    "fused_qkv": (lambda v, c: isinstance(v, bool), "this setting", "true or false"),
    "qk_gn": (lambda v, c: not v, "per-head query/key group norm (qk_gn)", "false"),
    "rope": (lambda v, c: not v, "rotary position embeddings", "false"),
    "nope": (lambda v, c: not v, "NoPE layers", "false"),
    "sliding_window_size": (lambda v, c: v in (-1, None), "sliding-window attention", "-1"),
    "attn_logit_softcapping": (lambda v, c: v is None, "attention logit soft-capping", "null"),
    "attn_temperature_tuning": (lambda v, c: v is None or (isinstance(v, dict) and not v.get("attn_scale")),
                                "attention temperature tuning", "attn_scale: 0"),
    "kv_dim": (lambda v, c: v is None or v == c["d_model"], "cross-attention key/value widths",
               "null or d_model"),
    "reuse_kv_layer_idx": (lambda v, c: v is None, "reusing another layer's keys and values", "null"),
    "reuse_kv_x_layer_idx": (lambda v, c: v is None, "reusing another layer's keys and values", "null"),
    "seq_parallel_world_size": (lambda v, c: v in (None, 1), "sequence parallelism", "null or 1"),
}


def split_foreign_keys(top: dict[str, Any], attn: Optional[dict[str, Any]]
                       ) -> tuple[dict, Optional[dict], dict, dict]:
    """(top, attn) without the foreign keys, and the foreign keys of each, to check once the
    model's own values (d_model, n_heads, ...) are known to be valid."""
    top = dict(top)
    foreign_top = {k: top.pop(k) for k in FOREIGN_TOP_KEYS if k in top}
    if attn is None:
        return top, None, foreign_top, {}
    attn = dict(attn)
    foreign_attn = {k: attn.pop(k) for k in FOREIGN_ATTN_KEYS if k in attn}
    return top, attn, foreign_top, foreign_attn


def check_foreign_keys(foreign_top: dict[str, Any], foreign_attn: dict[str, Any], d_model: int, n_heads: int,
                       expansion_ratio: float, no_bias: bool) -> bool:
    """Check every foreign key holds its neutral value; True when the weights are split Wq/Wk/Wv.

    Raises ForeignKeyError for a value that switches on a feature foundry does not implement.
    """
    context = {"d_model": d_model, "n_heads": n_heads, "no_bias": no_bias}
    for key, value in foreign_top.items():
        if key == "ffn_config":
            _check_ffn(value, d_model, expansion_ratio)
            continue
        is_neutral, feature, neutral = _TOP_RULES[key]
        if not is_neutral(value, context):
            raise _refuse(key, value, feature, neutral)
    rope_on = bool(foreign_attn.get("rope"))
    for key, value in foreign_attn.items():
        if key in _ROPE_DETAILS:
            if rope_on:
                raise _refuse("attn_config.rope", True, "rotary position embeddings", "false")
            continue  # rotary settings of a model without rotary embeddings
        is_neutral, feature, neutral = _ATTN_RULES[key]
        if not is_neutral(value, context):
            raise _refuse(f"attn_config.{key}", value, feature, neutral)
    return foreign_attn.get("fused_qkv") is False


def fuse_split_qkv(state: dict[str, Any]) -> dict[str, Any]:
    """Rename llm-foundry's separate attn.Wq/Wk/Wv (weight and bias) into foundry's fused attn.Wqkv.

    The fused projection's rows are [queries | keys | values], the order llm-foundry's fused layer
    uses, so a model saved either way computes the same thing.
    """
    import torch

    out = {}
    for name, tensor in state.items():
        prefix, _, leaf = name.rpartition(".")
        if not prefix.endswith(".attn.Wq"):
            if not (prefix.endswith(".attn.Wk") or prefix.endswith(".attn.Wv")):
                out[name] = tensor
            continue
        base = prefix[: -len(".Wq")]
        parts = [state.get(f"{base}.{w}.{leaf}") for w in ("Wq", "Wk", "Wv")]
        if any(p is None for p in parts):
            raise ValueError(f"{base}.Wq.{leaf} is in the checkpoint but not all of Wk/Wv.{leaf}")
        out[f"{base}.Wqkv.{leaf}"] = torch.cat(parts, dim=0)
    return out


def split_qkv_names(names: list[str]) -> dict[str, list[str]]:
    """Fused name -> the split names that make it (for readers that stream tensors by name)."""
    fused: dict[str, list[str]] = {}
    for name in names:
        prefix, _, leaf = name.rpartition(".")
        if prefix.endswith(".attn.Wq"):
            base = prefix[: -len(".Wq")]
            fused[f"{base}.Wqkv.{leaf}"] = [f"{base}.{w}.{leaf}" for w in ("Wq", "Wk", "Wv")]
    return fused


def folder_has_split_qkv(folder: str) -> bool:
    """Whether a local Hugging Face folder's config.json says its weights are split Wq/Wk/Wv."""
    import json
    import os

    path = os.path.join(folder, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        attn = json.load(f).get("attn_config") or {}
    return attn.get("fused_qkv") is False


def read_folder_tensors(folder: str) -> dict[str, Any]:
    """Every tensor of a local Hugging Face folder (safetensors or .bin, single or indexed)."""
    import json
    import os

    import torch
    from safetensors.torch import load_file

    files = []
    for index in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        if os.path.isfile(os.path.join(folder, index)):
            with open(os.path.join(folder, index)) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
            break
    else:
        files = [f for f in ("model.safetensors", "pytorch_model.bin") if os.path.isfile(os.path.join(folder, f))][:1]
    state: dict[str, Any] = {}
    for name in files:
        path = os.path.join(folder, name)
        state.update(load_file(path) if name.endswith(".safetensors")
                     else torch.load(path, map_location="cpu", weights_only=True))
    return state
