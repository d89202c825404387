"""MPTModel (embeddings + blocks + final norm) and MPTForCausalLM (adds the output head).

Weights are named as in mosaicml/mpt-7b, so a folder from `save_pretrained` loads both here and in
transformers' native `MptForCausalLM`. With tied embeddings (the default) there is no `lm_head`
module: logits are `F.linear(h, wte.weight)`, as MPT computes them. No parameter is shared between
two modules, so sharding (FSDP) needs no special care for the tie.

Hooks for the parallelism layer, which this file otherwise knows nothing about:
  fsdp_wrap_fn(module)                 -> True for each MPTBlock (one FSDP unit per block)
  activation_checkpointing_fn(module)  -> True for each MPTBlock, unless the model checkpoints
                                          blocks itself (`ac_every_n_blocks`, see MPTModel)
  param_init_fn(module)                -> initialise that module's own parameters (see init.py)

Attention inputs (ALiBi bias, masks) are prepared once per forward by `prepare_attention`, with the
batch-independent parts cached on the model, and passed to every block.

The KV cache is a transformers `Cache` (generate() passes a `DynamicCache`; `use_cache=True`
without one makes one): each attention layer appends to it with `cache.update(k, v, layer_idx)`,
and the past length is `cache.get_seq_length()`. transformers 5 calls the argument and the output
field `cache`, 4.x `past_key_values`; forward accepts either and returns it under the running
version's name.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Cache, DynamicCache, GenerationMixin, PreTrainedModel
from transformers import modeling_utils as hf_modeling_utils
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from .attention import AttentionCache, prepare_attention
from .blocks import MPTBlock
from .configuration import MPTConfig
from .foreign_keys import folder_has_split_qkv, fuse_split_qkv, read_folder_tensors
from .init import init_module_
from .loss import causal_lm_loss, chunked_causal_lm_loss
from .norms import build_norm

# The output field (and generate()'s model argument) that holds the KV cache in this transformers.
CACHE_NAME = "cache" if "cache" in BaseModelOutputWithPast.__dataclass_fields__ else "past_key_values"


def _kv_cache(cache: Optional[Cache], past_key_values: Optional[Cache]) -> Optional[Cache]:
    if cache is not None and past_key_values is not None:
        raise ValueError("pass the KV cache as `cache` or as `past_key_values`, not both")
    cache = cache if cache is not None else past_key_values
    if cache is not None and not isinstance(cache, Cache):
        raise TypeError(f"the KV cache must be a transformers Cache (e.g. DynamicCache), got {type(cache).__name__}")
    return cache


class MPTPreTrainedModel(PreTrainedModel):
    config_class = MPTConfig
    base_model_prefix = "transformer"
    _no_split_modules = ["MPTBlock"]
    # transformers 4.x's generate() hands a DynamicCache only to models that declare this (5 always does).
    _supports_cache_class = True
    # MPT-7B's checkpoint carries an unused position table (learned_pos_emb and ALiBi both set).
    _keys_to_ignore_on_load_unexpected = [r"transformer\.wpe\.weight"]

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path=None, *args, **kwargs):
        """transformers' from_pretrained, plus folders whose attention weights are split Wq/Wk/Wv.

        llm-foundry writes separate Wq/Wk/Wv with `attn_config.fused_qkv: false`; they are fused
        into this model's Wqkv (rows [q | k | v]) before transformers loads the state dict.
        """
        folder = pretrained_model_name_or_path
        if isinstance(folder, (str, os.PathLike)) and "state_dict" not in kwargs and folder_has_split_qkv(str(folder)):
            config = kwargs.pop("config", None) or cls.config_class.from_pretrained(folder)
            state = fuse_split_qkv(read_folder_tensors(str(folder)))
            return super().from_pretrained(None, *args, config=config, state_dict=state, **kwargs)
        return super().from_pretrained(folder, *args, **kwargs)

    # ------------------------------------------------------------- parallelism hooks
    def fsdp_wrap_fn(self, module: nn.Module) -> bool:
        return isinstance(module, MPTBlock)

    def activation_checkpointing_fn(self, module: nn.Module) -> bool:
        # With ac_every_n_blocks the model checkpoints its own blocks in forward; wrapping them
        # again (fsdp_config.activation_checkpointing) would recompute twice.
        return isinstance(module, MPTBlock) and not self.config.ac_every_n_blocks

    def param_init_fn(self, module: nn.Module) -> None:
        """Initialise only `module`'s direct parameters (composer's meta init calls this per module)."""
        init_module_(module, self.config)

    # ------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """(Re)initialise every parameter by MPT's scheme (deterministic given torch.manual_seed).

        Runs at the end of a CPU/GPU build (via post_init); call it yourself after `to_empty()`
        from a meta build. On meta tensors it does nothing.
        """
        for module in self.modules():
            init_module_(module, self.config)

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' hook: from_pretrained uses it for weights missing from a checkpoint.
        init_module_(module, self.config)

    def _materialize_and_init(self) -> None:
        """End of __init__: modules were built on meta; allocate on init_device and initialise.

        Building on meta first means a CPU/GPU build draws each weight once (no throwaway default
        init of nn.Linear), and gives the same weights as a meta build + to_empty + init_weights
        under the same seed. Inside transformers' from_pretrained (its no_init_weights context) the
        weights stay on meta: the checkpoint fills them.
        """
        if self.config.init_device != "meta" and getattr(hf_modeling_utils, "_init_weights", True):
            self.to_empty(device=self.config.init_device)
        self.post_init()


class MPTModel(MPTPreTrainedModel):
    def __init__(self, config: MPTConfig, *, post_init: bool = True):
        super().__init__(config)
        with torch.device("meta"):
            self.wte = nn.Embedding(config.vocab_size, config.d_model)
            self.wpe = nn.Embedding(config.max_seq_len, config.d_model) if config.learned_pos_emb else None
            self.emb_drop = nn.Dropout(config.emb_pdrop)
            self.blocks = nn.ModuleList(MPTBlock(config, i) for i in range(config.n_layers))
            self.norm_f = build_norm(config.norm_type, config.d_model, config.norm_eps, config.no_bias)
        self._attn_cache = AttentionCache()
        if post_init:  # MPTForCausalLM materialises and initialises the whole model once instead
            self._materialize_and_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.wte = value

    def checkpointed_blocks(self) -> int:
        """How many blocks forward() recomputes in backward (ac_every_n_blocks; 0 = none)."""
        n = self.config.ac_every_n_blocks
        return len(range(0, self.config.n_layers, n)) if n else 0

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        sequence_id: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        use_cache: Optional[bool] = None,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        return_dict: Optional[bool] = None,
        cache: Optional[Cache] = None,
    ) -> BaseModelOutputWithPast:
        cfg = self.config
        cache = _kv_cache(cache, past_key_values)
        if cache is None and (cfg.use_cache if use_cache is None else use_cache):
            cache = DynamicCache()
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.wte(input_ids) if inputs_embeds is None else inputs_embeds
        batch, seq = x.shape[:2]
        past_len = cache.get_seq_length() if cache is not None else 0
        if (cfg.attn_config["attn_uses_sequence_id"] and self.training and sequence_id is None):
            raise ValueError("attn_uses_sequence_id is on: training batches must carry sequence_id")

        if self.wpe is not None:
            if past_len + seq > cfg.max_seq_len:
                raise ValueError(
                    f"sequence length {past_len + seq} exceeds max_seq_len {cfg.max_seq_len} "
                    "of the learned position embeddings, which have no positions past it; shorten the input "
                    "(ALiBi models, attn_config.alibi, run past max_seq_len)")
            if attention_mask is not None:
                # Left padding: number the real tokens from 0 so positions match unpadded inputs.
                pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, past_len:]
            else:
                pos = torch.arange(past_len, past_len + seq, device=x.device)[None]
            x = x + self.wpe(pos)
        if cfg.embedding_fraction < 1:
            # Scale only the gradient reaching the embeddings (GLM-130B's stability trick).
            x = x * cfg.embedding_fraction + x.detach() * (1 - cfg.embedding_fraction)
        x = self.emb_drop(x)

        device_type = x.device.type
        compute_dtype = (torch.get_autocast_dtype(device_type)
                         if torch.is_autocast_enabled(device_type) else x.dtype)
        attn_inputs = prepare_attention(cfg, seq, past_len, attention_mask, sequence_id,
                                        dtype=compute_dtype, device=x.device, cache=self._attn_cache)

        hidden_states = [] if output_hidden_states else None
        ac_every = cfg.ac_every_n_blocks if self.training and torch.is_grad_enabled() else 0
        for i, block in enumerate(self.blocks):
            if hidden_states is not None:
                hidden_states.append(x)
            if ac_every and i % ac_every == 0 and cache is None:
                # Keep only this block's input; recompute its activations in backward. (Not with a
                # cache: the recomputation would append the keys and values a second time.)
                x = checkpoint(block, x, attn_inputs, use_reentrant=False)
            else:
                x = block(x, attn_inputs, cache)
        x = self.norm_f(x)
        if hidden_states is not None:
            hidden_states.append(x)
        return BaseModelOutputWithPast(
            last_hidden_state=x,
            hidden_states=tuple(hidden_states) if hidden_states is not None else None,
            **{CACHE_NAME: cache},
        )


class MPTForCausalLM(MPTPreTrainedModel, GenerationMixin):
    def __init__(self, config: MPTConfig):
        super().__init__(config)
        # Built on meta, then allocated on init_device unless that is 'meta' (FSDP then
        # materialises each shard and calls param_init_fn on it).
        with torch.device("meta"):
            self.transformer = MPTModel(config, post_init=False)
            self.lm_head = (None if config.tie_word_embeddings
                            else nn.Linear(config.d_model, config.vocab_size, bias=False))
        scale = config.logit_scale
        self.logit_scale = config.d_model ** -0.5 if scale == "inv_sqrt_d_model" else scale
        # How forward computes the loss when given labels (set by the composer wrapper from
        # `model.loss_fn`): 'torch_crossentropy' from full logits, or 'chunked_crossentropy' from
        # the hidden states without full logits (forward then returns logits=None).
        self.loss_fn = "torch_crossentropy"
        self._materialize_and_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.wte

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.wte = value

    def get_output_embeddings(self) -> Optional[nn.Linear]:
        return self.lm_head  # None when tied: logits come straight from wte.weight

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: Optional[torch.LongTensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        sequence_id: Optional[torch.LongTensor] = None,
        labels: Optional[torch.LongTensor] = None,
        past_key_values: Optional[Cache] = None,
        use_cache: Optional[bool] = None,
        return_dict: Optional[bool] = True,
        inputs_embeds: Optional[torch.Tensor] = None,
        output_hidden_states: Optional[bool] = None,
        output_attentions: Optional[bool] = None,
        cache: Optional[Cache] = None,
    ) -> CausalLMOutputWithPast:
        if output_attentions:
            raise ValueError("output_attentions is not supported (attention runs in fused SDPA)")
        out = self.transformer(
            input_ids=input_ids, attention_mask=attention_mask, sequence_id=sequence_id,
            cache=_kv_cache(cache, past_key_values), use_cache=use_cache, inputs_embeds=inputs_embeds,
            output_hidden_states=output_hidden_states,
        )
        h = out.last_hidden_state
        weight = self.transformer.wte.weight if self.lm_head is None else self.lm_head.weight
        if labels is not None and self.loss_fn == "chunked_crossentropy":
            loss = chunked_causal_lm_loss(h, weight, labels, self.logit_scale)
            logits = None
        else:
            logits = F.linear(h, weight)
            if self.logit_scale is not None:
                logits = logits * self.logit_scale
            loss = causal_lm_loss(logits, labels) if labels is not None else None
        result = CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=out.hidden_states,
                                        **{CACHE_NAME: getattr(out, CACHE_NAME)})
        return result if return_dict is not False else result.to_tuple()

    # ------------------------------------------------------------- generation
    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      use_cache=None, cache=None, **kwargs) -> dict:
        # With a cache, only the tokens it has not seen go through the model; the attention mask
        # still covers past + new tokens. Beam search reorders the cache itself (Cache.reorder_cache).
        cache = _kv_cache(cache, past_key_values)
        if cache is not None:
            input_ids = input_ids[:, cache.get_seq_length():]
        return {"input_ids": input_ids, "attention_mask": attention_mask, CACHE_NAME: cache,
                "use_cache": use_cache}
