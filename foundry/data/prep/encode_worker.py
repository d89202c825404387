"""Turn one task (documents, raw JSON lines, or raw text files) into bos/eos-wrapped token ids.

This is the work that runs on every core during conversion. It imports only numpy and the
Rust ``tokenizers`` library (never transformers), so a spawned worker is ready in a fraction of
a second, and it parses JSON and decodes UTF-8 itself, so the main process only moves bytes.

A task is a plain tuple (cheap to pickle):
  ('docs', [str, ...], where)                       documents already decoded
  ('jsonl', bytes, file, first_line, text_field)    raw JSON Lines, first_line is 1-based
  ('blobs', [bytes, ...], [file, ...])              one document per raw text file

Invalid UTF-8 is never dropped silently: by default each invalid byte sequence becomes U+FFFD
and is counted per file with the byte offset of the first one (reported in the summary); with
``strict_utf8`` the first one is an error naming the file and byte offset.
"""

from __future__ import annotations

import codecs
import json
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from foundry.data.errors import DataError

__all__ = ['Encoder', 'Encoded', 'init_worker', 'run_task', 'parse_task', 'decode_utf8']

# fast_bpe's self-check re-encodes at most this many characters of a document with the tokenizer.
CHECK_CHARS = 1 << 16


@dataclass
class Encoded:
    """What one task produced."""
    tokens: np.ndarray                 # concatenated bos + document + eos, in the output dtype
    doc_lens: np.ndarray               # wrapped length of each document (int64)
    documents: int
    empty_documents: int               # documents with no text (kept: they still get bos/eos)
    input_bytes: int
    bad_utf8: dict[str, list[int]] = field(default_factory=dict)  # file -> [count, first offset]


class _BadUtf8Counter:
    """A codecs error handler that replaces like 'replace' but counts and locates each error."""

    def __init__(self) -> None:
        self.count = 0
        self.first = -1

    def __call__(self, err: UnicodeDecodeError):
        if self.first < 0:
            self.first = err.start
        self.count += 1
        return '\ufffd', err.end


_counter = _BadUtf8Counter()
codecs.register_error('foundry.count_utf8', _counter)


