import inspect
import json
import math
import warnings

import pytest
import torch
import transformers
from mpt_helpers import VOCAB, tiny_config, tiny_model

from foundry.models import count_parameters
from foundry.models.mpt import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS, MPTBlock, MPTConfig, MPTForCausalLM
from foundry.models.mpt.norms import LayerNorm, LowPrecisionLayerNorm, RMSNorm


# ---------------------------------------------------------------- config
def test_defaults_are_mpt_7b():
    cfg = MPTConfig()
    assert (cfg.d_model, cfg.n_heads, cfg.n_layers, cfg.vocab_size, cfg.max_seq_len) == (4096, 32, 32, 50432, 2048)
    assert cfg.attn_config["alibi"] and cfg.attn_config["alibi_bias_max"] == 8
    assert cfg.no_bias and cfg.norm_type == "low_precision_layernorm" and cfg.tie_word_embeddings
    assert cfg.model_type == "mpt"
    assert count_parameters(cfg) == 6_649_286_656  # MPT-7B's published size, counted on meta


def test_signature_lists_every_top_level_key():
    params = set(inspect.signature(MPTConfig.__init__).parameters) - {"self", "kwargs"}
    expected = {"d_model", "n_heads", "n_layers", "expansion_ratio", "max_seq_len", "vocab_size",
                "resid_pdrop", "emb_pdrop", "learned_pos_emb", "attn_config", "init_device",
                "logit_scale", "no_bias", "embedding_fraction", "norm_type", "norm_eps", "use_cache",
                "init_config", "tokenizer_name"}
    assert expected <= params
    assert {"kv_n_heads", "attn_uses_sequence_id", "clip_qkv", "qk_ln"} <= set(ATTN_CONFIG_DEFAULTS)
    assert {"name", "fan_mode", "init_nonlinearity", "init_gain", "init_std", "emb_init_std",
            "emb_init_uniform_lim", "init_div_is_residual"} <= set(INIT_CONFIG_DEFAULTS)


def test_mpt_7b_config_json_loads():
    # The key layout of mosaicml/mpt-7b's config.json (it sets learned_pos_emb and alibi both).
    raw = {"architectures": ["MPTForCausalLM"], "d_model": 4096, "emb_pdrop": 0, "embedding_fraction": 1.0,
           "expansion_ratio": 4, "init_device": "cpu", "learned_pos_emb": True, "logit_scale": None,
           "max_seq_len": 2048, "model_type": "mpt", "n_heads": 32, "n_layers": 32, "no_bias": True,
           "norm_type": "low_precision_layernorm", "resid_pdrop": 0, "tokenizer_name": "EleutherAI/gpt-neox-20b",
           "torch_dtype": "bfloat16", "transformers_version": "4.28.1", "use_cache": False, "verbose": 0,
           "vocab_size": 50432,
           "attn_config": {"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch", "attn_pdrop": 0,
                           "attn_type": "multihead_attention", "attn_uses_sequence_id": False,
                           "clip_qkv": None, "prefix_lm": False, "qk_ln": False, "softmax_scale": None},
           "init_config": {"emb_init_std": None, "emb_init_uniform_lim": None, "fan_mode": "fan_in",
                           "init_div_is_residual": True, "init_gain": 0, "init_nonlinearity": "relu",
                           "init_std": 0.02, "name": "kaiming_normal_", "verbose": 0}}
    with pytest.warns(UserWarning, match="learned_pos_emb"):
        cfg = MPTConfig.from_dict(raw)
    assert cfg.learned_pos_emb is False and cfg.attn_config["kv_n_heads"] == 32


