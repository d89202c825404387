"""Build a Hugging Face tokenizer from a hub name, a local directory, or a bare tokenizer.json.

A bare tokenizer.json (what the `tokenizers` library saves, and what the demo corpus trains)
carries no tokenizer_config.json, so nothing tells transformers which token is eos/bos/pad.
We fill those in from well-known special-token spellings so that such a file is a first-class
tokenizer for conversion and training, not a second-class fallback.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

from foundry.data.errors import DataError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

__all__ = ['build_tokenizer', 'looks_like_local_path', 'TokenizerFile', 'load_for_conversion']

# Spellings of special tokens used by common tokenizer families, in order of preference.
_EOS_CANDIDATES = ('<|endoftext|>', '</s>', '<|end_of_text|>', '<eos>')
_BOS_CANDIDATES = ('<s>', '<|begin_of_text|>', '<bos>')
_UNK_CANDIDATES = ('<unk>', '[UNK]')
_PAD_CANDIDATES = ('<pad>', '[PAD]')

# GPT-2 / GPT-NeoX style tokenizers have one special token that plays every role; their
# published configs set bos = eos = unk = '<|endoftext|>'. We follow that convention.
_ALL_ROLES_TOKEN = '<|endoftext|>'

# Hub repo ids are "name" or "org/name" made of these characters.
_HUB_ID = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$')


def looks_like_local_path(name: str) -> bool:
    """Whether ``name`` is clearly meant as a filesystem path rather than a hub repo id."""
    if name.startswith(('/', './', '../', '~', '.\\')) or '\\' in name:
        return True
    if name.endswith('.json'):
        return True
    # "org/name" is a hub id; anything with more path components is a path.
    return not _HUB_ID.match(name)


def build_tokenizer(name: str, kwargs: dict[str, Any] | None = None) -> PreTrainedTokenizerBase:
    """Load a tokenizer.

    Args:
        name: a Hugging Face hub repo id (e.g. ``EleutherAI/gpt-neox-20b``), a local directory
            saved with ``save_pretrained``, or a path to a ``tokenizer.json`` file.
        kwargs: passed through to the tokenizer constructor (e.g. ``model_max_length``).

    Returns:
        A tokenizer whose ``pad_token`` is set (to eos when the tokenizer defines no pad),
        because batching needs a pad id even though padded positions are masked out.
    """
    if not isinstance(name, str) or not name:
        raise DataError(f'tokenizer name must be a non-empty string, got {name!r}. '
                        'Set tokenizer.name to a hub id, a directory, or a tokenizer.json path.')
    kwargs = dict(kwargs or {})
    path = os.path.expanduser(name)

    if os.path.isfile(path):
        tokenizer = _from_tokenizer_file(path, kwargs)
    elif os.path.isdir(path):
        bare = os.path.join(path, 'tokenizer.json')
        has_config = os.path.isfile(os.path.join(path, 'tokenizer_config.json'))
        if os.path.isfile(bare) and not has_config:
            # AutoTokenizer cannot pick a class without tokenizer_config.json; load the file.
            tokenizer = _from_tokenizer_file(bare, kwargs)
        elif _plain_fast_class(path):
            # Not AutoTokenizer: it also reads the folder's config.json, and transformers 5's own MptConfig
            # refuses foundry models it cannot express (grouped_query_attention) before the tokenizer loads.
            from transformers import PreTrainedTokenizerFast

            tokenizer = PreTrainedTokenizerFast.from_pretrained(path, **kwargs)
        else:
            tokenizer = _from_pretrained(path, kwargs, what='local directory')
    elif looks_like_local_path(name):
        raise DataError(f'tokenizer path {name!r} does not exist. Point tokenizer.name at an '
                        'existing tokenizer.json file or a directory saved with save_pretrained, '
                        'or use a Hugging Face hub id such as EleutherAI/gpt-neox-20b.')
    else:
        tokenizer = _from_pretrained(name, kwargs, what='Hugging Face hub id')

    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # Padded positions are excluded by attention_mask and labels=-100, so reusing eos is safe.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _plain_fast_class(folder: str) -> bool:
    """Whether the folder's tokenizer_config.json names the plain fast class (what foundry's runs save)."""
    import json

    try:
        with open(os.path.join(folder, 'tokenizer_config.json'), encoding='utf-8') as f:
            return json.load(f).get('tokenizer_class') in ('PreTrainedTokenizerFast', 'TokenizersBackend')
    except (OSError, ValueError):
        return False


def _from_pretrained(name: str, kwargs: dict[str, Any], what: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f'could not load tokenizer from {what} {name!r}: {first_line}. Check the '
                        'name and your network/HF_TOKEN, or use a local tokenizer.json path.') from err


def _from_tokenizer_file(path: str, kwargs: dict[str, Any]) -> PreTrainedTokenizerFast:
    from transformers import PreTrainedTokenizerFast

    try:
        tokenizer = PreTrainedTokenizerFast(tokenizer_file=path, **kwargs)
    except Exception as err:  # the Rust loader raises its own Exception type
        raise DataError(f'could not read tokenizer file {path!r}: {err}. It must be a '
                        'tokenizer.json written by the `tokenizers` library.') from err

    for role, token in _guess_roles(tokenizer.get_vocab()).items():
        # Explicit kwargs (e.g. eos_token='</s>') win over our guesses.
        if token is not None and role not in kwargs and getattr(tokenizer, role) is None:
            setattr(tokenizer, role, token)
    return tokenizer


def _guess_roles(vocab: dict[str, int]) -> dict[str, str | None]:
    """eos/bos/unk/pad tokens of a bare tokenizer.json, from well-known spellings."""
    roles = {
        'eos_token': _first_present(_EOS_CANDIDATES, vocab),
        'bos_token': _first_present(_BOS_CANDIDATES, vocab),
        'unk_token': _first_present(_UNK_CANDIDATES, vocab),
        'pad_token': _first_present(_PAD_CANDIDATES, vocab),
    }
    if roles['eos_token'] == _ALL_ROLES_TOKEN:
        roles['bos_token'] = roles['bos_token'] or _ALL_ROLES_TOKEN
        roles['unk_token'] = roles['unk_token'] or _ALL_ROLES_TOKEN
    return roles


def _first_present(candidates: tuple[str, ...], vocab: dict[str, int]) -> str | None:
    for token in candidates:
        if token in vocab:
            return token
    return None


class TokenizerFile:
    """A tokenizer.json loaded with the Rust ``tokenizers`` library alone.

    Conversion needs only ids, the special-token roles and the size; loading through
    transformers costs seconds of imports on every conversion. The roles are guessed exactly as
    :func:`build_tokenizer` guesses them for a bare tokenizer.json (the tests check both agree),
    so the two are interchangeable for ``foundry.data.prep.convert``.
    """

    is_fast = True

    def __init__(self, path: str) -> None:
        from tokenizers import Tokenizer

        try:
            self.backend_tokenizer = Tokenizer.from_file(path)
        except Exception as err:  # the Rust loader raises its own Exception type
            raise DataError(f'could not read tokenizer file {path!r}: {err}. It must be a '
                            'tokenizer.json written by the `tokenizers` library.') from err
        self.name_or_path = path
        roles = _guess_roles(self.backend_tokenizer.get_vocab(with_added_tokens=True))
        self.eos_token, self.bos_token = roles['eos_token'], roles['bos_token']
        self.unk_token = roles['unk_token']
        self.pad_token = roles['pad_token'] or self.eos_token  # as build_tokenizer does
        self._size = self.backend_tokenizer.get_vocab_size(with_added_tokens=True)

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend_tokenizer.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    def __len__(self) -> int:
        return self._size

    def __call__(self, text, add_special_tokens: bool = True, **_: Any) -> dict:
        if isinstance(text, str):
            ids = self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        else:
            ids = [e.ids for e in self.backend_tokenizer.encode_batch(
                list(text), add_special_tokens=add_special_tokens)]
        return {'input_ids': ids}


def load_for_conversion(name: str, kwargs: dict[str, Any] | None = None):
    """A bare tokenizer.json file loads without transformers; everything else through it."""
    path = os.path.expanduser(name) if isinstance(name, str) else name
    if not kwargs and isinstance(path, str) and os.path.isfile(path):
        return TokenizerFile(path)
    return build_tokenizer(name, kwargs)


# What a causal LM's forward takes. PreTrainedTokenizerFast's default adds token_type_ids, which
# `model.generate(**tok(prompt, return_tensors='pt'))` then refuses as an unused model argument.
CAUSAL_LM_INPUT_NAMES = ['input_ids', 'attention_mask']


def save_tokenizer(tokenizer, folder: str) -> None:
    """`tokenizer.save_pretrained(folder)`, loadable by transformers 4.x as well as 5, for a causal LM.

    transformers 5 records a plain tokenizers-backed tokenizer (what a tokenizer.json loads as) as
    `"tokenizer_class": "TokenizersBackend"`, a class 4.x does not have; in 5 that class is also
    exported as `PreTrainedTokenizerFast`, the name 4.x knows, so the folder records that one.
    The folder also records `model_input_names` without token_type_ids (see CAUSAL_LM_INPUT_NAMES).
    """
    tokenizer.save_pretrained(folder)
    path = os.path.join(folder, 'tokenizer_config.json')
    if not os.path.isfile(path):
        return
    with open(path) as f:
        config = json.load(f)
    if config.get('tokenizer_class') == 'TokenizersBackend':
        config['tokenizer_class'] = 'PreTrainedTokenizerFast'
    config['model_input_names'] = CAUSAL_LM_INPUT_NAMES
    with open(path, 'w') as f:
        json.dump(config, f, indent=2, ensure_ascii=False)
