"""Tokenize documents, concatenate them, and write fixed-length token samples as MDS shards.

This is the core behind every data_prep script. Each document becomes
``bos_text + document + eos_text`` in token space; documents are concatenated into one stream
and cut into ``concat_tokens``-long samples. No separate boundary column is written: the eos
token is the boundary, and the training collator derives ``sequence_id`` from eos positions.

Tokens are stored as ``ndarray:uint16`` when every id fits (vocab <= 65,536), else
``ndarray:uint32``. The MDS ndarray encoding records the dtype in the index, so a reader can
never misread the width (the int32-written/int64-read class of silent corruption).
"""

from __future__ import annotations

import itertools
import os
import shutil
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import numpy as np
from streaming import MDSWriter
from streaming.base.compression import get_compressions, is_compression
from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from foundry.data.errors import DataError

__all__ = ['ConversionSummary', 'convert_documents', 'token_dtype_for', 'resolve_eos_ids']

TOKENS_COLUMN = 'tokens'
# Documents tokenized per fast-tokenizer call: large enough to use the Rust batch path
# (parallel across cores), small enough that memory stays flat on huge inputs.
DEFAULT_BATCH_SIZE = 512


@dataclass
class ConversionSummary:
    """What one conversion wrote."""
    documents: int
    tokens: int           # tokens stored in samples
    samples: int
    bytes: int            # bytes of shard files written (after compression)
    seconds: float
    dropped_tokens: int   # tokens not stored: the final partial sample, or no_wrap tails
    dtype: str
    out_root: str

    def __str__(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else float('nan')
        return (f'wrote {self.samples:,} samples ({self.tokens:,} tokens, {self.dtype}) from '
                f'{self.documents:,} documents to {self.out_root}: {self.bytes / 1e6:,.2f} MB in '
                f'{self.seconds:.1f}s ({rate:,.0f} tokens/s); {self.dropped_tokens:,} tokens '
                'dropped (partial last sample or no_wrap tails)')

    def to_dict(self) -> dict:
        return asdict(self)


def token_dtype_for(vocab_size: int) -> np.dtype:
    """The narrowest unsigned dtype that holds every token id of a ``vocab_size`` vocabulary."""
    if vocab_size <= 2**16:
        return np.dtype(np.uint16)
    if vocab_size <= 2**32:
        return np.dtype(np.uint32)
    raise DataError(f'vocabulary of {vocab_size:,} tokens does not fit in uint32; '
                    'use a smaller tokenizer.')


def resolve_eos_ids(tokenizer: PreTrainedTokenizerBase, eos_text: str | None,
                    bos_ids: list[int] | None = None) -> list[int]:
    """Token ids appended after each document, checking that boundaries stay detectable.

    Training finds document boundaries by looking for one token id (the eos id). An eos_text
    that tokenizes to several tokens is fine as long as its last token is the tokenizer's eos
    (e.g. ``"\\n<|endoftext|>"``); otherwise no single id marks the boundary, sequence_id
    masking would silently treat the whole sample as one document, so it is an error.
    """
    if eos_text is None:
        if tokenizer.eos_token is None:
            raise DataError('the tokenizer defines no eos token, so documents cannot be '
                            "separated. Pass --eos_text explicitly (or --eos_text '' to "
                            'concatenate documents with no separator).')
        eos_text = tokenizer.eos_token
    ids = _encode(tokenizer, eos_text)
    tokenizer_eos = tokenizer.eos_token_id
    if not ids and bos_ids and len(bos_ids) == 1:
        warnings.warn(f'eos_text is empty, so documents are marked only by their bos token '
                      f'{bos_ids[0]}. Set train_loader.dataset.bos_token_id: {bos_ids[0]} so '
                      'training finds document boundaries.')
    elif not ids:
        warnings.warn('eos_text is empty: documents are concatenated with no separator, so '
                      'training cannot tell where one ends (sequence_id will be all zeros).')
    elif len(ids) == 1 and ids[0] != tokenizer_eos:
        warnings.warn(f'eos_text {eos_text!r} is token id {ids[0]}, not the tokenizer eos id '
                      f'{tokenizer_eos}. Set train_loader.dataset.eos_token_id: {ids[0]} so '
                      'training finds document boundaries.')
    elif len(ids) > 1 and ids[-1] != tokenizer_eos:
        raise DataError(f'eos_text {eos_text!r} tokenizes to {len(ids)} tokens {ids}, and the '
                        'last is not the eos id, so no single token marks where a document '
                        'ends and training cannot derive document boundaries. Use a string '
                        f'that is one token (the tokenizer eos is {tokenizer.eos_token!r}), or '
                        'end eos_text with it.')
    return ids


def convert_documents(documents: Iterable[str],
                      out_root: str,
                      tokenizer: PreTrainedTokenizerBase,
                      concat_tokens: int,
                      *,
                      bos_text: str = '',
                      eos_text: str | None = None,
                      no_wrap: bool = False,
                      compression: str | None = None,
                      batch_size: int = DEFAULT_BATCH_SIZE,
                      size_limit: int | str | None = 1 << 26,
                      progress: bool = True,
                      verbose: bool = True) -> ConversionSummary:
    """Tokenize ``documents`` and write ``concat_tokens``-long samples to ``out_root``.

    Args:
        documents: iterable of document strings (consumed lazily, once).
        out_root: local directory or remote URL (s3://..., gs://...) for the MDS dataset.
        tokenizer: a fast tokenizer; documents are encoded without its automatic specials,
            so bos_text/eos_text alone decide what surrounds each document.
        concat_tokens: tokens per stored sample (usually the training max_seq_len).
        bos_text: text prepended to each document ('' for none).
        eos_text: text appended to each document; None means the tokenizer's eos token.
        no_wrap: as in llm-foundry, do not let a document spill into the next sample: after
            each sample is cut, the rest of the buffer is discarded, so every sample starts at
            a document start (long documents are truncated to one sample).
        compression: MDS shard compression, e.g. 'zstd' or 'zstd:7'; None for none.
        batch_size: documents per tokenizer call.
        size_limit: shard size limit in bytes before compression.
        progress: show a tqdm bar with tokens/s.
        verbose: print the summary when done.
    """
    if not isinstance(concat_tokens, int) or isinstance(concat_tokens, bool) or concat_tokens < 1:
        raise DataError(f'concat_tokens must be a positive integer, got {concat_tokens!r}.')
    if compression is not None and not is_compression(compression):
        raise DataError(f'unknown compression {compression!r}; choose one of '
                        f'{sorted(get_compressions())} or leave it unset.')
    if batch_size < 1:
        raise DataError(f'batch_size must be >= 1, got {batch_size}.')

    docs = iter(documents)
    first = next(docs, None)
    if first is None:
        raise DataError('no documents to convert: the input is empty. Check --path points at '
                        'the files you meant.')
    docs = itertools.chain([first], docs)

    bos_ids = _encode(tokenizer, bos_text) if bos_text else []
    eos_ids = resolve_eos_ids(tokenizer, eos_text, bos_ids)
    dtype = token_dtype_for(len(tokenizer))
    local_out = _check_local_out(out_root)

    writer = MDSWriter(out=out_root, columns={TOKENS_COLUMN: f'ndarray:{dtype.name}'},
                       compression=compression, size_limit=size_limit)
    cutter = _SampleCutter(concat_tokens, no_wrap, dtype, bos_ids, eos_ids)
    bar = tqdm(desc=f'tokenizing -> {out_root}', unit='tok', unit_scale=True,
               disable=not progress, file=sys.stderr, dynamic_ncols=True)
    start = time.perf_counter()
    n_docs = 0
    try:
        for batch in _batched(docs, batch_size):
            _check_strings(batch, n_docs)
            encoded = tokenizer(batch, add_special_tokens=False)['input_ids']
            n_docs += len(batch)
            before = cutter.tokens
            for sample in cutter.add(encoded):
                writer.write({TOKENS_COLUMN: sample})
            bar.update(cutter.tokens - before)
            bar.set_postfix(docs=n_docs, samples=cutter.samples, refresh=False)
    except BaseException:
        # No index.json is written, so nothing half-done can be mistaken for a dataset; remove
        # the local folder we made so a rerun is not refused as "folder not empty".
        writer.cancel_future_jobs()
        bar.close()
        _remove_partial(local_out)
        raise
    bar.close()
    writer.finish()
    seconds = time.perf_counter() - start

    if cutter.samples == 0:
        _remove_partial(local_out)
        raise DataError(f'{n_docs:,} documents gave only {cutter.dropped:,} tokens, fewer than '
                        f'concat_tokens={concat_tokens}, so no sample was written. Lower '
                        '--concat_tokens or add more text.')

    written = sum((shard.get('zip_data') or shard['raw_data'])['bytes'] for shard in writer.shards)
    summary = ConversionSummary(documents=n_docs, tokens=cutter.tokens, samples=cutter.samples,
                                bytes=written, seconds=seconds, dropped_tokens=cutter.dropped,
                                dtype=dtype.name, out_root=out_root)
    if verbose:
        print(summary, flush=True)
    return summary


class _SampleCutter:
    """Concatenates wrapped documents and cuts fixed-length samples off the front."""

    def __init__(self, length: int, no_wrap: bool, dtype: np.dtype, bos: list[int],
                 eos: list[int]) -> None:
        self.length = length
        self.no_wrap = no_wrap
        self.dtype = dtype
        self.bos = np.asarray(bos, dtype=np.int64)
        self.eos = np.asarray(eos, dtype=np.int64)
        self.limit = np.iinfo(dtype).max
        self.buffer = np.zeros(0, dtype=np.int64)
        self.samples = 0
        self.tokens = 0
        self._dropped = 0  # tokens discarded by no_wrap; the buffer tail is counted separately

    @property
    def dropped(self) -> int:
        return self._dropped + len(self.buffer)

    def add(self, encoded: list[list[int]]) -> Iterator[np.ndarray]:
        pieces = []
        for ids in encoded:
            pieces.extend((self.bos, np.asarray(ids, dtype=np.int64), self.eos))
        if self.no_wrap:
            # Per document: a sample is cut as soon as the buffer fills, and the remainder
            # (the tail of the document that filled it) is discarded.
            for i in range(0, len(pieces), 3):
                self.buffer = np.concatenate([self.buffer, *pieces[i:i + 3]])
                if len(self.buffer) >= self.length:
                    yield self._emit(self.buffer[:self.length])
                    self._dropped += len(self.buffer) - self.length
                    self.buffer = self.buffer[:0]
            return
        stream = np.concatenate([self.buffer, *pieces])
        full = len(stream) // self.length
        for row in stream[:full * self.length].reshape(full, self.length):
            yield self._emit(row)
        self.buffer = stream[full * self.length:]

    def _emit(self, row: np.ndarray) -> np.ndarray:
        if row.size and (row.max() > self.limit or row.min() < 0):
            raise DataError(f'token id {int(row.max())} does not fit in {self.dtype.name}; the '
                            'tokenizer reports fewer tokens than it emits. Report this tokenizer.')
        self.samples += 1
        self.tokens += len(row)
        return row.astype(self.dtype)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)['input_ids'])


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(items, size)):
        yield batch


def _check_strings(batch: list, offset: int) -> None:
    for i, doc in enumerate(batch):
        if not isinstance(doc, str):
            raise DataError(f'document #{offset + i} is {type(doc).__name__}, not a string; '
                            'every document must be text.')


def _check_local_out(out_root: str) -> str | None:
    """Refuse a non-empty local output folder up front; return the local path (None if remote)."""
    if '://' in out_root:
        return None
    path = os.path.expanduser(out_root)
    if os.path.exists(path) and not os.path.isdir(path):
        raise DataError(f'output path {out_root!r} is a file, not a folder. Choose another '
                        '--out_root.')
    if os.path.isdir(path) and os.listdir(path):
        raise DataError(f'output folder {out_root!r} already exists and is not empty. Delete it '
                        'or choose another --out_root.')
    return path


def _remove_partial(local_out: str | None) -> None:
    """Empty the output folder we were writing, which was empty or absent when we started."""
    if local_out is not None and os.path.isdir(local_out):
        shutil.rmtree(local_out, ignore_errors=True)