class Encoder:
    """Tokenize and wrap documents exactly as the conversion specifies.

    Args:
        tokenizer: ('json', tokenizer.json text) for a fast tokenizer, loaded with the Rust
            library; ('rust', a loaded tokenizers.Tokenizer); or ('object', a transformers
            tokenizer) for a slow one.
        bos_ids, eos_ids: ids placed before / after every document.
        dtype: numpy dtype name of the stored tokens (uint16 or uint32).
        vocab_size: ids must be below this (checked per task, vectorised).
        strict_utf8: fail on invalid UTF-8 instead of replacing and counting.
    """

    def __init__(self, tokenizer: tuple[str, Any], bos_ids: Sequence[int],
                 eos_ids: Sequence[int], dtype: str, vocab_size: int,
                 strict_utf8: bool = False, fast_bpe: bool = False, threads: int = 1) -> None:
        kind, payload = tokenizer
        self._bpe = None
        self.threads = max(1, threads)
        self._docs_seen = 0
        if kind in ('json', 'rust'):
            from tokenizers import Tokenizer
            if kind == 'rust':  # an already loaded tokenizers.Tokenizer (in-process use)
                self._fast, payload = payload, payload.to_str()
            else:
                self._fast = Tokenizer.from_str(payload)
            self._ascii = _without_unicode_normalizer(payload)
            self._slow = None
            if fast_bpe:
                from foundry.data.prep.fast_bpe import FastBPE
                self._bpe = FastBPE.from_tokenizer_json(payload)
        else:
            if fast_bpe:
                raise DataError('--encoder fast_bpe needs a fast tokenizer (a tokenizer.json); '
                                'use --encoder hf.')
            self._fast = self._ascii = None
            self._slow = payload
        self.bos = list(bos_ids)
        self.eos = list(eos_ids)
        self.dtype = np.dtype(dtype)
        self.vocab_size = vocab_size
        self.strict_utf8 = strict_utf8

    # -- tokenization -------------------------------------------------------------------

    def encode(self, docs: list[str], where: str = 'documents') -> list[list[int]]:
        if self._bpe is None:
            return self._encode_exact(docs)
        ids = self._bpe.encode_batch(docs, self.threads)
        # Check against the tokenizer itself: the first 64 documents, then every 128th.
        check = [i for i in range(len(docs))
                 if self._docs_seen + i < 64 or (self._docs_seen + i) % 128 == 0]
        self._docs_seen += len(docs)
        if check:
            # A long document is checked on a prefix cut at a safe point (see fast_bpe.py): the
            # tokenizer would otherwise spend longer on it than the whole conversion.
            from foundry.data.prep.fast_bpe import safe_prefix

            texts = [safe_prefix(docs[i], CHECK_CHARS) for i in check]
            got = [ids[i] if len(t) == len(docs[i]) else self._bpe.encode_batch([t])[0]
                   for i, t in zip(check, texts)]
            for i, text, mine, want in zip(check, texts, got, self._encode_exact(texts)):
                if mine != want:
                    k = next((j for j, (a, b) in enumerate(zip(mine, want)) if a != b),
                             min(len(mine), len(want)))
                    raise DataError(
                        f'{where}: the fast_bpe encoder and the tokenizer disagree on a document '
                        f'({docs[i][:60]!r}...) at token {k}: {mine[k:k + 5]} vs '
                        f'{want[k:k + 5]}. Delete the output and convert with --encoder hf.')
        return ids

    def _encode_exact(self, docs: list[str]) -> list[list[int]]:
        if self._fast is not None:
            # encode_batch_fast skips character offsets, which we never use; the ids are
            # identical to encode_batch. It runs on the Rust thread pool unless
            # TOKENIZERS_PARALLELISM=false (set in worker processes: one thread each).
            if self._ascii is None:
                return [e.ids for e in self._fast.encode_batch_fast(docs,
                                                                    add_special_tokens=False)]
            # Unicode normalization (NFC & co.) is the identity on ASCII text, so ASCII
            # documents skip it (about 10% faster); the others go through the full pipeline.
            out: list = [None] * len(docs)
            plain = [i for i, d in enumerate(docs) if d.isascii()]
            other = [i for i, d in enumerate(docs) if not d.isascii()]
            for group, tok in ((plain, self._ascii), (other, self._fast)):
                if group:
                    encs = tok.encode_batch_fast([docs[i] for i in group],
                                                 add_special_tokens=False)
                    for i, e in zip(group, encs):
                        out[i] = e.ids
            return out
        return list(self._slow(docs, add_special_tokens=False)['input_ids'])

    def wrap(self, docs: list[str], where: str, input_bytes: int,
             bad_utf8: dict[str, list[int]] | None = None) -> Encoded:
        for i, doc in enumerate(docs):
            if not isinstance(doc, str):
                raise DataError(f'{where}: document #{i} is {type(doc).__name__}, not a '
                                'string; every document must be text.')
        try:
            encoded = self.encode(docs, where)
        except (TypeError, UnicodeEncodeError):
            # The Rust tokenizer rejects strings that are not valid Unicode (lone surrogates
            # from JSON escapes such as \udc80): replace and count them, then retry.
            docs = [self._encodable(d, where, bad_utf8) for d in docs]
            encoded = self.encode(docs, where)
        flat: list[int] = []
        lens = np.empty(len(encoded), dtype=np.int64)
        bos, eos, nb, ne = self.bos, self.eos, len(self.bos), len(self.eos)
        for i, ids in enumerate(encoded):
            if nb:
                flat.extend(bos)
            flat.extend(ids)
            if ne:
                flat.extend(eos)
            lens[i] = nb + len(ids) + ne
        tokens = np.array(flat, dtype=np.int64) if flat else np.zeros(0, np.int64)
        if tokens.size and (int(tokens.max()) >= max(self.vocab_size, 1) or int(tokens.min()) < 0):
            bad = int(tokens.max())
            raise DataError(f'{where}: the tokenizer produced id {bad}, outside its own '
                            f'vocabulary of {self.vocab_size:,}; this tokenizer reports fewer '
                            'tokens than it emits and cannot be stored safely.')
        return Encoded(tokens=tokens.astype(self.dtype), doc_lens=lens, documents=len(docs),
                       empty_documents=sum(1 for d in docs if not d), input_bytes=input_bytes,
                       bad_utf8=bad_utf8 or {})

    def _encodable(self, doc: str, where: str, bad_utf8: dict[str, list[int]] | None) -> str:
        """Lone surrogates (from JSON escapes like \\udc80) cannot be tokenized: count them."""
        try:
            doc.encode('utf-8')
            return doc
        except UnicodeEncodeError as err:
            if self.strict_utf8:
                raise DataError(f'{where}: text holds an unpaired surrogate (invalid Unicode) at '
                                f'character {err.start}. Fix the input, or drop --strict_utf8 '
                                'to replace and count such characters.') from None
            fixed = ''.join('\ufffd' if '\ud800' <= c <= '\udfff' else c for c in doc)
            if bad_utf8 is not None:
                entry = bad_utf8.setdefault(where, [0, -1])
                entry[0] += sum(1 for c in doc if '\ud800' <= c <= '\udfff')
            return fixed

    # -- tasks --------------------------------------------------------------------------

    def __call__(self, task: tuple) -> Encoded:
        docs, where, nbytes, bad = parse_task(task, self.strict_utf8)
        return self.wrap(docs, where, nbytes, bad)


