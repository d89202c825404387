"""MPT folders written by llm-foundry and by the mosaicml/mpt-* family: what loads, what is refused.

The config.json fixtures are in those projects' layouts: `fixtures/llmfoundry_0.22_config.json` is
the file llm-foundry 0.22's save_pretrained wrote for a tiny model; the mosaicml ones are written
here after mosaicml/mpt-7b's and mpt-7b-8k's published configs (shrunk to a tiny model). No
llm-foundry is needed: launch/bench/llmfoundry_parity.py checks logits against the real thing.
"""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from safetensors.torch import save_file

from foundry.models.mpt.configuration import MPTConfig, portable_attn_config
from foundry.models.mpt.foreign_keys import ForeignKeyError
from foundry.models.mpt.modeling import MPTForCausalLM
from foundry.models.mpt.norms import LowPrecisionLayerNorm, RMSNorm
from foundry.models.pretrained import PretrainedSourceError, model_config_from_section

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def llmfoundry_config() -> dict:
    with open(os.path.join(FIXTURES, "llmfoundry_0.22_config.json")) as f:
        return json.load(f)


# mosaicml/mpt-7b's config.json (remote-code era, transformers 4.28), dimensions shrunk.
MPT_7B_LAYOUT = {
    "architectures": ["MPTForCausalLM"],
    "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
                    "attn_type": "multihead_attention", "attn_uses_sequence_id": False, "clip_qkv": None,
                    "prefix_lm": False, "qk_ln": False, "softmax_scale": None},
    "auto_map": {"AutoConfig": "configuration_mpt.MPTConfig", "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"},
    "d_model": 32, "emb_pdrop": 0, "embedding_fraction": 1.0, "expansion_ratio": 4,
    "init_config": {"emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in",
                    "init_div_is_residual": True, "init_gain": 0, "init_nonlinearity": "relu", "init_std": 0.02,
                    "name": "kaiming_normal_", "verbose": 0},
    "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None, "max_seq_len": 64, "model_type": "mpt",
    "n_heads": 4, "n_layers": 2, "no_bias": True, "norm_type": "low_precision_layernorm", "resid_pdrop": 0,
    "tokenizer_name": "EleutherAI/gpt-neox-20b", "torch_dtype": "bfloat16", "transformers_version": "4.28.1",
    "use_cache": False, "verbose": 0, "vocab_size": 64,
}
# mosaicml/mpt-7b-8k and mpt-30b add llm-foundry's later switches, at their "off" values, and 'triton'.
MPT_8K_LAYOUT = {
    **copy.deepcopy(MPT_7B_LAYOUT),
    "fc_type": "torch",
    "ffn_config": {"fc_type": "torch", "ffn_type": "mptmlp"},
    "learned_pos_emb": True,
}
MPT_8K_LAYOUT["attn_config"].update({
    "attn_impl": "triton", "rope": False, "rope_dail_config": {"pos_idx_in_fp32": True, "type": "original",
                                                                "xpos_scale_base": 512},
    "rope_hf_config": {"factor": 1.0, "type": "no_scaling"}, "rope_impl": "dail", "rope_theta": 10000,
})


def config_from(layout: dict) -> MPTConfig:
    return MPTConfig.from_dict(copy.deepcopy(layout))


def test_llmfoundry_folder_config_loads_as_the_model_it_describes():
    raw = llmfoundry_config()
    assert {"rope", "fused_qkv", "sliding_window_size", "qk_gn"} <= set(raw["attn_config"])  # it is the real layout
    cfg = config_from(raw)
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.vocab_size) == (32, 4, 2, 64)
    assert cfg.attn_config["alibi"] and cfg.no_bias and not cfg.learned_pos_emb
    assert "rope" not in cfg.attn_config and not hasattr(cfg, "ffn_config")


