"""A tiny byte-level BPE tokenizer (GPT-2 style), trained in memory: what GGUF export and generate need."""

from __future__ import annotations


def bpe_tokenizer():
    """A byte-level BPE (GPT-2 style) trained here on a few sentences: 296 ids, fewer than the model's 320 rows."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=['<|endoftext|>'], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    raw.train_from_iterator(['the quick brown fox jumps over the lazy dog, again and again.'] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=raw, eos_token='<|endoftext|>', bos_token='<|endoftext|>',
                                   unk_token='<|endoftext|>')
