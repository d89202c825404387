"""Shared command-line plumbing for the data_prep conversion scripts.

Flag names match llm-foundry's scripts so existing commands keep working. User mistakes (a
bad flag, a missing file, a malformed record) end the script with exit code 2 and one line on
stderr, never a traceback: the traceback is noise and hides the one line that says what to fix.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import sys
import warnings
from typing import Callable

from foundry.data.command_line import OneLineArgumentParser, fail
from foundry.data.errors import DataError
from foundry.data.sizes import parse_size

__all__ = ['OneLineArgumentParser', 'conversion_parser', 'run_conversion', 'output_dir', 'fail',
           'parse_size']


def conversion_parser(description: str, default_split: str | None,
                      needs_path: bool = True) -> OneLineArgumentParser:
    """Parser with the flags every text-to-MDS conversion takes (llm-foundry's names)."""
    parser = OneLineArgumentParser(description=description, allow_abbrev=False)
    if needs_path:
        parser.add_argument('--path', required=True,
                            help='input file or folder, local or s3://bucket/prefix')
    parser.add_argument('--out_root', required=True,
                        help='output folder or remote URL (s3://bucket/prefix)')
    parser.add_argument('--split', default=default_split,
                        help='write to out_root/SPLIT' + (f' (default {default_split})'
                                                          if default_split else
                                                          ' (default: out_root itself)'))
    parser.add_argument('--concat_tokens', type=int, required=True,
                        help='tokens per sample; usually the training max_seq_len')
    parser.add_argument('--tokenizer', required=True,
                        help='hub id, tokenizer directory, or tokenizer.json path')
    parser.add_argument('--tokenizer_kwargs', default=None,
                        help='JSON object passed to the tokenizer constructor')
    parser.add_argument('--bos_text', default='', help='text before each document')
    parser.add_argument('--eos_text', default=None,
                        help="text after each document (default: the tokenizer's eos token; "
                        "'' for none)")
    parser.add_argument('--no_wrap', action='store_true',
                        help='do not let a document continue into the next sample (its tail '
                        'is dropped), as in llm-foundry')
    parser.add_argument('--compression', default=None, help="shard compression, e.g. 'zstd'")
    parser.add_argument('--workers', type=int, default=None,
                        help='tokenizer processes (default 0: tokenize in this process on the '
                        "Rust tokenizer's thread pool, which uses every core; N: N worker "
                        'processes that also parse the input)')
    parser.add_argument('--part_size', default='256MB',
                        help='input bytes per restartable part (default 256MB)')
    parser.add_argument('--strict_utf8', action='store_true',
                        help='fail on invalid UTF-8 (naming file and byte offset) instead of '
                        'replacing it with U+FFFD and counting it in the summary')
    parser.add_argument('--encoder', default='auto', choices=('auto', 'hf', 'fast_bpe'),
                        help="auto (default): tiktoken's BPE when the tokenizer is a byte-level BPE "
                        'it reproduces (GPT-2/GPT-NeoX family; several times faster, checked '
                        'against the tokenizer on the first 64 documents and every 128th after '
                        'them), else the Hugging Face tokenizer; hf or fast_bpe forces one')
    parser.add_argument('--fast_bpe', action='store_true',
                        help='the same as --encoder fast_bpe (kept for earlier commands)')
    parser.add_argument('--no_progress', action='store_true', help='hide the progress bar')
    return parser


def output_dir(out_root: str, split: str | None) -> str:
    """``out_root/split`` for local folders and remote URLs alike."""
    if not split:
        return out_root
    if '://' in out_root:
        return posixpath.join(out_root, split)
    return os.path.join(out_root, split)


def run_conversion(args: argparse.Namespace, make_source: Callable[[int], object],
                   prog: str | None = None) -> int:
    """Build the tokenizer and the source, convert, and turn user errors into one line.

    ``make_source(part_bytes)`` returns a ``foundry.data.prep.sources.Source``.
    """
    # A warning is one line for a user at a terminal, not Python's file:line and source excerpt;
    # catch_warnings puts the process's own display back afterwards (tests call this in-process).
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: print(
            f'{prog or "convert"}: warning: {message}', file=sys.stderr)
        _convert_or_fail(args, make_source, prog)
    return 0


def _convert_or_fail(args: argparse.Namespace, make_source: Callable[[int], object],
                     prog: str | None) -> None:
    from foundry.data.prep.convert import convert
    from foundry.data.tokenizer import load_for_conversion

    out = output_dir(args.out_root, args.split)
    created = _first_missing_folder(out) if '://' not in out else None
    try:
        _convert(args, make_source, out, prog, convert, load_for_conversion)
    except BaseException:
        if created is not None:
            _remove_if_nothing_finished(created)
        raise


def _first_missing_folder(path: str) -> str | None:
    """The outermost folder of `path` that does not exist yet (what this conversion would create), or None."""
    path = os.path.abspath(path)
    if os.path.exists(path):
        return None
    while not os.path.exists(os.path.dirname(path)) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def _remove_if_nothing_finished(out: str) -> None:
    """A refused conversion leaves no output folder behind, unless a part finished (a rerun resumes from it)."""
    import shutil

    if not os.path.isdir(out):
        return
    for _, _, files in os.walk(out):
        if 'done.json' in files or 'index.json' in files:
            return
    shutil.rmtree(out, ignore_errors=True)


def _convert(args: argparse.Namespace, make_source: Callable[[int], object], out: str, prog: str | None,
             convert, load_for_conversion) -> None:
    try:
        kwargs = json.loads(args.tokenizer_kwargs) if args.tokenizer_kwargs else None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise DataError('--tokenizer_kwargs must be a JSON object, e.g. '
                            '\'{"model_max_length": 2048}\'.')
        if args.workers is not None and args.workers < 0:
            raise DataError(f'--workers must be >= 0, got {args.workers}.')
        tokenizer = load_for_conversion(args.tokenizer, kwargs)
        source = make_source(parse_size(args.part_size))
        convert(source, out, tokenizer, args.concat_tokens,
                bos_text=args.bos_text, eos_text=args.eos_text, no_wrap=args.no_wrap,
                compression=args.compression, workers=args.workers,
                strict_utf8=args.strict_utf8, fast_bpe=args.fast_bpe, encoder=args.encoder,
                progress=not args.no_progress)
    except json.JSONDecodeError as err:
        fail(f'--tokenizer_kwargs is not valid JSON ({err.msg}).', prog)
    except DataError as err:
        fail(str(err), prog)
    except KeyboardInterrupt:
        fail('interrupted. Finished parts are kept: rerun the same command to resume from the '
             'first unfinished part.', prog)