@pytest.mark.parametrize("layout", [MPT_7B_LAYOUT, MPT_8K_LAYOUT], ids=["mpt-7b", "mpt-7b-8k"])
def test_mosaicml_layouts_load(layout, recwarn):
    cfg = config_from(layout)
    assert cfg.attn_config["attn_impl"] in ("torch", "flex")  # 'triton' runs on torch's kernels, with a warning
    assert not cfg.learned_pos_emb  # ALiBi switches the table off, as MPT does
    MPTForCausalLM(cfg)


# (where, value) -> the refusal names the key and the value.
NON_NEUTRAL = [
    (("attn_config", "rope"), True),
    (("attn_config", "sliding_window_size"), 512),
    (("attn_config", "qk_gn"), True),
    (("attn_config", "attn_logit_softcapping"), 30.0),
    (("attn_config", "attn_temperature_tuning"), {"floor_scale": 8192, "attn_scale": 0.1}),
    (("attn_config", "nope"), True),
    (("attn_config", "kv_dim"), 16),
    ((None, "ffn_config"), {"ffn_type": "mptglu"}),
    ((None, "ffn_config"), {"ffn_type": "mptmlp", "ffn_act_fn": {"name": "silu"}}),
    ((None, "ffn_config"), {"ffn_type": "mptmlp", "ffn_hidden_size": 100}),
    ((None, "fc_type"), {"name": "te"}),
    ((None, "fc_type"), "te"),
    ((None, "block_overrides"), {"order": [{"name": "default"}], "overrides": {}}),
    ((None, "final_logit_softcapping"), 30.0),
    ((None, "head_dim"), 16),
    ((None, "attention_bias"), True),
]


@pytest.mark.parametrize("where,value", NON_NEUTRAL, ids=[f"{w[1]}={v}" for w, v in NON_NEUTRAL])
def test_a_feature_switched_on_is_refused_by_name_in_one_line(where, value):
    raw = llmfoundry_config()
    section, key = where
    (raw[section] if section else raw)[key] = value
    with pytest.raises(ForeignKeyError) as err:
        config_from(raw)
    message = str(err.value)
    path = f"{section}.{key}" if section else key
    assert "\n" not in message and "foundry does not implement" in message
    assert message.startswith(f"model.{path}") or message.startswith(f"model.{section or key}"), message
    assert repr(value) in message or repr(value.get("ffn_type", "")) in message or "ffn_config." in message


def test_neutral_values_in_every_spelling_load():
    raw = llmfoundry_config()
    raw.update(fc_type="torch", head_dim=8, attention_bias=False, use_pad_tok_in_ffn=False,
               ffn_config={"ffn_type": "mptmlp", "ffn_act_fn": {"name": "gelu", "approximate": "none"},
                           "ffn_hidden_size": 128, "fc_type": {"name": "torch"}})
    raw["attn_config"].update(kv_dim=32, attn_temperature_tuning=None, sliding_window_size=-1, fused_qkv=False)
    cfg = config_from(raw)
    assert cfg.ffn_hidden_size == 128 and cfg.head_dim == 8


def test_rope_settings_without_rope_are_ignored_but_rope_on_is_refused():
    raw = llmfoundry_config()
    raw["attn_config"].update(rope_theta=500000, rope_impl="hf")
    config_from(raw)
    raw["attn_config"]["rope"] = True
    with pytest.raises(ForeignKeyError, match=r"model\.attn_config\.rope is True: foundry does not implement rotary"):
        config_from(raw)


