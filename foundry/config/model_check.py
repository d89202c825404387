"""The `model:` section checked by MPTConfig itself, its ValueErrors rendered as config errors.

The model's rules (positive sizes, n_heads dividing d_model, attention implementations, init
schemes, ...) live once, in `MPTConfig.__init__`. This module builds that config from the YAML
before launch and turns a refusal into a one-line config error that names the `model.*` key, and
checks the one rule MPTConfig cannot see: the vocabulary against the tokenizer's.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Any, Optional

from foundry.config.errors import ConfigError


def check_model_config(model: dict[str, Any]) -> Any:
    """The MPTConfig of a YAML `model:` section (name and loss_fn removed), or a ConfigError naming the key."""
    from foundry.models.pretrained import model_config_from_section

    kwargs = {k: v for k, v in model.items() if k not in ('name', 'loss_fn')}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # its warnings are repeated when the model is built
            # Reads model.pretrained_model_name_or_path's config.json when set (YAML keys override it).
            return model_config_from_section(kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(render_model_error(str(e), kwargs)) from None


def render_model_error(message: str, model: dict[str, Any]) -> str:
    """`model.KEY: message` for the key the message is about (first one named), one line."""
    message = ' '.join(message.split())
    key = _key_named(message, model)
    if key is None:
        return f'`model`: {message}'
    if key in message:  # MPTConfig already spelled the full key: mark it rather than repeat it
        return message.replace(f'`{key}`', key).replace(key, f'`{key}`', 1)
    return f'`{key}`: {message}'


def _key_named(message: str, model: dict[str, Any]) -> Optional[str]:
    """The model key named first in `message` (`attn_config.x` for nested keys), else None."""
    from foundry.config.model_keys import model_key_types
    from foundry.models.mpt.configuration import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS

    candidates = {k: k for k in model_key_types()}
    for section, defaults in (('attn_config', ATTN_CONFIG_DEFAULTS), ('init_config', INIT_CONFIG_DEFAULTS)):
        candidates.update({k: f'{section}.{k}' for k in defaults if k not in ('name', 'verbose')})
    candidates['init_config.name'] = 'init_config.name'
    dotted = re.search(r'(?<![\w.])(attn_config|init_config)\.(\w+)', message)
    if dotted and dotted.group(0) in candidates.values():
        return f'model.{dotted.group(0)}'
    found = []
    for bare, full in candidates.items():
        match = re.search(rf'(?<!\w){re.escape(bare)}(?!\w)', message)
        if match:
            found.append((match.start(), -len(bare), full))
    return f'model.{min(found)[2]}' if found else None


def check_vocab_against_tokenizer(model: dict[str, Any], tokenizer_name: str) -> None:
    """model.vocab_size must hold every token id; read cheaply from a local tokenizer.json (hub names at build)."""
    from foundry.data.tokenizer import looks_like_local_path

    if not isinstance(tokenizer_name, str) or not looks_like_local_path(tokenizer_name):
        return
    path = tokenizer_name
    if os.path.isdir(path):
        path = os.path.join(path, 'tokenizer.json')
    if not os.path.isfile(path):
        return  # a missing tokenizer is reported when it is built (`foundry info` and plan need no files)
    size = _tokenizer_json_size(path)
    vocab = model.get('vocab_size', 50432)
    if size is not None and isinstance(vocab, int) and size > vocab:
        raise ConfigError(f'`model.vocab_size` is {vocab} but the tokenizer {tokenizer_name} has {size} tokens; token '
                          f'ids past the embedding table would crash training: set model.vocab_size to at least {size} '
                          f'(a multiple of 64 or 128 is faster)')


def _tokenizer_json_size(path: str) -> Optional[int]:
    """Ids in a tokenizer.json (the vocabulary and added tokens), as len(tokenizer) counts them."""
    try:
        with open(path, encoding='utf-8') as f:
            data = json.load(f)
        ids = set((data.get('model') or {}).get('vocab', {}).values())
        ids |= {t['id'] for t in data.get('added_tokens') or []}
        return max(ids) + 1 if ids else None
    except (OSError, ValueError, AttributeError, TypeError, KeyError):
        return None  # not ours to judge here; building the tokenizer reports it
