"""The data path: tokenizers, text-to-MDS conversion, streaming datasets, the demo corpus.

Modules (imported lazily, so ``import foundry.data`` stays cheap):
  tokenizer     build_tokenizer(name, kwargs), TokenizerFile (tokenizers only)
  convert       convert(source, ...), convert_documents(...) -> ConversionSummary
  convert_output  the restartable output folder (manifest, parts, done markers, merged index)
  sources       JsonSource, TextSource, ParquetSource, IterableSource (restartable parts)
  hf_source     HFSource (any Hugging Face dataset, streamed)
  readers       iter_documents / iter_text_documents / iter_json_documents (no tokenizing)
  mixture       describe_mixture (what `foundry info` prints about streams)
  mds_index     index checks and token counts; mds_writer: byte-identical MDS token writer
  text_dataset  StreamingTextDataset, build_text_dataloader, *_KEYS tables
  collator      TextCollator (input_ids, labels, attention_mask, sequence_id)
  demo_corpus   build_demo_data, train_demo_tokenizer
  errors        DataError
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    'DataError': 'errors',
    'build_tokenizer': 'tokenizer',
    'convert_documents': 'convert',
    'convert': 'convert',
    'JsonSource': 'sources',
    'TextSource': 'sources',
    'ParquetSource': 'sources',
    'HFSource': 'hf_source',
    'IterableSource': 'sources',
    'iter_documents': 'readers',
    'describe_mixture': 'mixture',
    'ConversionSummary': 'convert',
    'iter_text_documents': 'readers',
    'iter_json_documents': 'readers',
    'StreamingTextDataset': 'text_dataset',
    'build_text_dataloader': 'text_dataset',
    'TEXT_LOADER_KEYS': 'loader_keys',
    'TEXT_DATASET_KEYS': 'loader_keys',
    'STREAM_KEYS': 'loader_keys',
    'TextCollator': 'collator',
    'build_demo_data': 'demo_corpus',
    'train_demo_tokenizer': 'demo_corpus',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f'foundry.data.{_EXPORTS[name]}'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
