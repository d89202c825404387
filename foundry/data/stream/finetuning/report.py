"""The packing report for a finetuning source (errors are one line, exit status 2):

  python -m foundry.data.stream.finetuning.report DATASET --tokenizer T --max_seq_len N [...]

It loads the source with the loader's own steps (resolve_settings, load_examples), so the padding
it reports is what training with the same settings sees.
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.command_line import OneLineArgumentParser, fail
from foundry.data.errors import DataError
from foundry.data.finetuning.flags import add_common_flags, tokenizer_from_args

__all__ = ['report_main']


def report_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog='python -m foundry.data.stream.finetuning.report',
        description='How much padding packing saves on a finetuning source.')
    parser.add_argument('dataset', help='file, folder, or datasets name')
    parser.add_argument('--batch_size', type=int, default=8, help='rows per device batch')
    parser.add_argument('--packing_ratio', default='auto', help='a number >= 1 or auto')
    add_common_flags(parser)
    args = parser.parse_args(argv)
    from foundry.data.stream.finetuning.loader import load_examples, resolve_settings
    from foundry.data.stream.finetuning.packing import auto_packing_ratio, packing_report

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
        examples, stats = load_examples(ds, tokenizer_from_args(args))
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
    sys.exit(report_main(sys.argv[1:]))
