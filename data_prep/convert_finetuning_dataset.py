"""Convert finetuning examples (prompt/response or chat) into tokenized MDS for name: finetuning.

Example:
    python data_prep/convert_finetuning_dataset.py --dataset data/instruct.jsonl \
        --out_root s3://bucket/instruct-mds --split train --max_seq_len 2048 \
        --tokenizer ../shared/tokenizers/gpt-neox-20b/tokenizer.json

--dataset is a .jsonl/.json/.parquet file, a folder of them ({split}.jsonl or {split}/), a
datasets builder (json, parquet) with --data_files, or a Hugging Face dataset name. Each sample
stores input_ids and turn_lengths; the loader labels the targeted turns at training time.
Train from it with train_loader.dataset.remote/local (and split).
"""

from __future__ import annotations

import sys

from foundry.data.prep.finetuning.cli import convert_main

if __name__ == '__main__':
    sys.exit(convert_main())
