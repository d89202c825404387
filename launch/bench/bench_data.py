"""Inputs both trainers of the benchmark read: a local tokenizer folder and random-token MDS shards.

Nothing here comes from the hub (this machine reaches only PyPI): the tokenizer is a word-level
`PreTrainedTokenizerFast` with exactly `vocab_size` tokens (ids 0..vocab_size-1, eos = pad = 0),
saved with save_pretrained so `AutoTokenizer.from_pretrained(folder)` loads it in both venvs.
The data is `n_samples` samples of `seq_len` uniformly random token ids, stored the way
llm-foundry's converters store them (`tokens: ndarray:int32`), one split `train`. Random tokens
contain eos (id 0) at random places, which only matters with attn_uses_sequence_id (off here).
Everything is cached under .bench/train_bench/ by its parameters.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / ".bench" / "train_bench"


def tokenizer_dir(vocab_size: int) -> Path:
    """A folder holding a tokenizer of exactly `vocab_size` tokens (built once)."""
    out = ROOT / f"tokenizer-v{vocab_size}"
    if (out / "tokenizer.json").exists():
        return out
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, **{f"t{i}": i for i in range(1, vocab_size)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", model_max_length=1 << 20)
    assert len(fast) == vocab_size
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out))
    return out


def random_mds(vocab_size: int, seq_len: int, n_samples: int, seed: int = 0) -> Path:
    """Local MDS folder with split `train` of random int32 token samples (built once)."""
    out = ROOT / f"mds-v{vocab_size}-s{seq_len}-n{n_samples}-seed{seed}"
    split = out / "train"
    if (split / "index.json").exists():
        return out
    from streaming import MDSWriter

    rng = np.random.default_rng(seed)
    split.mkdir(parents=True, exist_ok=True)
    with MDSWriter(out=str(split), columns={"tokens": "ndarray:int32"}, compression=None,
                   size_limit=1 << 26) as writer:
        for _ in range(n_samples):
            writer.write({"tokens": rng.integers(0, vocab_size, seq_len, dtype=np.int32)})
    (out / "bench.json").write_text(json.dumps({"vocab_size": vocab_size, "seq_len": seq_len,
                                                "n_samples": n_samples, "seed": seed}))
    return out
