"""Convert JSON / JSON Lines files (optionally .gz) into a tokenized MDS dataset.

Example:
    python data_prep/convert_dataset_json.py --path data/train.jsonl --out_root my-mds \
        --split train --concat_tokens 2048 --tokenizer EleutherAI/gpt-neox-20b --compression zstd

Each record's --text_field (default 'text') is one document. Flags match llm-foundry's script;
--eos_text defaults to the tokenizer's eos token so document boundaries are always recorded.
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.cli import conversion_parser, run_conversion
from foundry.data.readers import iter_json_documents


def main(argv: Sequence[str] | None = None) -> int:
    parser = conversion_parser(__doc__.splitlines()[0], default_split='train')
    parser.add_argument('--text_field', default='text',
                        help='field of each record that holds the document (default: text)')
    args = parser.parse_args(argv)
    return run_conversion(args, lambda: iter_json_documents(args.path, args.text_field),
                          prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
