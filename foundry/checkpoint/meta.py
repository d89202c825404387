"""`{save_folder}/hf_meta/`: the model config and tokenizer beside a run's checkpoints, local or remote."""

from __future__ import annotations

import tempfile

from foundry.checkpoint.layout import is_remote
from foundry.export.hf import META_DIRNAME, write_run_meta


def publish_run_meta(save_folder: str, mpt_config, tokenizer) -> str:
    """Write hf_meta into a local save folder, or upload it (retried) into a remote one; returns where."""
    if not is_remote(save_folder):
        return write_run_meta(save_folder, mpt_config, tokenizer)
    from foundry.checkpoint.store import upload_folder

    target = f'{save_folder.rstrip("/")}/{META_DIRNAME}'
    with tempfile.TemporaryDirectory(prefix='foundry-hf-meta-') as tmp:
        upload_folder(write_run_meta(tmp, mpt_config, tokenizer), target)
    return target
