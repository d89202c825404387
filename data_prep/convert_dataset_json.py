"""Convert JSON / JSON Lines files (also .gz / .zst, local or s3://) into a tokenized MDS dataset.

Example:
    python data_prep/convert_dataset_json.py --path data/train.jsonl --out_root my-mds \
        --split train --concat_tokens 2048 --tokenizer EleutherAI/gpt-neox-20b --compression zstd

Each record's --text_field (default 'text') is one document. Flags match llm-foundry's script;
--eos_text defaults to the tokenizer's eos token so document boundaries are always recorded.
Tokenization runs on every core (--workers); an interrupted run, rerun with the same flags,
resumes at the first unfinished part. --out_root may be s3://bucket/prefix.
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.prep.cli import conversion_parser, run_conversion
from foundry.data.prep.sources import JsonSource


def main(argv: Sequence[str] | None = None) -> int:
    parser = conversion_parser(__doc__.splitlines()[0], default_split='train')
    parser.add_argument('--text_field', default='text',
                        help='field of each record that holds the document (default: text)')
    args = parser.parse_args(argv)
    return run_conversion(args, lambda part_bytes: JsonSource(args.path, args.text_field,
                                                              part_bytes), prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
