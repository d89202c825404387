"""Convert folders of .txt files (one document per file, local or s3://) into tokenized MDS.

Example:
    python data_prep/convert_text_to_mds.py --path my_texts/ --out_root my-mds \
        --concat_tokens 2048 --tokenizer EleutherAI/gpt-neox-20b --compression zstd

Files are read in sorted path order, recursively, so reruns give identical datasets. As in
llm-foundry, output goes to --out_root itself unless --split names a subfolder. Invalid UTF-8
is replaced by U+FFFD and counted per file in the summary (--strict_utf8 fails instead).
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.prep.cli import conversion_parser, run_conversion
from foundry.data.prep.sources import TextSource


def main(argv: Sequence[str] | None = None) -> int:
    parser = conversion_parser(__doc__.splitlines()[0], default_split=None)
    args = parser.parse_args(argv)
    return run_conversion(args, lambda part_bytes: TextSource(args.path, part_bytes),
                          prog=parser.prog)


if __name__ == '__main__':
    sys.exit(main())
