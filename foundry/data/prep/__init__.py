"""Offline conversion of text to MDS: one machine, many cores, run before training (data_prep/ scripts).

Nothing here imports foundry.data.stream, and nothing on this path imports torch, streaming or
transformers' models (the MDS writer is ours and byte-identical to streaming's).

Modules:
  cli             the data_prep scripts' flags and their one-line errors (conversion_parser, run_conversion)
  convert         convert(source, ...), convert_documents(...) -> ConversionSummary
  convert_output  the restartable output folder (manifest, parts, done markers, merged index)
  sources         JsonSource, TextSource, ParquetSource, IterableSource (restartable parts)
  hf_source       HFSource (any Hugging Face dataset, streamed)
  encoders        --encoder auto|hf|fast_bpe: which encoder runs, and the tokenizer spec workers load
  encode_worker   parsing and encoding in worker processes; fast_bpe: tiktoken's BPE, checked
  mds_writer      byte-identical MDS token writer
  readers         iter_documents / iter_text_documents / iter_json_documents (no tokenizing)
  demo_corpus     build_demo_data, train_demo_tokenizer (the corpus behind `make demo`)
  finetuning/     convert_finetuning (examples -> MDS), its command line, the demo instruction data
"""
