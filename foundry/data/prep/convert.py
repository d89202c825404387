"""Tokenize documents on every core, concatenate them, and write fixed-length MDS samples.

This is the core behind every data_prep script. Each document becomes
``bos_text + document + eos_text`` in token space; documents are concatenated into one stream
and cut into ``concat_tokens``-long samples, exactly as llm-foundry's converters do (the same
flags give the same token stream). No separate boundary column is written: the eos token is
the boundary, and the training collator derives ``sequence_id`` from eos positions.

Tokens are stored as ``ndarray:uint16`` when every id fits (vocab <= 65,536), else
``ndarray:uint32``. The MDS ndarray encoding records the dtype in the index, so a reader can
never misread the width (the int32-written/int64-read class of silent corruption).

Speed: by default documents are tokenized in batches by the Rust tokenizer's batch encoder on
its thread pool (every core); ``workers=N`` instead runs N processes that decode, parse and
tokenize batches of raw input while the main process only reads bytes, cuts samples and writes
shards. Nothing on this path imports torch, streaming or transformers.

Restartable: the input's parts are converted one by one into OUT/part-NNNNN and the merged
index is written last (layout and restart rules: foundry/data/prep/convert_output.py).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np
from tqdm import tqdm

from foundry.data.errors import DataError
from foundry.data.prep import encode_worker
from foundry.data.prep.convert_output import FORMAT, MANIFEST, ConversionOutput, PartWriter
from foundry.data.prep.encode_worker import Encoded, Encoder, init_worker, run_task
from foundry.data.prep.encoders import SMALL_INPUT_BYTES, _encode, _tokenizer_spec, choose_encoder
from foundry.data.prep.mds_writer import check_compression
from foundry.data.prep.sources import IterableSource, Part, Source

if TYPE_CHECKING:  # transformers is not imported at run time: conversion starts in a blink
    from transformers import PreTrainedTokenizerBase

__all__ = ['ConversionSummary', 'convert', 'convert_documents', 'token_dtype_for',
           'resolve_eos_ids', 'default_workers', 'MANIFEST', 'FORMAT']

DEFAULT_BATCH_SIZE = 4096  # kept for callers of the old API; tasks are sized by sources.py


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
    concat_tokens: int = 0
    parts: int = 1
    parts_reused: int = 0
    empty_documents: int = 0
    input_bytes: int = 0
    workers: int = 0
    invalid_utf8: dict[str, list[int]] = field(default_factory=dict)  # file -> [count, offset]
    encoder: str = 'hf'   # 'fast_bpe' (tiktoken's BPE) or 'hf' (the Hugging Face tokenizer)

    @property
    def invalid_utf8_count(self) -> int:
        return sum(count for count, _ in self.invalid_utf8.values())

    def __str__(self) -> str:
        rate = self.tokens / self.seconds if self.seconds > 0 else float('nan')
        mode = f'{self.workers} worker processes' if self.workers else 'in-process threads'
        mode = f'encoder {self.encoder}, {mode}'
        lines = [
            f'wrote {self.samples:,} samples ({self.tokens:,} tokens, {self.dtype}) from '
            f'{self.documents:,} documents to {self.out_root}: {self.bytes / 1e6:,.2f} MB in '
            f'{self.seconds:.1f}s ({rate:,.0f} tokens/s, {mode})',
            f'  parts: {self.parts} ({self.parts_reused} reused from an earlier run); input '
            f'{self.input_bytes / 1e6:,.2f} MB; {self.dropped_tokens:,} tokens dropped (the '
            'final partial sample, or no_wrap tails); '
            f'{self.empty_documents:,} empty documents (kept as bos/eos only)',
        ]
        if self.invalid_utf8:
            files = sorted(self.invalid_utf8.items())
            shown = '; '.join(f'{f}: {c:,} (first at byte {o:,})' for f, (c, o) in files[:5])
            more = f'; and {len(files) - 5} more files' if len(files) > 5 else ''
            lines.append(f'  invalid UTF-8: {self.invalid_utf8_count:,} byte sequences replaced '
                         f'by U+FFFD in {len(files)} file(s): {shown}{more}')
        else:
            lines.append('  invalid UTF-8: none')
        return '\n'.join(lines)

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


def default_workers() -> int:
    """Every core this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


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


def convert_documents(documents: Iterable[str], out_root: str,
                      tokenizer: PreTrainedTokenizerBase, concat_tokens: int, *,
                      batch_size: int = DEFAULT_BATCH_SIZE, **kwargs: Any) -> ConversionSummary:
    """Convert an iterable of document strings (one part; see :func:`convert`)."""
    if batch_size < 1:
        raise DataError(f'batch_size must be >= 1, got {batch_size}.')
    return convert(IterableSource(documents), out_root, tokenizer, concat_tokens, **kwargs)


