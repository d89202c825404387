"""Real checkpoint files for unit tests: torch DCP folders and torch.save files in Composer's layout."""

from __future__ import annotations

import os

import torch


def tiny_mpt_config(**overrides):
    from foundry.models.mpt.configuration import MPTConfig

    kwargs = dict(d_model=32, n_heads=2, n_layers=2, expansion_ratio=4, max_seq_len=32, vocab_size=128, no_bias=True,
                  attn_config={'attn_impl': 'torch', 'alibi': True})
    kwargs.update(overrides)
    return MPTConfig(**kwargs)


def tiny_mpt(seed: int = 0, **overrides):
    from foundry.models.mpt.modeling import MPTForCausalLM

    torch.manual_seed(seed)
    config = tiny_mpt_config(**overrides)
    model = MPTForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():  # random everywhere, so a tensor loaded into the wrong place shows
            p.normal_(0, 0.2)
    return model.eval()


def write_sharded(path: str, model_state: dict[str, torch.Tensor], extra: dict | None = None) -> str:
    """A Composer-layout sharded checkpoint (keys state.model.model.*) written by torch DCP, one process."""
    import torch.distributed.checkpoint as dcp

    state = {'state': {'model': {f'model.{k}': v for k, v in model_state.items()}, **(extra or {})}}
    dcp.save(state, checkpoint_id=path)
    return path


def write_full(path: str, model_state: dict[str, torch.Tensor]) -> str:
    """A Composer-layout full checkpoint: torch.save of {'state': {'model': {'model.<name>': tensor}}}."""
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    torch.save({'state': {'model': {f'model.{k}': v for k, v in model_state.items()}, 'timestamp': {}}}, path)
    return path


def write_meta(save_folder: str, config) -> str:
    """The run's hf_meta (config + a tokenizer) as a foundry run writes it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f't{i}': i for i in range(config.vocab_size - 1)}
    vocab['<|endoftext|>'] = config.vocab_size - 1
    raw = Tokenizer(models.WordLevel(vocab=vocab, unk_token='t0'))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token='<|endoftext|>')
    from foundry.checkpoint.meta import write_run_meta

    return write_run_meta(save_folder, config, tokenizer)


def tokenizer_files(tokenizer_dir: str) -> set[str]:
    """The files this transformers writes for the tokenizer in `tokenizer_dir` (4.51 also writes
    special_tokens_map.json, 5 does not)."""
    import tempfile

    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
        return set(os.listdir(tmp))


def truncate(path: str, keep_fraction: float = 0.5) -> None:
    size = os.path.getsize(path)
    with open(path, 'r+b') as f:
        f.truncate(int(size * keep_fraction))
