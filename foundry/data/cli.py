"""Shared command-line plumbing for the data_prep conversion scripts.

Flag names match llm-foundry's scripts so existing commands keep working. User mistakes (a
bad flag, a missing file, a malformed record) end the script with exit code 2 and one line on
stderr, never a traceback: the traceback is noise and hides the one line that says what to fix.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import posixpath
import re
import sys
from typing import Callable, Iterable, NoReturn

from foundry.data.errors import DataError

__all__ = ['OneLineArgumentParser', 'conversion_parser', 'run_conversion', 'output_dir', 'fail']


class OneLineArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, with a nearest-flag hint for typos."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        # argparse reports missing required flags before unknown ones, so a typo such as
        # --pth would be reported as "--path is required"; name the typo first instead.
        argv = sys.argv[1:] if args is None else list(args)
        known = {opt for action in self._actions for opt in action.option_strings}
        unknown = [a.split('=', 1)[0] for a in argv
                   if a.startswith('--') and a != '--' and a.split('=', 1)[0] not in known]
        if unknown:
            self.error(f'unrecognized arguments: {" ".join(unknown)}')
        return super().parse_args(argv, namespace)

    def error(self, message: str) -> NoReturn:
        match = re.match(r'unrecognized arguments: (.*)', message)
        if match:
            known = [opt for action in self._actions for opt in action.option_strings]
            hints = []
            for arg in match.group(1).split():
                flag = arg.split('=', 1)[0]
                close = difflib.get_close_matches(flag, known, n=1)
                if close:
                    hints.append(f'{flag} -> {close[0]}')
            if hints:
                message += f' (did you mean: {", ".join(hints)}?)'
        fail(f'{message}; see --help', prog=self.prog)


def fail(message: str, prog: str | None = None) -> NoReturn:
    """Print ``prog: error: message`` as one line and exit with status 2."""
    prog = prog or posixpath.basename(sys.argv[0] or 'foundry')
    one_line = ' '.join(str(message).split())
    print(f'{prog}: error: {one_line}', file=sys.stderr, flush=True)
    raise SystemExit(2)


def conversion_parser(description: str, default_split: str | None) -> OneLineArgumentParser:
    """Parser with the flags every text-to-MDS conversion takes (llm-foundry's names)."""
    parser = OneLineArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument('--path', required=True, help='input file or folder')
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
    parser.add_argument('--no_progress', action='store_true', help='hide the progress bar')
    return parser


def output_dir(out_root: str, split: str | None) -> str:
    """``out_root/split`` for local folders and remote URLs alike."""
    if not split:
        return out_root
    if '://' in out_root:
        return posixpath.join(out_root, split)
    return os.path.join(out_root, split)


def run_conversion(args: argparse.Namespace, documents: Callable[[], Iterable[str]],
                   prog: str | None = None) -> int:
    """Build the tokenizer, convert ``documents()``, and turn user errors into one line."""
    from foundry.data.convert import convert_documents
    from foundry.data.tokenizer import build_tokenizer

    try:
        kwargs = json.loads(args.tokenizer_kwargs) if args.tokenizer_kwargs else None
        if kwargs is not None and not isinstance(kwargs, dict):
            raise DataError('--tokenizer_kwargs must be a JSON object, e.g. '
                            '\'{"model_max_length": 2048}\'.')
        tokenizer = build_tokenizer(args.tokenizer, kwargs)
        convert_documents(documents(), output_dir(args.out_root, args.split), tokenizer,
                          args.concat_tokens, bos_text=args.bos_text, eos_text=args.eos_text,
                          no_wrap=args.no_wrap, compression=args.compression,
                          progress=not args.no_progress)
    except json.JSONDecodeError as err:
        fail(f'--tokenizer_kwargs is not valid JSON ({err.msg}).', prog)
    except DataError as err:
        fail(str(err), prog)
    except KeyboardInterrupt:
        fail('interrupted; the partial output folder was removed.', prog)
    return 0