def convert(source: Source,
            out_root: str,
            tokenizer: PreTrainedTokenizerBase,
            concat_tokens: int,
            *,
            bos_text: str = '',
            eos_text: str | None = None,
            no_wrap: bool = False,
            compression: str | None = None,
            size_limit: int | str | None = 1 << 26,
            workers: int | None = None,
            strict_utf8: bool = False,
            fast_bpe: bool = False,
            progress: bool = True,
            verbose: bool = True,
            encoder: str = 'auto') -> ConversionSummary:
    """Tokenize ``source`` and write ``concat_tokens``-long samples to ``out_root``.

    Args:
        source: where documents come from (see ``foundry.data.prep.sources``).
        out_root: local folder or ``s3://bucket/prefix`` for the MDS dataset.
        tokenizer: documents are encoded without its automatic specials, so bos_text/eos_text
            alone decide what surrounds each document.
        concat_tokens: tokens per stored sample (usually the training max_seq_len).
        bos_text: text prepended to each document ('' for none).
        eos_text: text appended to each document; None means the tokenizer's eos token.
        no_wrap: as in llm-foundry, do not let a document spill into the next sample: after
            each sample is cut, the rest of the buffer is discarded, so every sample starts at
            a document start (long documents are truncated to one sample).
        compression: MDS shard compression, e.g. 'zstd' or 'zstd:7'; None for none.
        size_limit: shard size limit in bytes before compression.
        workers: tokenizer processes; 0 (the default, None) tokenizes in this process on
            the Rust thread pool, which uses every core.
        strict_utf8: fail on invalid UTF-8 (naming file and byte offset) instead of replacing
            it with U+FFFD and counting it in the summary.
        fast_bpe: the same as encoder='fast_bpe' (the flag of earlier releases).
        encoder: 'auto' (default): tiktoken's BPE (fast_bpe.py) when the tokenizer is a byte-level
            BPE it reproduces (GPT-2/GPT-NeoX family), several times faster and checked against
            the tokenizer as it goes; otherwise the Hugging Face tokenizer. 'hf' or 'fast_bpe'
            forces one.
        progress: show a progress bar with tokens/s.
        verbose: print the summary when done.
    """
    start = time.perf_counter()
    if not isinstance(concat_tokens, int) or isinstance(concat_tokens, bool) or concat_tokens < 1:
        raise DataError(f'concat_tokens must be a positive integer, got {concat_tokens!r}.')
    check_compression(compression)  # before any work, not at the first shard
    if workers is not None and (not isinstance(workers, int) or workers < 0):
        raise DataError(f'workers must be a non-negative integer, got {workers!r}.')

    bos_ids = _encode(tokenizer, bos_text) if bos_text else []
    eos_ids = resolve_eos_ids(tokenizer, eos_text, bos_ids)
    vocab_size = len(tokenizer)
    dtype = token_dtype_for(vocab_size)
    spec, tokenizer_id = _tokenizer_spec(tokenizer)
    encoder, why = choose_encoder('fast_bpe' if fast_bpe else encoder, spec)
    fast_bpe = encoder == 'fast_bpe'

    parts = source.parts()
    if not parts:
        raise DataError(f'no input to convert in {source.description}.')
    if workers is None:
        # Measured on 2 cores (launch/bench/convert_bench.py): with the Hugging Face tokenizer
        # its own thread pool beats worker processes (no per-process start-up, one shared BPE
        # cache, no result pickling); the tiktoken encoder of --fast_bpe holds the GIL between
        # the many short pieces of code-like text, so there processes win.
        workers = default_workers() if fast_bpe else 0
        known = [p.size for p in parts]
        if fast_bpe and None not in known and sum(known) < SMALL_INPUT_BYTES:
            workers = 0  # seconds of work: starting processes would cost more than they save

    settings = {
        'format': FORMAT, 'tokenizer': tokenizer_id, 'vocab_size': vocab_size,
        'concat_tokens': concat_tokens, 'bos_ids': bos_ids, 'eos_ids': eos_ids,
        'no_wrap': no_wrap, 'compression': compression, 'size_limit': size_limit,
        'dtype': dtype.name, 'source': source.identity(),
    }
    out = ConversionOutput(out_root)
    done = out.prepare(settings, parts)
    if done is None:  # already complete
        summary = _completed_summary(out)
        summary.seconds = time.perf_counter() - start
        if verbose:
            print(f'{out_root} already holds this complete conversion; nothing to do.\n{summary}',
                  flush=True)
        return summary

    if verbose:
        print(f'encoder: {encoder} ({why})', flush=True)  # stdout, with the summary: stderr is for problems
    cutter = _SampleCutter(concat_tokens, no_wrap, dtype)
    totals = _Totals()
    for marker in done:
        totals.add_marker(marker)
    if done:
        cutter.buffer = np.asarray(done[-1]['carry'], dtype=np.int64)
        cutter.samples, cutter.tokens = totals.samples, totals.tokens
        cutter._dropped = totals.dropped_no_wrap

    if workers == 0 and spec[0] == 'json':
        from tokenizers import Tokenizer
        spec = ('rust', Tokenizer.from_str(spec[1]))  # in-process: no pickling, parse once
    encoder_args = (spec, bos_ids, eos_ids, dtype.name, vocab_size, strict_utf8, fast_bpe,
                    default_workers())
    pipeline = _Pipeline(encoder_args, workers)
    bar = tqdm(desc='tokenizing', unit='tok', unit_scale=True, disable=not progress,
               file=sys.stderr, dynamic_ncols=True, smoothing=0.1)
    current: PartWriter | None = None
    try:
        items = _task_stream(parts, len(done))
        current = None
        for index, encoded in pipeline.run(items):
            if current is None or current.index != index:
                current = PartWriter(out, index, dtype, compression, size_limit)
            if encoded is None:  # end of this part
                marker = current.finish(cutter)
                totals.add_marker(marker)
                out.mark_done(index, marker)
                current = None
                continue
            before = cutter.tokens
            current.add(encoded, cutter)
            bar.update(cutter.tokens - before)
            bar.set_postfix_str(f'part {index + 1}/{len(parts)} docs {totals.documents + current.documents:,} '
                                f'samples {cutter.samples:,}', refresh=False)
    except BaseException as err:
        bar.close()
        if current is not None:
            current.abandon()
        pipeline.close(cancel=True)
        kept = out.after_failure(totals.parts_done)
        if isinstance(err, DataError) and kept:
            raise DataError(f'{err} ({kept} of {len(parts)} parts are complete and kept in '
                            f'{out_root}; fix the input and rerun the same command to resume '
                            'from the first unfinished part.)') from err
        raise
    bar.close()
    pipeline.close()

    if totals.documents == 0:
        out.after_failure(0)
        raise DataError(f'no documents to convert: the input is empty ({source.description}). '
                        'Check --path points at the files you meant.')
    if cutter.samples == 0:
        out.after_failure(0)
        raise DataError(f'{totals.documents:,} documents gave only {cutter.dropped:,} tokens, '
                        f'fewer than concat_tokens={concat_tokens}, so no sample was written. '
                        'Lower --concat_tokens or add more text.')

    summary = ConversionSummary(
        documents=totals.documents, tokens=cutter.tokens, samples=cutter.samples,
        bytes=totals.bytes, seconds=time.perf_counter() - start, dropped_tokens=cutter.dropped,
        dtype=dtype.name, out_root=out_root, concat_tokens=concat_tokens, parts=len(parts),
        parts_reused=len(done), empty_documents=totals.empty, input_bytes=totals.input_bytes,
        workers=workers, invalid_utf8=totals.invalid_utf8, encoder=encoder)
    out.merge(len(parts), summary.to_dict())
    if summary.invalid_utf8:
        warnings.warn(f'invalid UTF-8 in {len(summary.invalid_utf8)} input file(s): '
                      f'{summary.invalid_utf8_count:,} byte sequences replaced by U+FFFD '
                      '(see the summary; pass --strict_utf8 to fail instead).')
    if verbose:
        print(summary, flush=True)
    return summary


