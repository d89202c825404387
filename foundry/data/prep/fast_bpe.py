r"""A faster encoder for byte-level BPE tokenizers (the GPT-2 / GPT-NeoX family), used by default.

Hugging Face ``tokenizers`` spends most of a conversion's CPU time building ``Encoding``
objects around its BPE. ``tiktoken`` runs the same algorithm on the same vocabulary several
times faster. This module rebuilds a tokenizer.json's byte-level BPE as a tiktoken encoding and
reproduces the rest of the Hugging Face pipeline around it:

* Unicode normalization (NFC/NFD/NFKC/NFKD, the only normalizers accepted) with ``unicodedata``,
  skipped for ASCII text, on which it is the identity;
* added tokens (``<|endoftext|>``, GPT-NeoX's runs of spaces, ...) are split out of the text
  first, leftmost-longest, as the Hugging Face tokenizer does, and the text between them is
  pre-tokenized and encoded separately;
* pre-tokenization with the GPT-2 regex, which ``ByteLevel(use_regex=True)`` also uses.

Whether a tokenizer qualifies is checked structurally (:meth:`FastBPE.from_tokenizer_json`
says why not). Equal results are then an empirical property, not a theorem: tiktoken merges the
adjacent pair whose *merged token* ranks lowest, Hugging Face the pair whose *merge* ranks
lowest; with merges whose results rank in merge order (checked) the two agree on natural text,
as tiktoken's GPT-2 encoding agrees with GPT-2's original encoder. So the converter checks it as
it goes (``Encoder`` re-encodes the first 64 documents and every 128th after them with the
Hugging Face tokenizer and stops on the first difference). The converters use it whenever a
tokenizer qualifies (``--encoder auto``, the default); ``--encoder hf`` turns it off.

Long documents (code files, books, papers of hundreds of kilobytes) are cut at *safe points*
before encoding: a single space between a non-space character and a letter. There the GPT-2
pre-tokenizer always ends one pre-token (a letter, digit or punctuation run never takes in a
following space) and starts the next (` ?\p{L}+` takes the space and the word), and the piece
before the cut ends without whitespace, so the `\s+(?!\S)` look-ahead never looks across it. BPE
runs within pre-tokens, so the ids of the pieces, concatenated, are the ids of the whole text;
the pieces are encoded on a thread per core (tiktoken releases the GIL), and no single call holds
a whole book's pre-tokens in memory.
"""

from __future__ import annotations

import functools
import json
import re
import unicodedata
from typing import Any

from foundry.data.errors import DataError

__all__ = ['FastBPE', 'GPT2_PATTERN']

