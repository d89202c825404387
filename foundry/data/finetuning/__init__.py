"""Finetuning data (``train_loader.name: finetuning``): prompt/response and chat examples,
labels on responses only, packing several examples per sequence.

Modules:
  examples   the two example formats, checked; chat -> (prompt, response) turns; templates
  sources    reading raw examples from JSONL/JSON/Parquet files, folders, ``datasets``
  tokenize   turns -> token ids + turn lengths; labels_for (target_prompts/responses); overlong
  packing    bin packing, packing_ratio auto, the padding report
  collator   FinetuningCollator (padded or packed batches with per-example sequence_id)
  loader     build_finetuning_dataloader (what build_text_dataloader calls for this name)
  mds        convert_finetuning (data_prep/convert_finetuning_dataset.py) and the MDS reader
  cli        the converter and `python -m foundry.data.finetuning.cli report` (packing report)
"""