def _completed_summary(out: ConversionOutput) -> ConversionSummary:
    """The summary a finished conversion recorded, for a rerun that has nothing to do."""
    fields = ConversionSummary.__dataclass_fields__
    summary = ConversionSummary(**{k: v for k, v in out.recorded_summary().items() if k in fields})
    summary.parts_reused = summary.parts
    summary.out_root = out.root
    return summary


# -- tasks -> results ----------------------------------------------------------------------

def _task_stream(parts: list[Part], first: int) -> Iterator[tuple[int, tuple | None]]:
    """(part index, task) for every task of every unfinished part; (index, None) ends a part."""
    for index in range(first, len(parts)):
        for task in parts[index].tasks():
            yield index, task
        yield index, None


class _Pipeline:
    """Runs tasks in worker processes (ordered, with a bounded window) or in this process."""

    def __init__(self, encoder_args: tuple, workers: int) -> None:
        self.workers = workers
        self.pool = None
        self.encoder = None
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork where available: workers start instantly and callers need no __main__
            # guard. The pool is created before this function starts any thread of its own
            # (progress bar, shard uploads), ProcessPoolExecutor forks every worker before its
            # manager thread starts, and workers load their own tokenizer with the Rust thread
            # pool off, so nothing inherited from the parent's threads is used.
            method = 'fork' if 'fork' in multiprocessing.get_all_start_methods() else 'spawn'
            if method == 'fork':
                # Build the encoder (tokenizer.json parsed, tiktoken ranks, checks: about a second)
                # once here; forked workers inherit it instead of each building its own.
                encode_worker.PREBUILT = (encoder_args, Encoder(*encoder_args))
            self.pool = ProcessPoolExecutor(max_workers=workers,
                                            mp_context=multiprocessing.get_context(method),
                                            initializer=init_worker, initargs=(encoder_args,))
            # Start the workers now, before the caller creates threads. The variable is set
            # only while forking so the Rust library does not print its fork warning (each
            # worker switches its own thread pool off in init_worker).
            saved = os.environ.get('TOKENIZERS_PARALLELISM')
            os.environ['TOKENIZERS_PARALLELISM'] = saved or 'true'
            try:
                list(self.pool.map(_noop, range(workers)))
            finally:
                encode_worker.PREBUILT = None
                if saved is None:
                    os.environ.pop('TOKENIZERS_PARALLELISM', None)
        else:
            self.encoder = Encoder(*encoder_args)

    def run(self, items: Iterator[tuple[int, tuple | None]]) -> Iterator[tuple[int, Encoded | None]]:
        if self.pool is None:
            for index, task in items:
                yield index, (self.encoder(task) if task is not None else None)  # type: ignore[misc]
            return
        window: deque = deque()
        limit = 2 * self.workers + 2
        for index, task in items:
            window.append((index, self.pool.submit(run_task, task) if task is not None else None))
            # Yield in order: whatever is finished at the front, and block once the window
            # is full (bounded memory however large the input).
            while window and (len(window) > limit or window[0][1] is None or
                              window[0][1].done()):
                index_, future = window.popleft()
                yield index_, future.result() if future is not None else None
        while window:
            index_, future = window.popleft()
            yield index_, future.result() if future is not None else None

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
            self.pool = None


