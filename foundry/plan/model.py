"""The shape of the model a config describes, and its parameter counts, without building it.

Counts follow foundry's MPT layout (foundry/models/mpt): per block norm_1, Wqkv (d x (d + 2*kv_dim)),
out_proj (d x d), norm_2, up_proj (d x ffn), down_proj (ffn x d), optional q_ln/k_ln; then the token
table wte (vocab x d), an optional learned position table, norm_f and, when untied, lm_head.
Biases only when `no_bias` is false. tests/plan checks these against a meta-device build.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from foundry import FoundryWarning
from foundry.config.errors import ConfigError
from foundry.config.schema import TrainConfig

_NOT_MODEL_ARGS = ('name', 'loss_fn')


@dataclass(frozen=True)
class ModelShape:
    d_model: int
    n_layers: int
    n_heads: int
    kv_n_heads: int
    ffn_hidden_size: int
    vocab_size: int
    max_seq_len: int
    seq_len: int  # the training sequence length (the data loader's, else the model's)
    no_bias: bool
    norm_type: str
    qk_ln: bool
    alibi: bool
    attn_uses_sequence_id: bool
    learned_pos_emb: bool
    tie_word_embeddings: bool
    dropout: bool  # any residual dropout: a 1-byte mask per dropped tensor is kept for backward
    # Fields the memory model reads beyond the parameter layout (defaults: foundry's defaults).
    attn_impl: str = 'torch'  # only 'torch' (SDPA) materialises an additive ALiBi/causal bias
    chunked_loss: bool = True  # loss_fn chunked_crossentropy / fused_crossentropy: no full-vocab logits
    ac_every_n_blocks: int = 0  # the model's own activation checkpointing (every n-th block; 0 = off)

    @property
    def own_checkpointed_blocks(self) -> int:
        """Blocks the model itself recomputes (foundry/models/mpt: blocks 0, n, 2n, ...)."""
        n = self.ac_every_n_blocks
        return len(range(0, self.n_layers, n)) if n else 0

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.kv_n_heads * self.head_dim

    def _norm(self, width: int, norm_type: str = '') -> int:
        has_bias = not self.no_bias and 'rmsnorm' not in (norm_type or self.norm_type)
        return width * (2 if has_bias else 1)

    def _linear(self, n_in: int, n_out: int) -> int:
        return n_in * n_out + (0 if self.no_bias else n_out)

    @property
    def block_parameters(self) -> int:
        d, qkv = self.d_model, self.d_model + 2 * self.kv_dim
        n = self._norm(d) * 2 + self._linear(d, qkv) + self._linear(d, d)
        n += self._linear(d, self.ffn_hidden_size) + self._linear(self.ffn_hidden_size, d)
        if self.qk_ln:
            n += self._norm(d, 'layernorm') + self._norm(self.kv_dim, 'layernorm')  # MPT: always LayerNorm
        return n

    @property
    def root_parameters(self) -> int:
        """Everything outside the blocks: embeddings, final norm, untied head (FSDP's root unit)."""
        n = self.vocab_size * self.d_model + self._norm(self.d_model)
        if self.learned_pos_emb:
            n += self.max_seq_len * self.d_model
        if not self.tie_word_embeddings:
            n += self.vocab_size * self.d_model
        return n

    @property
    def parameters(self) -> int:
        """Total trainable parameters, a tied table counted once."""
        return self.n_layers * self.block_parameters + self.root_parameters

    @property
    def matmul_parameters(self) -> int:
        """N of the FLOPs formula: non-embedding parameters + the d_model x vocab output matmul."""
        n = self.n_layers * self.block_parameters + self._norm(self.d_model)
        return n + self.vocab_size * self.d_model


def train_seq_len(cfg: TrainConfig, model_max_seq_len: int) -> int:
    dataset = (cfg.train_loader or {}).get('dataset') or {}
    return int(dataset.get('max_seq_len') or cfg.max_seq_len or model_max_seq_len)


def _target_attn_impl(cfg: TrainConfig, c) -> str:
    """The kernel the run gets on the planned GPUs, not on this machine.

    MPTConfig resolves 'flash'/'triton' against the local install (SDPA on a CPU without
    flash-attn); on the target, flash-attn or its flex fallback runs, neither of which builds a
    bias tensor. With attention dropout and no flash-attn the fallback is SDPA, so plan for that.
    """
    requested = str((cfg.model.get('attn_config') or {}).get('attn_impl') or c.attn_config.get('attn_impl') or 'torch')
    if requested in ('flash', 'triton'):
        return 'torch' if c.attn_config.get('attn_pdrop') else 'flash'
    return str(c.attn_config.get('attn_impl') or 'torch')


def model_shape(cfg: TrainConfig) -> ModelShape:
    """The ModelShape of `cfg.model`, with MPTConfig's validation and defaults."""
    from foundry.models.mpt.loss import DEFAULT_LOSS_FN
    from foundry.models.pretrained import model_config_from_section

    args = {k: v for k, v in cfg.model.items() if k not in _NOT_MODEL_ARGS}
    args['init_device'] = 'meta'
    try:
        with warnings.catch_warnings():  # the flash-attn fallback warning speaks of this machine, not the target
            warnings.simplefilter('ignore', FoundryWarning)
            c = model_config_from_section(args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f'model: {e}') from None
    a = c.attn_config
    return ModelShape(
        d_model=c.d_model,
        n_layers=c.n_layers,
        n_heads=c.n_heads,
        kv_n_heads=int(a.get('kv_n_heads') or c.n_heads),
        ffn_hidden_size=int(c.d_model * c.expansion_ratio),
        vocab_size=c.vocab_size,
        max_seq_len=c.max_seq_len,
        seq_len=train_seq_len(cfg, c.max_seq_len),
        no_bias=bool(c.no_bias),
        norm_type=c.norm_type,
        qk_ln=bool(a.get('qk_ln')),
        alibi=bool(a.get('alibi')),
        attn_uses_sequence_id=bool(a.get('attn_uses_sequence_id')),
        learned_pos_emb=bool(c.learned_pos_emb),
        tie_word_embeddings=bool(c.tie_word_embeddings),
        dropout=bool(c.resid_pdrop),
        attn_impl=_target_attn_impl(cfg, c),
        chunked_loss=cfg.model.get('loss_fn', DEFAULT_LOSS_FN) != 'torch_crossentropy',
        ac_every_n_blocks=int(getattr(c, 'ac_every_n_blocks', 0) or 0),
    )