def test_split_wq_wk_wv_folder_loads_into_the_fused_projection(tmp_path):
    """llm-foundry with fused_qkv: false saves Wq/Wk/Wv; from_pretrained and load_path both fuse them."""
    from foundry.checkpoint.weights import HFWeights, load_weights

    torch.manual_seed(0)
    cfg = MPTConfig(d_model=32, n_heads=4, n_layers=2, max_seq_len=64, vocab_size=64, no_bias=False,
                    attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2})
    model = MPTForCausalLM(cfg).eval()
    split = {}
    for name, tensor in model.state_dict().items():
        if ".attn.Wqkv." in name:
            q, k, v = tensor.split([32, 16, 16], dim=0)
            for part, value in zip(("Wq", "Wk", "Wv"), (q, k, v)):
                split[name.replace("Wqkv", part)] = value.clone()
        else:
            split[name] = tensor.clone()
    folder = tmp_path / "split"
    folder.mkdir()
    save_file(split, str(folder / "model.safetensors"))
    raw = cfg.to_dict()
    raw["attn_config"]["fused_qkv"] = False
    (folder / "config.json").write_text(json.dumps(raw))

    ids = torch.randint(0, 64, (2, 12))
    loaded = MPTForCausalLM.from_pretrained(str(folder)).eval()
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)

    fresh = MPTForCausalLM(cfg).eval()
    source = HFWeights(str(folder))
    assert source.shapes()["transformer.blocks.0.attn.Wqkv.weight"] == (64, 32)
    assert load_weights(fresh, source, "split folder", max_bytes=1024) == len(model.state_dict())
    torch.testing.assert_close(fresh(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("norm_type", ["layernorm", "low_precision_layernorm", "rmsnorm", "low_precision_rmsnorm"])
@pytest.mark.parametrize("no_bias", [True, False])
def test_qk_ln_is_mpts_whatever_norm_type_and_norm_eps_say(norm_type, no_bias):
    cfg = MPTConfig(d_model=32, n_heads=4, n_layers=1, max_seq_len=16, vocab_size=64, norm_type=norm_type,
                    norm_eps=1e-3, no_bias=no_bias, attn_config={"qk_ln": True, "attn_type": "grouped_query_attention",
                                                                 "kv_n_heads": 2})
    attn = MPTForCausalLM(cfg).transformer.blocks[0].attn
    for norm, width in ((attn.q_ln, 32), (attn.k_ln, 16)):
        assert type(norm) is LowPrecisionLayerNorm and norm.eps == 1e-5 and norm.normalized_shape == (width,)
        assert (norm.bias is None) == no_bias
    block_norm = MPTForCausalLM(cfg).transformer.blocks[0].norm_1
    assert isinstance(block_norm, RMSNorm) == ("rmsnorm" in norm_type) and block_norm.eps == 1e-3


def test_saved_attn_config_is_what_llmfoundrys_attention_classes_accept(tmp_path):
    mha = MPTConfig(d_model=32, n_heads=4, n_layers=1, vocab_size=64, attn_config={"attn_impl": "flex"})
    attn = portable_attn_config(mha.attn_config)
    assert "kv_n_heads" not in attn and "prefix_lm" not in attn and attn["attn_impl"] == "torch"
    gqa = MPTConfig(d_model=32, n_heads=4, n_layers=1, vocab_size=64,
                    attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2})
    gqa.save_pretrained(str(tmp_path))
    written = json.loads((tmp_path / "config.json").read_text())["attn_config"]
    assert written["kv_n_heads"] == 2 and "prefix_lm" not in written
    assert MPTConfig.from_pretrained(str(tmp_path)).attn_config["kv_n_heads"] == 2


def test_pretrained_model_name_or_path_gives_the_architecture_and_yaml_keys_override(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(llmfoundry_config()))
    cfg = model_config_from_section({"pretrained_model_name_or_path": str(tmp_path), "max_seq_len": 128,
                                     "attn_config": {"attn_impl": "flex"}, "loss_fn": "torch_crossentropy"})
    assert (cfg.d_model, cfg.max_seq_len, cfg.attn_config["attn_impl"], cfg.attn_config["alibi"]) == (
        32, 128, "flex", True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PretrainedSourceError, match="has no config.json"):
        model_config_from_section({"pretrained_model_name_or_path": str(tmp_path / "empty")})
    with pytest.raises(PretrainedSourceError, match="not a local folder"):
        model_config_from_section({"pretrained_model_name_or_path": str(tmp_path / "missing")})
