"""Checkpoint uploads to an object store that survive a flaky endpoint, and fail in one line when it is gone.

Composer's saver writes each checkpoint to a local folder and uploads its files from worker
processes (`RemoteUploader`); the store's `latest-rank0.pt.symlink` is uploaded only after every file
of that checkpoint is there. Two things are added here, in the uploader of the Trainer's saver:

* every file goes through `foundry.checkpoint.store.upload_file`: retried with exponential backoff
  (FOUNDRY_UPLOAD_ATTEMPTS, default 4; first wait FOUNDRY_UPLOAD_FIRST_WAIT_S, default 1 s, doubling),
  on top of boto3's own retries of each request. Composer's uploader retries only errors its object
  store classifies as transient, and a connection refused is not one;
* when a file still fails, the run stops with one line (an `UploadError`) that names the bucket and
  key, says that the store's pointer still names the previous checkpoint (the pointer is moved only
  after a whole checkpoint landed), and where the checkpoints are kept on local disk.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from typing import Any, Optional

from foundry.checkpoint.store import UploadError, upload_file

log = logging.getLogger(__name__)

_CHECKPOINT = re.compile(r'(ep\d+-ba\d+)(?:/|-rank0\.pt$)')


def upload_in_worker(backend_name: str, backend_kwargs: dict[str, Any], key: str, local_path: str, overwrite: bool,
                     uri: str, attempts: int, first_wait_s: float) -> int:
    """One file, in an uploader worker process: Composer's existence check, then retries with backoff."""
    from composer.utils.object_store.utils import build_remote_backend

    store = build_remote_backend(backend_name, backend_kwargs)
    if not overwrite:
        try:
            store.get_object_size(key)
        except FileNotFoundError:
            pass
        except Exception:  # the store cannot answer: the upload below retries and reports it
            pass
        else:
            raise FileExistsError(f'{uri} already exists and save_overwrite is false; set save_overwrite: true to '
                                  f'replace it')
    upload_file(store, local_path, key, uri, attempts=attempts, first_wait_s=first_wait_s)
    os.remove(local_path)
    return 0


def guard_checkpoint_uploads(saver, run_name: str, remote: Optional[str]) -> None:
    """Route the saver's uploads through `upload_in_worker` and turn a failure into one `UploadError` line."""
    from composer.utils import format_name_with_dist

    uploader = saver.remote_uploader
    scheme, bucket = uploader.remote_backend_name, uploader.remote_bucket_name
    local = format_name_with_dist(saver.folder, run_name)
    keys: dict[Any, str] = {}  # future -> key
    files: dict[str, list[Any]] = {}  # checkpoint name -> this rank's upload futures for it, in order
    reported: list[UploadError] = []
    attempts = int(os.environ.get('FOUNDRY_UPLOAD_ATTEMPTS', '4'))
    first_wait_s = float(os.environ.get('FOUNDRY_UPLOAD_FIRST_WAIT_S', '1.0'))

    def upload_file_async(remote_file_name: str, file_path, overwrite: bool):
        # As Composer's: a private copy (the saver may rotate the original away), uploaded by a worker.
        staged = os.path.join(uploader._upload_staging_folder, str(uuid.uuid4()))
        os.makedirs(uploader._upload_staging_folder, exist_ok=True)
        shutil.copy2(file_path, staged)
        future = uploader.upload_executor.submit(
            upload_in_worker, backend_name=scheme, backend_kwargs=uploader.backend_kwargs, key=remote_file_name,
            local_path=staged, overwrite=overwrite, uri=f'{scheme}://{bucket}/{remote_file_name}',
            attempts=attempts, first_wait_s=first_wait_s)
        uploader.futures.append(future)
        keys[future] = remote_file_name
        match = _CHECKPOINT.search(remote_file_name)
        if match:
            files.setdefault(match.group(1), []).append(future)
        return future

    def newest_landed() -> Optional[str]:
        whole = [name for name, futures in files.items()
                 if all(f.done() and f.exception() is None for f in futures)]
        return whole[-1] if whole else None

    def failure() -> UploadError:
        failed = [(keys.get(f, '?'), f.exception()) for f in uploader.futures if f.done() and f.exception()]
        key, error = failed[0]
        if isinstance(error, UploadError):  # raised in the worker; its cause does not cross the process boundary
            last = str(error).split('last error: ', 1)[-1].rsplit('. The local copy', 1)[0]
            tries = f'{attempts} attempts with backoff'
        else:
            last, tries = f'{type(error).__name__}: {error}', 'one attempt'
        kept = _local_checkpoints(local)
        previous = newest_landed()
        return UploadError(
            f'checkpoint upload failed: {scheme}://{bucket}/{key} could not be written ({tries}; last error: '
            f'{" ".join(last.split())[:300]}). The store\'s latest-rank0.pt still names '
            f'{"the previous checkpoint, " + previous if previous else "what it named when this run started"} (it moves only '
            f'after a whole checkpoint landed); the checkpoints written so far are on local disk in {local}: '
            f'{", ".join(kept) or "none"}. Check the endpoint (S3_ENDPOINT_URL) and run the same command to resume')

    def reporting(method):
        def wrapper(*args, **kwargs):
            if reported:  # stopped already: Composer asks again while closing
                uploader.futures = [f for f in uploader.futures if not f.done()]
                return None
            try:
                return method(*args, **kwargs)
            except Exception as e:
                error = failure() if any(f.done() and f.exception() for f in uploader.futures) else UploadError(
                    f'checkpoint upload to {remote} failed: {type(e).__name__}: {e}')
                reported.append(error)
                uploader.is_remote_upload_failed.set()  # Composer's pointer check stops waiting for the files
                raise error from e
        return wrapper

    uploader.upload_file_async = upload_file_async
    uploader.check_workers = reporting(uploader.check_workers)
    uploader.wait = reporting(uploader.wait)


def _local_checkpoints(folder: str) -> list[str]:
    from foundry.checkpoint.layout import LocalSaveFolder

    if not os.path.isdir(folder):
        return []
    saved = LocalSaveFolder(folder)
    return [r.name for r in saved.checkpoints() if saved.problem(r) is None]
