"""What training reads: every rank streams MDS samples (local or from object storage) into batches.

Nothing here imports foundry.data.prep.

Modules:
  text_loader     build_text_dataloader (train_loader / eval_loader -> DataSpec; name: text or finetuning)
  text_dataset    StreamingTextDataset, FoundryStream, default_canonical_nodes
  loader_keys     TEXT_LOADER_KEYS, TEXT_DATASET_KEYS, STREAM_KEYS (the keys a loader section takes)
  collator        TextCollator (input_ids, labels, attention_mask, sequence_id)
  mixture         describe_mixture (what `foundry info` prints about streams)
  mds_index       index checks and token counts
  cache_dir       per-run cache folders for remote streams
  shm_guard       streaming's shared memory: one machine-wide registration lock, dead runs' leftovers
  finetuning/     name: finetuning: loader, collator, packing, settings, the MDS reader, the packing report
"""
