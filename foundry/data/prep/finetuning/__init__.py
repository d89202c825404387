"""Finetuning examples -> MDS (data_prep/convert_finetuning_dataset.py) and the demo instruction data.

convert: convert_finetuning; cli: its command line; demo_data: build_instruction_data (launch/demo_finetune.py).
The example formats, raw sources and tokenizing it uses are shared with the loader (foundry.data.finetuning).
"""
