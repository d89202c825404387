"""What llama.cpp's MPT graph would compute differently from foundry's model, or crash on: refused before writing.

llama.cpp (src/models/mpt.cpp, llama-cpp-python 0.3.36) builds every MPT as: token embedding (+ a
learned position table if the file has one), then per block LayerNorm -> fused Wqkv (+ bias) ->
clamp to +-clamp_kqv -> attention with scale 1/sqrt(head_dim) and ALiBi slopes from max_alibi_bias
-> out projection (+ bias) -> residual, LayerNorm -> up -> GELU -> down -> residual; a final
LayerNorm and the output matrix (the token embedding when absent). Width, epsilon, head counts and
biases come from the file, so those can be anything. What the graph hard-codes cannot:

  norm_type rmsnorm            LayerNorm is always applied (mean-centred): loads, computes another model
  softmax_scale                1/sqrt(head_dim) is fixed
  qk_ln                        aborts (GGML_ASSERT in ggml_reshape_2d on a strided view), and the key
                               norm is created n_embd wide, which is wrong under GQA/MQA
  logit_scale                  the logits are never scaled
  a tokenizer llama.cpp cannot reproduce: anything but a byte-level BPE with the GPT-2 split pattern

One difference is accepted and measured instead: llama.cpp's CPU GELU is the tanh approximation
(read from an fp16 table) where MPT uses the exact GELU; launch/bench/gguf_parity.py shows the
logit gap it leaves (under 1e-3 of the largest logit on the test models).
"""

from __future__ import annotations

import json
import math
import os

FIX = 'export a Hugging Face folder instead (foundry export hf) and run it with transformers or foundry'


def model_problems(config) -> list[str]:
    """One line per feature of `config` (an MPTConfig) that llama.cpp's MPT graph computes differently."""
    attn = config.attn_config
    problems = []
    if 'rmsnorm' in config.norm_type:
        problems.append(f'norm_type {config.norm_type}: llama.cpp\'s MPT graph always applies LayerNorm, so the '
                        f'file would load and compute a different model')
    scale = attn.get('softmax_scale')
    default_scale = 1.0 / math.sqrt(config.head_dim)
    if scale is not None and not math.isclose(scale, default_scale, rel_tol=1e-6):
        problems.append(f'attn_config.softmax_scale {scale}: llama.cpp\'s MPT graph always scales attention by '
                        f'1/sqrt(head_dim) = {default_scale:.6g}')
    if attn.get('qk_ln'):
        problems.append('attn_config.qk_ln: llama.cpp\'s MPT graph aborts on query/key LayerNorm '
                        '(GGML_ASSERT(ggml_is_contiguous) in ggml_reshape_2d) and sizes the key norm for n_heads')
    if config.logit_scale is not None:
        problems.append(f'logit_scale {config.logit_scale}: llama.cpp\'s MPT graph does not scale the logits')
    return problems


def tokenizer_problems(tokenizer_dir: str, vocab_size: int) -> list[str]:
    """One line per way the tokenizer in `tokenizer_dir` would tokenize differently in llama.cpp ('gpt2' BPE)."""
    path = os.path.join(tokenizer_dir, 'tokenizer.json')
    if not os.path.isfile(path):
        return [f'no tokenizer.json in {tokenizer_dir}: llama.cpp needs a byte-level BPE tokenizer (a fast '
                f'tokenizer\'s tokenizer.json)']
    with open(path, encoding='utf-8') as f:
        spec = json.load(f)
    problems = []
    model = spec.get('model') or {}
    if model.get('type') != 'BPE':
        problems.append(f'tokenizer model {model.get("type")}: GGUF export writes byte-level BPE tokenizers only '
                        f'(llama.cpp\'s "gpt2" tokenizer)')
        return problems
    pre = spec.get('pre_tokenizer') or {}
    if pre.get('type') != 'ByteLevel' or not pre.get('use_regex', True):
        problems.append(f'tokenizer pre_tokenizer {_describe(pre)}: llama.cpp\'s "gpt2" tokenizer splits text with '
                        f'the GPT-2 pattern only (a ByteLevel pre-tokenizer with use_regex)')
    elif pre.get('add_prefix_space'):
        problems.append('tokenizer pre_tokenizer adds a prefix space: llama.cpp\'s "gpt2" tokenizer does not')
    normalizer = spec.get('normalizer')
    if normalizer is not None and normalizer.get('type') != 'NFC':
        # NFC (GPT-NeoX's) changes only text that is not already NFC; anything else changes ordinary text.
        problems.append(f'tokenizer normalizer {_describe(normalizer)}: llama.cpp\'s "gpt2" tokenizer does not '
                        f'normalize text')
    decoder = spec.get('decoder') or {}
    if decoder.get('type') != 'ByteLevel':
        problems.append(f'tokenizer decoder {_describe(decoder)}: llama.cpp decodes byte-level BPE only')
    ids = list((model.get('vocab') or {}).values()) + [t['id'] for t in spec.get('added_tokens') or []]
    if ids and max(ids) >= vocab_size:
        problems.append(f'the tokenizer has ids up to {max(ids)} but the model\'s vocab_size is {vocab_size}: '
                        f'llama.cpp needs one embedding row per token')
    return problems


def _describe(part: dict) -> str:
    kind = part.get('type', '?')
    inner = part.get('pretokenizers') or part.get('normalizers') or part.get('decoders')
    return f'{kind}({", ".join(p.get("type", "?") for p in inner)})' if inner else kind
