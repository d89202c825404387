"""Object-store transfers for foundry's own files (run metadata, Hugging Face folders).

Composer's object stores (s3://, gs://, oci://, ...) do the transfers; this adds what a long run
needs around them: every upload is retried with backoff, and a final failure raises an
`UploadError` that names the object, the attempts and the local copy that was kept.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Callable, Optional

from foundry.checkpoint.errors import CheckpointError

log = logging.getLogger(__name__)

UPLOAD_ATTEMPTS = int(os.environ.get('FOUNDRY_UPLOAD_ATTEMPTS', '4'))
UPLOAD_FIRST_WAIT_S = float(os.environ.get('FOUNDRY_UPLOAD_FIRST_WAIT_S', '1.0'))


class UploadError(RuntimeError):
    """An upload that failed on every attempt (not a config error: the run stops with a traceback)."""


def object_store_for(uri: str):
    """(store, key) for an object-store URI; the key has no leading or trailing slash."""
    from composer.utils import maybe_create_object_store_from_uri, parse_uri

    _, _, path = parse_uri(uri)
    store = maybe_create_object_store_from_uri(uri)
    if store is None:
        raise CheckpointError(f'{uri} is not an object-store URI')
    return store, path.strip('/')


def upload_file(store, local_path: str, key: str, uri: Optional[str] = None, attempts: Optional[int] = None,
                first_wait_s: Optional[float] = None, sleep: Callable[[float], None] = time.sleep) -> None:
    """Upload one file, retrying with exponential backoff; raise UploadError after the last attempt."""
    attempts = attempts or UPLOAD_ATTEMPTS
    wait = UPLOAD_FIRST_WAIT_S if first_wait_s is None else first_wait_s
    uri = uri or key
    for attempt in range(1, attempts + 1):
        try:
            store.upload_object(key, local_path)
            return
        except Exception as e:  # network, credentials, throttling: all worth another try
            if attempt == attempts:
                raise UploadError(f'upload of {local_path} to {uri} failed {attempts} times; last error: '
                                  f'{type(e).__name__}: {e}. The local copy is kept at {local_path}') from e
            log.warning('upload of %s to %s failed (attempt %d of %d: %s: %s); retrying in %.1fs', local_path, uri,
                        attempt, attempts, type(e).__name__, e, wait)
            sleep(wait)
            wait *= 2


def upload_folder(local_dir: str, uri: str, **kwargs) -> list[str]:
    """Upload every file under `local_dir` to `uri`/<relative path>; returns the URIs written."""
    store, prefix = object_store_for(uri)
    written = []
    for root, _, files in os.walk(local_dir):
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.relpath(path, local_dir).replace(os.sep, '/')
            key = f'{prefix}/{relative}' if prefix else relative
            target = f'{uri.rstrip("/")}/{relative}'
            upload_file(store, path, key, target, **kwargs)
            written.append(target)
    return written


def download_prefix(uri: str, local_dir: str) -> list[str]:
    """Download every object under `uri`/ into `local_dir`, keeping relative paths; returns local files."""
    store, prefix = object_store_for(uri)
    start = prefix + '/' if prefix else ''
    files = []
    for key in store.list_objects(start):
        if not key.startswith(start) or key.endswith('/'):
            continue
        local = os.path.join(local_dir, *key[len(start):].split('/'))
        os.makedirs(os.path.dirname(local), exist_ok=True)
        store.download_object(key, local, overwrite=True)
        files.append(local)
    return files