def _noop(x: int) -> int:
    return x


class _SampleCutter:
    """Concatenates wrapped documents and cuts fixed-length samples off the front."""

    def __init__(self, length: int, no_wrap: bool, dtype: np.dtype) -> None:
        self.length = length
        self.no_wrap = no_wrap
        self.dtype = dtype
        self.buffer = np.zeros(0, dtype=np.int64)
        self.samples = 0
        self.tokens = 0
        self._dropped = 0  # tokens discarded by no_wrap; the buffer tail is counted separately

    @property
    def dropped(self) -> int:
        return self._dropped + len(self.buffer)

    def add(self, encoded: Encoded) -> Iterator[np.ndarray]:
        tokens = encoded.tokens
        if self.no_wrap:
            # Per document: a sample is cut as soon as the buffer fills, and the remainder
            # (the tail of the document that filled it) is discarded.
            pos = 0
            buffer = self.buffer.astype(self.dtype)
            for n in encoded.doc_lens.tolist():
                buffer = np.concatenate([buffer, tokens[pos:pos + n]])
                pos += n
                if len(buffer) >= self.length:
                    yield self._emit(buffer[:self.length])
                    self._dropped += len(buffer) - self.length
                    buffer = buffer[:0]
            self.buffer = buffer.astype(np.int64)
            return
        stream = np.concatenate([self.buffer.astype(self.dtype), tokens])
        full = len(stream) // self.length
        for row in stream[:full * self.length].reshape(full, self.length):
            yield self._emit(row)
        self.buffer = stream[full * self.length:].astype(np.int64)

    def _emit(self, row: np.ndarray) -> np.ndarray:
        self.samples += 1
        self.tokens += len(row)
        return np.ascontiguousarray(row, dtype=self.dtype)


class _Totals:
    """Running totals over finished parts (reused or new)."""

    def __init__(self) -> None:
        self.documents = self.empty = self.samples = self.tokens = self.bytes = 0
        self.input_bytes = self.dropped_no_wrap = self.parts_done = 0
        self.invalid_utf8: dict[str, list[int]] = {}

    def add_marker(self, marker: dict) -> None:
        self.parts_done += 1
        self.documents += marker['documents']
        self.empty += marker['empty_documents']
        self.bytes += marker['bytes']
        self.input_bytes += marker['input_bytes']
        self.samples = marker['samples_total']
        self.tokens = marker['tokens_total']
        self.dropped_no_wrap = marker['dropped_no_wrap_total']
        for file, (count, offset) in marker['invalid_utf8'].items():
            entry = self.invalid_utf8.setdefault(file, [0, offset])
            entry[0] += count
