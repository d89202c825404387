"""The data path, in two programs that never import each other, and what both need.

  prep/     offline conversion to MDS (one machine, many cores): converters, sources, the
            encoders, the MDS writer, the demo corpus; data_prep/ scripts are thin wrappers
  stream/   what training reads on every rank: StreamingTextDataset, build_text_dataloader,
            collators, mixtures, caches, shared-memory guard
  shared:   tokenizer (build_tokenizer, TokenizerFile), errors (DataError), sizes (parse_size),
            objstore (s3:// and local paths), command_line (one-line argparse errors),
            finetuning/ (example formats, raw sources, tokenizing: used by both)

Names below are imported lazily, so ``import foundry.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'DataError': 'errors',
    'build_tokenizer': 'tokenizer',
    'parse_size': 'sizes',
    'convert_documents': 'prep.convert',
    'convert': 'prep.convert',
    'JsonSource': 'prep.sources',
    'TextSource': 'prep.sources',
    'ParquetSource': 'prep.sources',
    'HFSource': 'prep.hf_source',
    'IterableSource': 'prep.sources',
    'iter_documents': 'prep.readers',
    'describe_mixture': 'stream.mixture',
    'ConversionSummary': 'prep.convert',
    'iter_text_documents': 'prep.readers',
    'iter_json_documents': 'prep.readers',
    'StreamingTextDataset': 'stream.text_dataset',
    'build_text_dataloader': 'stream.text_loader',
    'TEXT_LOADER_KEYS': 'stream.loader_keys',
    'TEXT_DATASET_KEYS': 'stream.loader_keys',
    'STREAM_KEYS': 'stream.loader_keys',
    'TextCollator': 'stream.collator',
    'build_demo_data': 'prep.demo_corpus',
    'train_demo_tokenizer': 'prep.demo_corpus',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'foundry.data.{_EXPORTS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
