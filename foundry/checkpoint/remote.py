"""Fetch a checkpoint from an object store (s3://, gs://, oci://) to local disk.

`download_checkpoint(uri)` accepts what a run's save folder holds remotely:

    s3://bucket/run/ckpt/ep0-ba8                   a sharded checkpoint (folder of .distcp + .metadata)
    s3://bucket/run/ckpt/ep0-ba8-rank0.pt          a full checkpoint (one torch.save file)
    s3://bucket/run/ckpt/latest-rank0.pt[.symlink] Composer's pointer to the last one

and returns the local path of the checkpoint. The save folder's `hf_meta/` (model config and
tokenizer, written by every run) comes along beside it, so `foundry export hf` finds it the
way it does for a local save folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
from typing import Optional

from foundry.checkpoint.errors import CheckpointError
from foundry.checkpoint.layout import METADATA, parse_name
from foundry.checkpoint.meta import META_DIRNAME
from foundry.checkpoint.store import object_store_for

log = logging.getLogger(__name__)


def download_checkpoint(uri: str, local_root: Optional[str] = None) -> str:
    """Download the checkpoint `uri` (and its run's hf_meta) under `local_root`; return its local path."""
    store, key = object_store_for(uri)
    base = uri[:len(uri) - len(key)] if key and uri.endswith(key) else uri.rstrip('/') + '/'
    keys = store.list_objects(key)
    target = _resolve(store, key, keys, uri)
    root = local_root or tempfile.mkdtemp(prefix='foundry-checkpoint-')
    parent, _, name = target.rpartition('/')
    local_parent = os.path.join(root, os.path.basename(parent) or 'save_folder')
    local = os.path.join(local_parent, name)

    folder_keys = [k for k in store.list_objects(target + '/') if not k.endswith('/')]
    if folder_keys:
        for k in folder_keys:
            dest = os.path.join(local, *k[len(target) + 1:].split('/'))
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            store.download_object(k, dest, overwrite=True)
        kind = 'sharded' if os.path.exists(os.path.join(local, METADATA)) else 'folder'
    else:
        os.makedirs(local_parent, exist_ok=True)
        try:
            store.download_object(target, local, overwrite=True)
        except FileNotFoundError:
            raise CheckpointError(f'checkpoint not found: {base}{target}') from None
        kind = 'file'

    meta_prefix = f'{parent}/{META_DIRNAME}/' if parent else f'{META_DIRNAME}/'
    meta_keys = [k for k in store.list_objects(meta_prefix) if not k.endswith('/')]
    for k in meta_keys:
        dest = os.path.join(local_parent, META_DIRNAME, *k[len(meta_prefix):].split('/'))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        store.download_object(k, dest, overwrite=True)
    log.info('downloaded %s checkpoint %s%s to %s (%s)', kind, base, target, local,
             f'with {META_DIRNAME}' if meta_keys else f'no {META_DIRNAME} beside it')
    return local


def _resolve(store, key: str, keys: list[str], uri: str) -> str:
    """The key (file) or key prefix (folder) of the checkpoint `key` names, following .symlink pointers."""
    keyset = set(keys)
    for candidate in ((key,) if key.endswith('.symlink') else (key + '.symlink',)):
        if candidate in keyset:
            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, 'pointer.symlink')
                store.download_object(candidate, local)
                with open(local) as f:
                    pointed = f.read().strip().strip('/')
            log.info('%s points to %s', candidate, pointed)
            return pointed
    if key in keyset or any(k.startswith(key + '/') for k in keys):
        return key
    hint = ''
    name = key.rsplit('/', 1)[-1]
    if parse_name(name) is None and not name.startswith('latest'):
        hint = ' (expected a checkpoint such as .../ep0-ba8, .../ep0-ba8-rank0.pt or .../latest-rank0.pt)'
    raise CheckpointError(f'checkpoint not found: {uri}{hint}')
