"""``train_loader.name: finetuning`` at training time: loader, collator, packing, settings, the MDS reader.

loader: build_finetuning_dataloader (called by build_text_dataloader for this name); report: the packing
report (`python -m foundry.data.stream.finetuning.report`). See foundry.data.finetuning for the modules
shared with the converter.
"""
