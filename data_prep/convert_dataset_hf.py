"""Convert any Hugging Face dataset (streamed, never fully downloaded) into tokenized MDS.

Examples:
    python data_prep/convert_dataset_hf.py --dataset allenai/c4 --data_subset en \
        --splits train --out_root s3://my-bucket/c4 --concat_tokens 2048 \
        --tokenizer EleutherAI/gpt-neox-20b --eos_text '<|endoftext|>' --compression zstd
    python data_prep/convert_dataset_hf.py --dataset bigcode/the-stack --text_field content ...
    python data_prep/convert_dataset_hf.py --dataset json --data_files 'data/*.jsonl' ...
    python data_prep/convert_dataset_hf.py --dataset ./my_local_dataset_folder ...

--dataset is a hub name, a packaged builder (json, parquet, text, csv) with --data_files, or a
local folder of data files. Each split goes to out_root/SPLIT. Local JSON / Parquet files are
read by foundry's own readers (the same documents in the same order as datasets gives, several
times faster); everything else is read in datasets' streaming mode, one restartable part per data
shard, so corpora larger than the disk convert and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.prep.cli import conversion_parser, fail, run_conversion
from foundry.data.prep.hf_source import HFSource


def main(argv: Sequence[str] | None = None) -> int:
    parser = conversion_parser(__doc__.splitlines()[0], default_split=None, needs_path=False)
    parser.add_argument('--dataset', required=True,
                        help='hub name, packaged builder (json/parquet/text/csv) or local folder')
    parser.add_argument('--data_subset', default=None,
                        help="the dataset's config name, e.g. 'en' for allenai/c4")
    parser.add_argument('--splits', nargs='+', default=['train'],
                        help='splits to convert (default: train); each goes to out_root/SPLIT')
    parser.add_argument('--text_field', default='text',
                        help='field that holds each document, e.g. text or content')
    parser.add_argument('--data_files', nargs='+', default=None,
                        help='data files for packaged builders such as json or parquet')
    parser.add_argument('--trust_remote_code', action='store_true',
                        help='allow datasets that run their own loading script')
    args = parser.parse_args(argv)
    if args.split is not None:
        fail('use --splits (one or more) with convert_dataset_hf.py; each split is written to '
             'out_root/SPLIT.', parser.prog)
    data_files = args.data_files[0] if args.data_files and len(args.data_files) == 1 \
        else args.data_files
    for split in args.splits:
        args.split = split
        run_conversion(args, lambda _part_bytes, split=split: HFSource(
            args.dataset, args.data_subset, split, args.text_field, data_files,
            args.trust_remote_code), prog=parser.prog)
    return 0


if __name__ == '__main__':
    sys.exit(main())
