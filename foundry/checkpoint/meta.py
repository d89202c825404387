"""`{save_folder}/hf_meta/`: the model config and tokenizer beside a run's checkpoints, local or remote."""

from __future__ import annotations

import os
import tempfile

from foundry.checkpoint.errors import CheckpointError
from foundry.checkpoint.layout import is_remote
from foundry.data.tokenizer import save_tokenizer

META_DIRNAME = 'hf_meta'


def write_run_meta(save_folder: str, mpt_config, tokenizer) -> str:
    """Store the model config and tokenizer beside a run's checkpoints (rank 0, at start)."""
    meta_dir = os.path.join(save_folder, META_DIRNAME)
    os.makedirs(meta_dir, exist_ok=True)
    mpt_config.save_pretrained(meta_dir)
    save_tokenizer(tokenizer, meta_dir)
    return meta_dir


def find_run_meta(checkpoint_path: str) -> str:
    """The hf_meta folder of the run that wrote `checkpoint_path` (it sits in the save folder)."""
    probe = os.path.abspath(checkpoint_path)
    for _ in range(3):
        probe = os.path.dirname(probe)
        candidate = os.path.join(probe, META_DIRNAME)
        if os.path.isfile(os.path.join(candidate, 'config.json')):
            return candidate
    raise CheckpointError(f'no {META_DIRNAME}/config.json found beside {checkpoint_path}; '
                          f'pass --meta DIR (a folder with the model config.json and tokenizer files)')


def publish_run_meta(save_folder: str, mpt_config, tokenizer) -> str:
    """Write hf_meta into a local save folder, or upload it (retried) into a remote one; returns where."""
    if not is_remote(save_folder):
        return write_run_meta(save_folder, mpt_config, tokenizer)
    from foundry.checkpoint.store import upload_folder

    target = f'{save_folder.rstrip("/")}/{META_DIRNAME}'
    with tempfile.TemporaryDirectory(prefix='foundry-hf-meta-') as tmp:
        upload_folder(write_run_meta(tmp, mpt_config, tokenizer), target)
    return target