@pytest.mark.parametrize("kwargs,match", [
    (dict(d_model=30), "divisible by n_heads"),
    (dict(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 3}), "dividing n_heads"),
    (dict(attn_config={"attn_type": "grouped_query_attention"}), "needs attn_config.kv_n_heads"),
    (dict(attn_config={"kv_n_heads": 2}), "grouped_query_attention"),
    (dict(attn_config={"attn_impl": "xformers"}), "must be one of"),
    (dict(attn_config={"attn_impl": "flex", "attn_pdrop": 0.1}), "no attention dropout"),
    (dict(ac_every_n_blocks=-1), "ac_every_n_blocks"),
    (dict(attn_config={"prefix_lm": True}), "prefix_lm is not supported yet"),
    (dict(attn_config={"rope": True}), "attn_config.rope is True: foundry does not implement rotary"),
    (dict(attn_config={"alibi_bias_mx": 4}), "Did you mean 'alibi_bias_max'"),
    (dict(init_config={"fan_mod": "fan_in"}), "Did you mean 'fan_mode'"),
    (dict(n_layer=2), "Did you mean 'n_layers'"),
    (dict(norm_type="batchnorm"), "norm_type"),
    (dict(logit_scale="sqrt"), "inv_sqrt_d_model"),
    (dict(init_device="mixed"), "not supported yet"),
    (dict(init_config={"name": "xavier_normal_"}), "init_gain"),
    (dict(resid_pdrop=1.5), "resid_pdrop"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_config_json_round_trip(tmp_path):
    cfg = tiny_config(attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2, "qk_ln": True},
                      norm_eps=1e-6, logit_scale="inv_sqrt_d_model")
    cfg.save_pretrained(tmp_path)
    again = MPTConfig.from_pretrained(tmp_path)
    assert again.attn_config == cfg.attn_config and again.init_config == cfg.init_config
    assert again.norm_eps == 1e-6 and again.logit_scale == "inv_sqrt_d_model"
    # transformers' own MptConfig (picked by model_type 'mpt') reads our file; it knows no GQA.
    tiny_config(norm_eps=1e-6).save_pretrained(tmp_path / "mha")
    native = transformers.AutoConfig.from_pretrained(tmp_path / "mha")
    assert isinstance(native, transformers.MptConfig)
    assert native.layer_norm_epsilon == 1e-6 and native.d_model == 32


@pytest.mark.parametrize("writer", ["4.51", "5"])
def test_config_json_of_either_transformers_loads(tmp_path, writer):
    """A folder saved under the other major transformers version loads here, dtype included."""
    from foundry.models.mpt.configuration import DTYPE_KEY

    raw = tiny_config().to_dict()
    for key in ("dtype", "torch_dtype"):
        raw.pop(key, None)
    if writer == "4.51":  # torch_dtype, and keys transformers 5 no longer has
        raw.update(transformers_version="4.51.3", torch_dtype="bfloat16", torchscript=False, use_bfloat16=False,
                   pruned_heads={}, bos_token_id=None, tokenizer_class=None, _attn_implementation_autoset=True)
    else:  # what MPTConfig writes under transformers 5: dtype, and torch_dtype for 4.x readers
        raw.update(transformers_version="5.25.0", dtype="bfloat16", torch_dtype="bfloat16")
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert getattr(MPTConfig.from_pretrained(tmp_path), DTYPE_KEY) == torch.bfloat16
    native = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(native, transformers.MptConfig) and getattr(native, DTYPE_KEY) == torch.bfloat16
    del raw["torch_dtype"]  # a file with only transformers 5's key still gives foundry its dtype
    raw["dtype"] = "float16"
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert getattr(MPTConfig.from_pretrained(tmp_path), DTYPE_KEY) == torch.float16


def test_config_json_has_the_types_transformers_5_declares(tmp_path):
    """transformers 5's MptConfig refuses e.g. attn_pdrop 0.0 (an int field) or clip_qkv 6 (a float one)."""
    cfg = tiny_config(expansion_ratio=4.0, embedding_fraction=1, attn_config={"attn_pdrop": 0.0, "clip_qkv": 6,
                                                                              "alibi_bias_max": 8.0})
    cfg.save_pretrained(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert raw["expansion_ratio"] == 4 and isinstance(raw["expansion_ratio"], int)
    assert isinstance(raw["embedding_fraction"], float)
    a = raw["attn_config"]
    assert (a["attn_pdrop"], a["clip_qkv"], a["alibi_bias_max"]) == (0, 6.0, 8)
    assert [type(a[k]) for k in ("attn_pdrop", "clip_qkv", "alibi_bias_max")] == [int, float, int]
    native = transformers.AutoConfig.from_pretrained(tmp_path)
    assert isinstance(native, transformers.MptConfig)
    assert MPTConfig.from_pretrained(tmp_path).attn_config == cfg.attn_config


# ---------------------------------------------------------------- model structure
def test_output_shapes_and_names(ids):
    model = tiny_model()
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 16, VOCAB) and out.loss.ndim == 0
    names = {n for n, _ in model.named_parameters()}
    assert "lm_head.weight" not in names and "transformer.wpe.weight" not in names
    per_block = ["norm_1.weight", "attn.Wqkv.weight", "attn.out_proj.weight", "norm_2.weight",
                 "ffn.up_proj.weight", "ffn.down_proj.weight"]
    expected = {f"transformer.blocks.{i}.{n}" for i in range(2) for n in per_block}
    assert names == expected | {"transformer.wte.weight", "transformer.norm_f.weight"}


def test_state_dict_names_match_transformers_native():
    ours = tiny_model()
    native = transformers.MptForCausalLM(transformers.MptConfig(**ours.config.to_dict()))
    native_keys = set(native.state_dict()) - {"lm_head.weight"}
    assert set(ours.state_dict()) == native_keys


def test_untied_learned_pos_biases():
    model = tiny_model(tie_word_embeddings=False, learned_pos_emb=True, attn_config={"alibi": False},
                       no_bias=False)
    names = {n for n, _ in model.named_parameters()}
    assert {"lm_head.weight", "transformer.wpe.weight", "transformer.blocks.0.attn.Wqkv.bias",
            "transformer.blocks.0.norm_1.bias"} <= names
    with torch.no_grad():
        assert model(torch.zeros(1, 64, dtype=torch.long)).logits.shape == (1, 64, VOCAB)
    with pytest.raises(ValueError, match="max_seq_len"):
        model(torch.zeros(1, 65, dtype=torch.long))


def test_alibi_extrapolates_past_max_seq_len():
    model = tiny_model()
    with torch.no_grad():
        assert model(torch.zeros(1, 80, dtype=torch.long)).logits.shape == (1, 80, VOCAB)


def test_hooks_select_blocks():
    model = tiny_model()
    for module in model.modules():
        assert model.fsdp_wrap_fn(module) == isinstance(module, MPTBlock)
        assert model.activation_checkpointing_fn(module) == isinstance(module, MPTBlock)


# ---------------------------------------------------------------- meta build and init
def test_meta_build_matches_real_build():
    for overrides in ({}, {"tie_word_embeddings": False, "no_bias": False},
                      {"attn_config": {"attn_type": "grouped_query_attention", "kv_n_heads": 2, "qk_ln": True}}):
        real = tiny_model(**overrides)
        meta = MPTForCausalLM(tiny_config(init_device="meta", **overrides))
        assert all(p.is_meta for p in meta.parameters())
        assert sum(p.numel() for p in meta.parameters()) == sum(p.numel() for p in real.parameters())
        assert count_parameters(tiny_config(**overrides)) == sum(p.numel() for p in real.parameters())


def test_meta_to_empty_then_init_weights_equals_cpu_build(ids):
    torch.manual_seed(0)
    cpu = MPTForCausalLM(tiny_config()).eval()
    meta = MPTForCausalLM(tiny_config(init_device="meta")).eval()
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    meta.init_weights()
    with torch.no_grad():
        torch.testing.assert_close(meta(ids).logits, cpu(ids).logits)


def test_param_init_fn_by_module_bottom_up_initialises_everything():
    meta = MPTForCausalLM(tiny_config(init_device="meta"))
    meta.to_empty(device="cpu")
    for p in meta.parameters():
        p.data.fill_(float("nan"))
    for module in reversed(list(meta.modules())):  # composer's meta_init order: children first
        meta.param_init_fn(module)
    assert all(torch.isfinite(p).all() for p in meta.parameters())


def test_param_init_fn_is_not_recursive():
    model = tiny_model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    model.param_init_fn(model.transformer.blocks[0])  # no direct parameters: touches nothing
    model.param_init_fn(model.transformer.blocks[0].attn)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n
    model.param_init_fn(model.transformer.blocks[0].attn.Wqkv)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {"transformer.blocks.0.attn.Wqkv.weight"}


def test_init_is_deterministic():
    a, b = tiny_model(seed=3), tiny_model(seed=3)
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_init_scales():
    d, layers = 256, 8
    model = tiny_model(d_model=d, n_heads=4, n_layers=layers, vocab_size=512, no_bias=False)
    kaiming = math.sqrt(2.0 / d)  # relu gain / sqrt(fan_in)
    block = model.transformer.blocks[0]
    assert block.attn.Wqkv.weight.std().item() == pytest.approx(kaiming, rel=0.03)
    assert block.ffn.up_proj.weight.std().item() == pytest.approx(kaiming, rel=0.03)
    resid = kaiming / math.sqrt(2 * layers)
    assert block.attn.out_proj.weight.std().item() == pytest.approx(resid, rel=0.03)
    assert block.ffn.down_proj.weight.std().item() == pytest.approx(math.sqrt(2.0 / (4 * d)) / math.sqrt(2 * layers), rel=0.03)
    assert model.transformer.wte.weight.std().item() == pytest.approx(kaiming, rel=0.03)
    assert torch.equal(block.norm_1.weight, torch.ones(d)) and torch.equal(block.norm_1.bias, torch.zeros(d))
    assert torch.equal(block.attn.Wqkv.bias, torch.zeros(3 * d))


def test_init_options():
    model = tiny_model(d_model=256, vocab_size=512,
                       init_config={"emb_init_std": 0.5, "init_div_is_residual": False})
    assert model.transformer.wte.weight.std().item() == pytest.approx(0.5, rel=0.03)
    out_proj = model.transformer.blocks[0].attn.out_proj.weight
    assert out_proj.std().item() == pytest.approx(math.sqrt(2.0 / 256), rel=0.03)
    model = tiny_model(init_config={"emb_init_uniform_lim": [-0.1, 0.2], "name": "baseline_", "init_std": 0.01})
    wte = model.transformer.wte.weight
    assert wte.min() >= -0.1 and wte.max() <= 0.2 and wte.max() > 0.15
    assert model.transformer.blocks[0].ffn.up_proj.weight.std().item() == pytest.approx(0.01, rel=0.1)
    # xavier with GQA gives q, k, v different fan_out: each part gets its own std.
    model = tiny_model(d_model=256, n_heads=8, init_config={"name": "xavier_normal_", "init_gain": 1.0},
                       attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2})
    q, k, _ = model.transformer.blocks[0].attn.Wqkv.weight.split([256, 64, 64])
    assert q.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.05)
    assert k.std().item() == pytest.approx(math.sqrt(2 / 320), rel=0.05)


