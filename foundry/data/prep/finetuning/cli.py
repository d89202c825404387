"""The finetuning converter's command line (errors are one line, exit status 2):

  data_prep/convert_finetuning_dataset.py   a finetuning source -> tokenized MDS (local or s3://)

The packing report is foundry.data.stream.finetuning.report (it runs the loader's own steps).
"""

from __future__ import annotations

from typing import Sequence

from foundry.data.command_line import OneLineArgumentParser, fail
from foundry.data.errors import DataError
from foundry.data.finetuning.flags import add_common_flags, tokenizer_from_args
from foundry.data.prep.cli import output_dir

__all__ = ['convert_main']


def convert_main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(
        prog='convert_finetuning_dataset.py',
        description='Tokenize prompt/response or chat examples (JSONL, JSON, Parquet, a folder '
        'or a datasets name) into MDS for train_loader.name: finetuning.')
    parser.add_argument('--dataset', required=True, help='file, folder, or datasets name')
    parser.add_argument('--out_root', required=True, help='output folder or s3://bucket/prefix')
    parser.add_argument('--compression', default=None, help='e.g. zstd')
    add_common_flags(parser)
    args = parser.parse_args(argv)
    from foundry.data.prep.finetuning.convert import convert_finetuning

    out = output_dir(args.out_root, args.split)
    try:
        summary = convert_finetuning(
            args.dataset, out, tokenizer_from_args(args), split=args.split, max_seq_len=args.max_seq_len,
            overlong=args.overlong,
            hf_kwargs={'data_files': args.data_files} if args.data_files else None,
            preprocessing_fn=args.preprocessing_fn, compression=args.compression)
    except DataError as err:
        fail(str(err), prog=parser.prog)
    for line in summary.lines(args.max_seq_len):
        print(line)
    return 0
