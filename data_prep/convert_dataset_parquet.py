"""Convert Parquet files (a file or a folder, local or s3://) into a tokenized MDS dataset.

Example:
    python data_prep/convert_dataset_parquet.py --path data/parquet/ --out_root my-mds \
        --split train --concat_tokens 2048 --tokenizer EleutherAI/gpt-neox-20b --text_field text

--text_field names the string column holding each document (e.g. text or content).
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.prep.cli import conversion_parser, run_conversion
from foundry.data.prep.sources import ParquetSource


def main(argv: Sequence[str] | None = None) -> int:
    parser = conversion_parser(__doc__.splitlines()[0], default_split='train')
    parser.add_argument('--text_field', default='text',
                        help='column that holds the document (default: text)')
    args = parser.parse_args(argv)
    return run_conversion(args, lambda part_bytes: ParquetSource(args.path, args.text_field,
                                                                 part_bytes), prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