# ---------------------------------------------------------------- norms and scaling
def test_low_precision_layernorm():
    x = torch.randn(4, 32)
    lp, ref = LowPrecisionLayerNorm(32), LayerNorm(32)
    torch.testing.assert_close(lp(x), ref(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = lp(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(x), atol=0.05, rtol=0.05)


def test_rmsnorm_formula():
    x = torch.randn(4, 32)
    norm = RMSNorm(32, eps=1e-5)
    torch.testing.assert_close(norm(x), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    model = tiny_model(norm_type="rmsnorm")
    assert isinstance(model.transformer.norm_f, RMSNorm)


@pytest.mark.parametrize("overrides", [{}, {"attn_config": {"qk_ln": True}}, {"norm_type": "rmsnorm"},
                                       {"attn_config": {"attn_uses_sequence_id": True}}])
def test_bf16_autocast_forward_backward(ids, overrides):
    model = tiny_model(**overrides).train()
    seq_id = torch.tensor([[0] * 8 + [1] * 8] * 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids, sequence_id=seq_id)
    assert out.logits.dtype == torch.bfloat16
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with torch.no_grad():
        ref = model.eval()(ids, labels=ids, sequence_id=seq_id).loss
    assert out.loss.item() == pytest.approx(ref.item(), rel=0.03)


def test_logit_scale(ids):
    a = tiny_model()
    b = tiny_model(logit_scale="inv_sqrt_d_model")
    c = tiny_model(logit_scale=0.5)
    with torch.no_grad():
        torch.testing.assert_close(b(ids).logits, a(ids).logits / math.sqrt(32))
        torch.testing.assert_close(c(ids).logits, a(ids).logits * 0.5)


def test_embedding_fraction_scales_only_the_gradient(ids):
    a = tiny_model()
    b = tiny_model(embedding_fraction=0.25)
    out_a, out_b = a(ids), b(ids)
    torch.testing.assert_close(out_a.logits, out_b.logits)
    # Only the embedding-lookup path is scaled; the tied output matmul's gradient is not, so
    # compare a model with untied heads.
    a = tiny_model(tie_word_embeddings=False)
    b = tiny_model(tie_word_embeddings=False, embedding_fraction=0.25)
    a(ids).logits.sum().backward()
    b(ids).logits.sum().backward()
    torch.testing.assert_close(b.transformer.wte.weight.grad, 0.25 * a.transformer.wte.weight.grad)


# ---------------------------------------------------------------- Hugging Face round trips
@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False}, {"norm_type": "rmsnorm",
                                        "attn_config": {"attn_type": "grouped_query_attention", "kv_n_heads": 2}}])
