"""Convert a folder of .txt files (one document per file) into a tokenized MDS dataset.

Example:
    python data_prep/convert_text_to_mds.py --path my_texts/ --out_root my-mds \
        --concat_tokens 2048 --tokenizer EleutherAI/gpt-neox-20b --compression zstd

Files are read in sorted path order, recursively, so reruns give identical datasets. As in
llm-foundry, output goes to --out_root itself unless --split names a subfolder.
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.cli import conversion_parser, run_conversion
from foundry.data.readers import iter_text_documents


def main(argv: Sequence[str] | None = None) -> int:
    parser = conversion_parser(__doc__.splitlines()[0], default_split=None)
    args = parser.parse_args(argv)
    return run_conversion(args, lambda: iter_text_documents(args.path), prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
