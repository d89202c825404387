"""Build the demo corpus (stdlib docstrings + stdlib code), its tokenizer, and MDS datasets.

Example:
    python data_prep/build_demo_corpus.py --out_root demo_out/data --seq_len 128

Reruns skip every step whose inputs have not changed. See foundry/data/prep/demo_corpus.py.
"""

from __future__ import annotations

import sys
from typing import Sequence

from foundry.data.errors import DataError
from foundry.data.prep.cli import OneLineArgumentParser, fail


def main(argv: Sequence[str] | None = None) -> int:
    parser = OneLineArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument('--out_root', required=True, help='folder for corpus, tokenizer, MDS')
    parser.add_argument('--seq_len', type=int, default=512, help='tokens per MDS sample')
    parser.add_argument('--max_bytes_per_stream', type=int, default=3_000_000,
                        help='UTF-8 bytes of text per stream')
    parser.add_argument('--vocab_size', type=int, default=8192, help='size of the trained BPE')
    parser.add_argument('--tokenizer', default=None,
                        help='use this tokenizer instead of training one')
    args = parser.parse_args(argv)

    from foundry.data.prep.demo_corpus import build_demo_data
    try:
        build_demo_data(args.out_root, tokenizer_path=args.tokenizer, seq_len=args.seq_len,
                        max_bytes_per_stream=args.max_bytes_per_stream,
                        vocab_size=args.vocab_size)
    except DataError as err:
        fail(str(err), parser.prog)
    return 0


if __name__ == '__main__':
    sys.exit(main())
