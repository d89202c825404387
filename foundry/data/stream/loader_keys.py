"""The valid keys, with defaults, of a `train_loader` / `eval_loader` section (llm-foundry's).

The config validator checks user YAML against these tables (a default of None accepts any
value; any other default also fixes the value's type) and reports unknown keys with the
nearest valid one. `build_text_dataloader` checks them too, so it is safe to call directly.
"""

from __future__ import annotations

import difflib
from typing import Any, Mapping

from foundry.data.errors import DataError

__all__ = ['TEXT_LOADER_KEYS', 'TEXT_DATASET_KEYS', 'STREAM_KEYS', 'TOKEN_ENCODING_TYPES',
           'FINETUNING_LOADER_KEYS', 'FINETUNING_DATASET_KEYS', 'with_defaults']

# Keys of the loader section itself (besides `name: text`), passed to torch's DataLoader.
TEXT_LOADER_KEYS: dict[str, Any] = {
    'dataset': None,            # required: the mapping below
    'drop_last': True,
    'num_workers': 8,
    'pin_memory': True,
    'prefetch_factor': 2,       # only used when num_workers > 0
    'persistent_workers': True,  # only used when num_workers > 0
    'timeout': 0.0,
}

# Keys of `dataset:`; all but the last three are streaming.StreamingDataset arguments.
TEXT_DATASET_KEYS: dict[str, Any] = {
    'remote': None,
    'local': None,              # omitted with a remote URL: a per-run cache dir is chosen
    'split': None,
    'streams': None,            # {name: STREAM_KEYS mapping}
    'shuffle': False,
    'shuffle_seed': 9176,
    'shuffle_algo': 'py1e',
    'shuffle_block_size': None,
    'num_canonical_nodes': None,
    'predownload': None,
    'cache_limit': None,
    'sampling_method': 'balanced',
    'sampling_granularity': 1,
    'partition_algo': 'relaxed',
    'batching_method': 'random',
    'epoch_size': None,
    'download_retry': 2,
    'download_timeout': 60.0,
    'validate_hash': None,
    'keep_zip': False,
    'replication': None,
    'allow_unsafe_types': False,
    'max_seq_len': None,        # required: tokens per sample given to the model
    'eos_token_id': None,       # document boundary for sequence_id; default: tokenizer eos
    'bos_token_id': None,       # alternatively, documents start with this token
    'token_encoding_type': None,  # dtype of legacy raw-`bytes` token columns, e.g. 'int64'
}

# Keys of each entry under `dataset.streams`; all are streaming.Stream arguments.
STREAM_KEYS: dict[str, Any] = {
    'remote': None,
    'local': None,
    'split': None,              # default: dataset.split
    'proportion': None,         # at most one of proportion / repeat / choose
    'repeat': None,
    'choose': None,
    'download_retry': None,
    'download_timeout': None,
    'validate_hash': None,
    'keep_zip': None,
}

# `name: finetuning` (foundry/data/stream/finetuning/): the same loader keys, and llm-foundry's
# finetuning dataset keys. Data comes from `hf_name` (a file, folder or `datasets` name) or
# from MDS written by data_prep/convert_finetuning_dataset.py (`remote`/`local`).
FINETUNING_LOADER_KEYS: dict[str, Any] = dict(TEXT_LOADER_KEYS)

FINETUNING_DATASET_KEYS: dict[str, Any] = {
    'hf_name': None,            # .jsonl/.json/.parquet file, folder, datasets builder or hub name
    'hf_kwargs': None,          # passed to datasets.load_dataset (e.g. data_files)
    'remote': None,             # MDS from convert_finetuning_dataset.py
    'local': None,
    'split': None,
    'max_seq_len': None,        # required
    'decoder_only_format': True,  # MPT is decoder-only; false (encoder-decoder) is refused
    'allow_pad_trimming': False,  # cut each batch to its longest row
    'shuffle': False,
    'shuffle_seed': 9176,
    'packing_ratio': None,      # examples per row: a number >= 1 or 'auto'; unset: no packing
    'target_prompts': 'none',   # none | all | length>=N
    'target_responses': 'last',  # last | all
    'preprocessing_fn': None,   # 'package.module:function' mapping a raw row to prompt/response
    'chat_template': None,      # Jinja template for `messages`; default: the tokenizer's, else ChatML
    'overlong': 'truncate',     # examples over max_seq_len: truncate | drop | error
    # streaming.StreamingDataset arguments for MDS data:
    'predownload': None,
    'cache_limit': None,
    'download_retry': 2,
    'download_timeout': 60.0,
    'num_canonical_nodes': None,
    'shuffle_algo': 'py1e',
    'shuffle_block_size': None,
    'epoch_size': None,
}

TOKEN_ENCODING_TYPES = ('int8', 'int16', 'int32', 'int64', 'uint8', 'uint16', 'uint32', 'uint64')


def with_defaults(section: Mapping[str, Any] | None, table: Mapping[str, Any], path: str) -> dict:
    """``section`` with unknown keys rejected (nearest valid key named) and defaults filled.

    A value of None means "use the default", as it does in YAML.
    """
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise DataError(f'`{path}` must be a mapping, not {section!r}.')
    out = dict(table)
    for key, value in section.items():
        if key not in table:
            close = difflib.get_close_matches(str(key), list(table), n=1)
            hint = f'; did you mean `{path}.{close[0]}`?' if close else \
                f'; valid keys: {", ".join(sorted(table))}'
            raise DataError(f'unknown key `{path}.{key}`{hint}')
        if value is not None:
            out[key] = value
    return out
