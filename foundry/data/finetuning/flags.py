"""The flags the finetuning converter and the packing report share, and the tokenizer they name."""

from __future__ import annotations

import json

from foundry.data.command_line import OneLineArgumentParser
from foundry.data.errors import DataError

__all__ = ['add_common_flags', 'tokenizer_from_args']


def add_common_flags(parser: OneLineArgumentParser) -> None:
    parser.add_argument('--tokenizer', required=True,
                        help='tokenizer.json path, saved tokenizer folder or hub id')
    parser.add_argument('--tokenizer_kwargs', default=None, help='JSON object for the tokenizer')
    parser.add_argument('--max_seq_len', type=int, required=True,
                        help='longest example kept whole (see --overlong)')
    parser.add_argument('--split', default='train',
                        help='split of a folder or datasets source (default: train)')
    parser.add_argument('--overlong', choices=('truncate', 'drop', 'error'), default='truncate',
                        help='examples longer than --max_seq_len (default: truncate)')
    parser.add_argument('--preprocessing_fn', default=None,
                        help='"package.module:function" mapping a raw row to prompt/response '
                        'or messages')
    parser.add_argument('--data_files', nargs='*', default=None,
                        help='files for a datasets builder given as --dataset (json, parquet)')


def tokenizer_from_args(args):
    from foundry.data.tokenizer import build_tokenizer

    kwargs = None
    if args.tokenizer_kwargs:
        try:
            kwargs = json.loads(args.tokenizer_kwargs)
        except ValueError as err:
            raise DataError(f'--tokenizer_kwargs is not JSON: {err}') from err
    return build_tokenizer(args.tokenizer, kwargs)
