"""Finetuning data (``train_loader.name: finetuning``): prompt/response and chat examples,
labels on responses only, packing several examples per sequence.

What both the converter (foundry.data.prep.finetuning) and the loader
(foundry.data.stream.finetuning, which also reads raw files directly) need lives here:
  examples   the two example formats, checked; chat -> (prompt, response) turns; templates
  sources    reading raw examples from JSONL/JSON/Parquet files, folders, ``datasets``
  tokenize   turns -> token ids + turn lengths; labels_for (target_prompts/responses); overlong
  flags      the command-line flags the converter and the packing report share

Conversion (foundry.data.prep.finetuning):
  convert    convert_finetuning (data_prep/convert_finetuning_dataset.py)
  cli        the converter's command line
  demo_data  the demo instruction data (launch/demo_finetune.py)

Loading (foundry.data.stream.finetuning):
  loader     build_finetuning_dataloader (what build_text_dataloader calls for this name)
  collator   FinetuningCollator (padded or packed batches with per-example sequence_id)
  packing    bin packing, packing_ratio auto, the padding report
  settings   the loader section's keys and checks
  mds        the MDS reader (StreamingFinetuningDataset)
  report     `python -m foundry.data.stream.finetuning.report` (the packing report for a source)
"""