# The pre-tokenizer regex of GPT-2 (ByteLevel with use_regex=True in tokenizers).
GPT2_PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|"""
                r"""\s+""")
_NORMALIZERS = {'NFC', 'NFD', 'NFKC', 'NFKD'}
# Pieces longer than this are cut at safe points into segments of about SEGMENT_CHARS.
LONG_PIECE_CHARS = 1 << 17
SEGMENT_CHARS = 1 << 15


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted (char -> byte)."""
    keep = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + \
        list(range(ord('®'), ord('ÿ') + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(keep, chars)}


# Every byte that can occur in UTF-8 text (0xC0, 0xC1 and 0xF5-0xFF never do).
_UTF8_BYTES = set(range(0x00, 0xC0)) | set(range(0xC2, 0xF5))


class FastBPE:
    """tiktoken-backed encoder equivalent to one byte-level BPE tokenizer.json."""

    def __init__(self, ranks: dict[bytes, int], added: dict[str, int], forms: list[str]) -> None:
        import tiktoken

        self._encoding = tiktoken.Encoding('foundry-fast-bpe', pat_str=GPT2_PATTERN,
                                           mergeable_ranks=ranks, special_tokens={})
        self._added = added
        self._split = (re.compile('|'.join(re.escape(t) for t in sorted(added, key=len,
                                                                         reverse=True)))
                       if added else None)
        self._forms = forms
        self._pool = None

    @staticmethod
    def why_not(text: str) -> str | None:
        """Why a tokenizer.json cannot be encoded by this path (None: it can)."""
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            return 'the tiktoken package is not installed'
        return _incompatibility_of(text)

    @classmethod
    def from_tokenizer_json(cls, text: str) -> 'FastBPE':
        """Build it, or raise DataError saying why this tokenizer does not qualify."""
        try:
            import tiktoken  # noqa: F401
        except ImportError:
            raise DataError('--encoder fast_bpe needs the tiktoken package (pip install tiktoken).') \
                from None
        spec = json.loads(text)
        reason = _incompatibility_of(text)
        if reason:
            raise DataError(f'--encoder fast_bpe cannot encode with this tokenizer: {reason}. Use '
                            '--encoder hf.')
        alphabet = _byte_alphabet()
        added_ids = {a['id'] for a in spec.get('added_tokens') or []}
        ranks: dict[bytes, int] = {}
        for token, index in spec['model']['vocab'].items():
            if index in added_ids:
                continue
            try:
                ranks[bytes(alphabet[c] for c in token)] = index
            except KeyError:
                raise DataError(f'--encoder fast_bpe cannot encode with this tokenizer: vocabulary '
                                f'entry {token!r} is not byte-level. Use --encoder hf.') from None
        missing = sorted(b for b in _UTF8_BYTES if bytes([b]) not in ranks)
        if missing:
            raise DataError(f'--encoder fast_bpe cannot encode with this tokenizer: bytes '
                            f'{[hex(b) for b in missing[:8]]} have no token of their own. '
                            'Use --encoder hf.')
        added = {a['content']: a['id'] for a in spec.get('added_tokens') or []}
        return cls(ranks, added, [step['type'] for step in _normalizer_steps(spec)])

    def normalize(self, text: str) -> str:
        if self._forms and not text.isascii():
            for form in self._forms:
                text = unicodedata.normalize(form, text)
        return text

    def encode_batch(self, docs: list[str], threads: int = 1) -> list[list[int]]:
        """Token ids of each document (no special tokens added)."""
        pieces: list[str] = []
        plan: list[list[Any]] = []  # per doc: indexes into pieces (int) or added ids (tuple)
        split = self._split
        for doc in docs:
            text = self.normalize(doc)
            steps: list[Any] = []
            pos = 0
            if split is not None:
                for match in split.finditer(text):
                    if match.start() > pos:
                        steps.append(len(pieces))
                        pieces.append(text[pos:match.start()])
                    steps.append((self._added[match.group()],))
                    pos = match.end()
            if pos < len(text):
                steps.append(len(pieces))
                pieces.append(text[pos:])
            plan.append(steps)
        encode = self._encoding._core_bpe.encode_ordinary  # releases the GIL while it runs
        if any(len(p) > LONG_PIECE_CHARS for p in pieces):
            encoded = self._encode_with_long_pieces(pieces, encode)
        elif threads > 1 and len(pieces) > 64:
            # One contiguous slice per thread: a future per piece would cost more than the
            # encoding of a typical piece.
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor
                self._pool = ThreadPoolExecutor(max_workers=threads)
            step = -(-len(pieces) // threads)
            chunks = [pieces[i:i + step] for i in range(0, len(pieces), step)]
            encoded = [ids for part in self._pool.map(lambda c: [encode(p) for p in c], chunks)
                       for ids in part]
        else:
            encoded = [encode(p) for p in pieces]
        return self._assemble(plan, encoded)

    @staticmethod
    def _assemble(plan: list[list[Any]], encoded: list[list[int]]) -> list[list[int]]:
        out = []
        for steps in plan:
            ids: list[int] = []
            for step in steps:
                if isinstance(step, tuple):
                    ids.append(step[0])
                else:
                    ids.extend(encoded[step])
            out.append(ids)
        return out


    def _encode_with_long_pieces(self, pieces: list[str], encode) -> list[list[int]]:
        """Pieces, long ones cut at safe points and their segments encoded on a thread per core."""
        import os
        from concurrent.futures import ThreadPoolExecutor

        segments: list[str] = []
        owner: list[int] = []
        for index, piece in enumerate(pieces):
            parts = split_at_safe_points(piece, SEGMENT_CHARS) if len(piece) > LONG_PIECE_CHARS else [piece]
            segments.extend(parts)
            owner.extend([index] * len(parts))
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
        encoded: list[list[int]] = [[] for _ in pieces]
        for index, ids in zip(owner, self._pool.map(encode, segments)):
            encoded[index].extend(ids)
        return encoded


def is_safe_point(text: str, i: int) -> bool:
    """Whether cutting `text` before index i leaves the GPT-2 pre-tokenization unchanged (see the module doc)."""
    return (0 < i < len(text) - 1 and text[i] == ' ' and not text[i - 1].isspace()
            and _is_letter(text[i + 1]))


def _is_letter(char: str) -> bool:
    # \p{L} of the pre-tokenizer regex: the Unicode letter categories.
    return unicodedata.category(char).startswith('L')


def split_at_safe_points(text: str, target: int) -> list[str]:
    """`text` cut into pieces of about `target` characters, each cut at a safe point.

    A stretch with no safe point (a long run without spaces before letters) stays whole.
    """
    pieces = []
    start = 0
    while len(text) - start > target:
        cut = text.find(' ', start + target)
        while cut != -1 and not is_safe_point(text, cut):
            cut = text.find(' ', cut + 1)
        if cut == -1:
            break
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def safe_prefix(text: str, max_chars: int) -> str:
    """The longest prefix of at most about `max_chars` characters that ends at a safe point (or all of it)."""
    if len(text) <= max_chars:
        return text
    return split_at_safe_points(text, max_chars)[0]


@functools.lru_cache(maxsize=4)
def _incompatibility_of(text: str) -> str | None:
    # Checking 50k merges costs a few tenths of a second: once per tokenizer and process.
    return _incompatibility(json.loads(text))


def _incompatibility(spec: dict) -> str | None:
    model = spec.get('model') or {}
    if model.get('type') != 'BPE':
        return f'its model is {model.get("type")!r}, not BPE'
    for key, ok in (('dropout', (None, 0, 0.0)), ('unk_token', (None,)),
                    ('continuing_subword_prefix', (None, '')), ('end_of_word_suffix', (None, '')),
                    ('fuse_unk', (None, False)), ('byte_fallback', (None, False)),
                    ('ignore_merges', (None, False))):
        if model.get(key) not in ok:
            return f'its BPE sets {key}={model.get(key)!r}'
    pre = spec.get('pre_tokenizer') or {}
    if pre.get('type') == 'Sequence' and len(pre.get('pretokenizers') or []) == 1:
        pre = pre['pretokenizers'][0]
    if pre.get('type') != 'ByteLevel' or pre.get('add_prefix_space') or \
            pre.get('use_regex', True) is not True:
        return 'it is not a byte-level BPE with the GPT-2 pre-tokenizer (ByteLevel, ' \
               'use_regex, no prefix space)'
    steps = _normalizer_steps(spec)
    if not all(isinstance(s, dict) and s.get('type') in _NORMALIZERS for s in steps):
        return f'its normalizer {spec["normalizer"].get("type")!r} is not plain Unicode normalization'
    vocab = model.get('vocab') or {}
    previous = -1
    for merge in model.get('merges') or []:
        a, b = merge.split(' ', 1) if isinstance(merge, str) else merge
        merged = vocab.get(a + b)
        if merged is None or merged <= previous or merged <= vocab.get(a, -1) or \
                merged <= vocab.get(b, -1):
            return 'its merge results do not rank in merge order'
        previous = merged
    forms = [step['type'] for step in steps]
    for token in spec.get('added_tokens') or []:
        if token.get('lstrip') or token.get('rstrip') or token.get('single_word'):
            return f'added token {token["content"]!r} strips or matches single words'
        content = token['content']
        if not content:
            return 'it has an empty added token'
        for form in forms:
            if unicodedata.normalize(form, content) != content:
                return f'added token {content!r} changes under {form}'
    return None


def _normalizer_steps(spec: dict) -> list:
    """The normalizer of a tokenizer.json as a list of steps (a Sequence unpacked; none: [])."""
    norm = spec.get('normalizer')
    if norm is None:
        return []
    return (norm.get('normalizers') or []) if norm.get('type') == 'Sequence' else [norm]
