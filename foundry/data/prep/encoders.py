"""Which encoder a conversion runs (tiktoken's BPE or the Hugging Face tokenizer), and what workers load.

`--encoder auto` picks fast_bpe when it reproduces the tokenizer (a GPT-2/GPT-NeoX-style byte-level
BPE), else the tokenizer itself; the spec is what each worker process rebuilds the tokenizer from,
and its fingerprint changes whenever the tokenization would (so a restarted conversion can tell).
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

from foundry.data.errors import DataError

if TYPE_CHECKING:  # transformers is not imported at run time: conversion starts in a blink
    from transformers import PreTrainedTokenizerBase

__all__ = ['ENCODERS', 'SMALL_INPUT_BYTES', 'choose_encoder']

ENCODERS = ('auto', 'hf', 'fast_bpe')
# Below this much input the fast_bpe encoder runs in this process, not a process per core.
SMALL_INPUT_BYTES = 4 << 20


def choose_encoder(requested: str, spec: tuple[str, Any]) -> tuple[str, str]:
    """('fast_bpe' or 'hf', why), for --encoder auto|hf|fast_bpe and this tokenizer."""
    from foundry.data.prep.fast_bpe import FastBPE

    if requested not in ENCODERS:
        raise DataError(f'--encoder must be one of {", ".join(ENCODERS)}, got {requested!r}.')
    if requested == 'hf':
        return 'hf', 'the Hugging Face tokenizer, as asked by --encoder hf'
    reason = FastBPE.why_not(spec[1]) if spec[0] == 'json' else 'it is not a fast tokenizer (tokenizer.json)'
    if requested == 'fast_bpe':
        if reason:
            raise DataError(f'--encoder fast_bpe cannot encode with this tokenizer: {reason}. Use --encoder hf.')
        return 'fast_bpe', "tiktoken's BPE, as asked by --encoder fast_bpe; checked against the tokenizer as it goes"
    if reason:
        return 'hf', f'the Hugging Face tokenizer: the fast path cannot reproduce this one ({reason})'
    return 'fast_bpe', ("tiktoken's BPE: this tokenizer is a byte-level BPE it reproduces, several times faster; "
                        'checked against the tokenizer on the first 64 documents and every 128th; '
                        '--encoder hf to use the tokenizer itself')


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)['input_ids'])


def _tokenizer_spec(tokenizer: PreTrainedTokenizerBase) -> tuple[tuple[str, Any], str]:
    """What workers load, and a fingerprint that changes whenever the tokenization would."""
    if getattr(tokenizer, 'is_fast', False):
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        # transformers may leave truncation/padding switched on; conversion wants neither.
        spec['truncation'] = spec['padding'] = None
        text = json.dumps(spec)
        return ('json', text), 'sha256:' + hashlib.sha256(text.encode()).hexdigest()[:16]
    ident = f'{type(tokenizer).__name__}:{getattr(tokenizer, "name_or_path", "")}:{len(tokenizer)}'
    return ('object', tokenizer), ident