def parse_task(task: tuple, strict_utf8: bool = False
               ) -> tuple[list[str], str, int, dict[str, list[int]]]:
    """(documents, where, input bytes, invalid UTF-8 per file) of one task, not tokenized."""
    kind = task[0]
    bad: dict[str, list[int]] = {}
    if kind == 'docs':
        _, docs, where = task
        return docs, where, sum(len(d) for d in docs if isinstance(d, str)), bad
    if kind == 'jsonl':
        _, data, file, first_line, text_field, offset = task
        text = decode_utf8(data, file, offset, bad, strict_utf8, first_line)
        docs = []
        loads = json.loads
        for i, line in enumerate(text.split('\n')):
            if not line or line.isspace():
                continue
            try:
                record = loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f'{file}:{first_line + i}: invalid JSON ({err.msg}); expected '
                                'one JSON object per line (JSON Lines) or a single JSON '
                                'array.') from None
            docs.append(text_of(record, text_field, f'{file}:{first_line + i}'))
        return docs, file, len(data), bad
    if kind == 'blobs':
        _, blobs, names = task
        docs = [decode_utf8(blob, name, 0, bad, strict_utf8) for blob, name in zip(blobs, names)]
        return docs, names[0] if names else 'text files', sum(map(len, blobs)), bad
    raise ValueError(f'unknown task kind {kind!r}')


def decode_utf8(data: bytes, file: str, offset: int, bad: dict[str, list[int]],
                strict: bool = False, first_line: int | None = None) -> str:
    """Decode, replacing invalid sequences with U+FFFD and counting them in ``bad[file]``
    (count, byte offset of the first); with ``strict``, the first one is a DataError."""
    try:
        return data.decode('utf-8')
    except UnicodeDecodeError as err:
        if strict:
            where = f'{file}: byte {offset + err.start:,}'
            if first_line is not None:
                line = first_line + data.count(b'\n', 0, err.start)
                where += f' (line {line})'
            raise DataError(f'{where}: invalid UTF-8 ({err.reason}). Re-encode the file as '
                            'UTF-8, or drop --strict_utf8 to replace invalid bytes with '
                            'U+FFFD and count them.') from None
    _counter.count, _counter.first = 0, -1
    text = data.decode('utf-8', 'foundry.count_utf8')
    entry = bad.setdefault(file, [0, -1])
    if entry[1] < 0:
        entry[1] = offset + _counter.first
    entry[0] += _counter.count
    return text


_IDENTITY_ON_ASCII = {'NFC', 'NFD', 'NFKC', 'NFKD'}


def _without_unicode_normalizer(tokenizer_json: str):
    """The tokenizer minus a normalizer that only does Unicode normalization (or None)."""
    from tokenizers import Tokenizer

    spec = json.loads(tokenizer_json)
    norm = spec.get('normalizer')
    if not isinstance(norm, dict):
        return None
    steps = norm.get('normalizers') if norm.get('type') == 'Sequence' else [norm]
    if not steps or not all(isinstance(n, dict) and n.get('type') in _IDENTITY_ON_ASCII
                            for n in steps):
        return None
    spec['normalizer'] = None
    return Tokenizer.from_str(json.dumps(spec))


def text_of(record: object, text_field: str, where: str) -> str:
    """The document in ``record[text_field]``, or a DataError naming the record and its fields."""
    if not isinstance(record, dict):
        raise DataError(f'{where}: expected a JSON object with a {text_field!r} field, got '
                        f'{type(record).__name__}.')
    try:
        text = record[text_field]
    except KeyError:
        fields = ', '.join(sorted(map(str, record))[:10]) or 'none'
        raise DataError(f'{where}: record has no {text_field!r} field (its fields: {fields}). '
                        'Pass --text_field with the right name, or fix the record.') from None
    if not isinstance(text, str):
        raise DataError(f'{where}: field {text_field!r} is {type(text).__name__}, not a string.')
    return text


# -- process-pool plumbing -----------------------------------------------------------------

_worker: Encoder | None = None
# (args, Encoder) built by the parent just before it forks its workers; init_worker reuses it.
PREBUILT: tuple | None = None


def init_worker(args: tuple) -> None:
    """Pool initializer: one Rust thread per worker process (the pool is the parallelism)."""
    global _worker
    import signal

    os.environ['TOKENIZERS_PARALLELISM'] = 'false'
    # Ctrl-C is handled once, by the main process, which shuts the pool down and reports
    # which parts are complete; workers dying with their own tracebacks would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker = PREBUILT[1] if PREBUILT is not None and PREBUILT[0] is args else Encoder(*args)
    _worker.threads = 1  # the pool is the parallelism


def run_task(task: tuple) -> Encoded:
    assert _worker is not None, 'init_worker was not called'
    return _worker(task)