def test_save_and_from_pretrained_round_trip(tmp_path, ids, overrides):
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path)
    loaded = MPTForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_from_pretrained_of_meta_config(tmp_path, ids):
    model = tiny_model()
    model.config.init_device = "meta"  # what a run that built on meta writes out
    model.save_pretrained(tmp_path)
    loaded = MPTForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=0)


@pytest.mark.parametrize("overrides", [{}, {"tie_word_embeddings": False},
                                       {"attn_config": {"clip_qkv": 0.5, "softmax_scale": 0.2}}])
def test_transformers_native_mpt_loads_our_folder(tmp_path, overrides):
    model = tiny_model(**overrides)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        native = transformers.MptForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, 64))  # native ALiBi is built for max_seq_len positions
    with torch.no_grad():
        torch.testing.assert_close(native(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)
        auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
        torch.testing.assert_close(auto(ids[:, :20]).logits, model(ids[:, :20]).logits, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:DTensor random operators")
def test_param_init_fn_on_fsdp2_sharded_meta_model(no_process_group):
    """The composer FSDP2 path: shard a meta build, then materialise + init module by module."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        cfg = tiny_config(d_model=128, n_layers=4, init_device="meta",
                          attn_config={"attn_type": "grouped_query_attention", "kv_n_heads": 2})
        model = MPTForCausalLM(cfg)
        for block in model.transformer.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        torch.manual_seed(0)
        for module in reversed(list(model.modules())):  # what composer's meta_init does
            if any(p.is_meta for p in module.parameters(recurse=False)):
                module.to_empty(device="cpu", recurse=False)
                model.param_init_fn(module)
        out_proj = model.transformer.blocks[0].attn.out_proj.weight
        assert isinstance(out_proj, DTensor)
        assert out_proj.full_tensor().std().item() == pytest.approx(math.sqrt(2 / 128) / math.sqrt(8), rel=0.05)
        ids = torch.randint(0, VOCAB, (2, 16))
        out = model(ids, labels=ids)
        out.loss.backward()
        assert torch.isfinite(out.loss)
    finally:
        dist.destroy_process_group()
