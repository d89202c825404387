"""foundry: pretrain MPT-style language models with Composer."""

__version__ = "0.1.0"
