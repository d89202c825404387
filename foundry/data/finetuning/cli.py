"""Command lines of the finetuning data path (errors are one line, exit status 2):

  data_prep/convert_finetuning_dataset.py   a finetuning source -> tokenized MDS (local or s3://)
  python -m foundry.data.finetuning.cli report FILE ...   the packing report for a source
"""

from __future__ import annotations

import json
import sys
from typing import Sequence

from foundry.data.cli import OneLineArgumentParser, fail, output_dir
from foundry.data.errors import DataError

__all__ = ['convert_main', 'report_main']


def _common(parser: OneLineArgumentParser) -> None:
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


def _tokenizer(args):
    from foundry.data.tokenizer import build_tokenizer

    kwargs = None
    if args.tokenizer_kwargs:
        try:
            kwargs = json.loads(args.tokenizer_kwargs)
        except ValueError as err:
            raise DataError(f'--tokenizer_kwargs is not JSON: {err}') from err
    return build_tokenizer(args.tokenizer, kwargs)


def convert_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog='convert_finetuning_dataset.py',
        description='Tokenize prompt/response or chat examples (JSONL, JSON, Parquet, a folder '
        'or a datasets name) into MDS for train_loader.name: finetuning.')
    parser.add_argument('--dataset', required=True, help='file, folder, or datasets name')
    parser.add_argument('--out_root', required=True, help='output folder or s3://bucket/prefix')
    parser.add_argument('--compression', default=None, help='e.g. zstd')
    _common(parser)
    args = parser.parse_args(argv)
    from foundry.data.finetuning.mds import convert_finetuning

    out = output_dir(args.out_root, args.split)
    try:
        summary = convert_finetuning(
            args.dataset, out, _tokenizer(args), split=args.split, max_seq_len=args.max_seq_len,
            overlong=args.overlong,
            hf_kwargs={'data_files': args.data_files} if args.data_files else None,
            preprocessing_fn=args.preprocessing_fn, compression=args.compression)
    except DataError as err:
        fail(str(err), prog=parser.prog)
    for line in summary.lines(args.max_seq_len):
        print(line)
    return 0


def report_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog='python -m foundry.data.finetuning.cli report',
        description='How much padding packing saves on a finetuning source.')
    parser.add_argument('dataset', help='file, folder, or datasets name')
    parser.add_argument('--batch_size', type=int, default=8, help='rows per device batch')
    parser.add_argument('--packing_ratio', default='auto', help='a number >= 1 or auto')
    _common(parser)
    args = parser.parse_args(argv)
    from foundry.data.finetuning.loader import load_examples, resolve_settings
    from foundry.data.finetuning.packing import auto_packing_ratio, packing_report

    try:
        ratio = args.packing_ratio if args.packing_ratio == 'auto' else float(args.packing_ratio)
    except ValueError:
        fail(f'--packing_ratio {args.packing_ratio!r} is not a number or auto', prog=parser.prog)
    try:
        _, ds = resolve_settings({'dataset': {
            'hf_name': args.dataset, 'split': args.split, 'max_seq_len': args.max_seq_len,
            'overlong': args.overlong, 'preprocessing_fn': args.preprocessing_fn,
            'packing_ratio': ratio,
            'hf_kwargs': {'data_files': args.data_files} if args.data_files else None}})
        examples, stats = load_examples(ds, _tokenizer(args))
    except DataError as err:
        fail(str(err), prog=parser.prog)
    lengths = [len(e.input_ids) for e in examples]
    auto = ratio == 'auto'
    if auto:
        ratio, sims = auto_packing_ratio(lengths, args.batch_size, args.max_seq_len)
        print('ratio  padding  waiting tokens  waste')
        for sim in sims:
            print(f'{sim.ratio:5g}  {100 * sim.padding:6.1f}%  {sim.waiting_tokens:14,}  '
                  f'{100 * sim.waste:5.1f}%')
    print(f'{args.dataset}: {stats.summary(args.max_seq_len)}; formats {stats.formats}')
    print(f'lengths: mean {sum(lengths) / len(lengths):.1f}, max {max(lengths)} tokens')
    for line in packing_report(lengths, args.batch_size, args.max_seq_len, float(ratio),
                               auto).lines():
        print(line)
    return 0


if __name__ == '__main__':
    if len(sys.argv) < 2 or sys.argv[1] != 'report':
        print('usage: python -m foundry.data.finetuning.cli report DATASET --tokenizer T '
              '--max_seq_len N [...]', file=sys.stderr)
        sys.exit(2)
    sys.exit(report_main(sys.argv[2:]))
