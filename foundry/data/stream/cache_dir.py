"""Per-run local cache folders for datasets streamed from a remote URL.

Streaming's own default (``$TMP/<hash(remote)>/<split>``) is the same for every run reading
the same remote, so a second run on the machine fails with "already exists" or "Reused local
directory". We give each run its own folder instead, shared by all local ranks of that run
(streaming requires every rank on a node to name the same ``local``):

* torch.distributed initialized: rank 0 draws a random token and broadcasts it;
* launched with several ranks but not yet initialized: the launcher's pid plus MASTER_PORT,
  which all local ranks of one launch share and concurrent launches cannot;
* single process: this pid plus a random suffix.

The run's cache root is deleted when local rank 0 exits, so /tmp does not fill up run by run.
A run killed with SIGKILL cannot clean up, so local rank 0 also holds a lock on
``ROOT/.owner.lock`` for its lifetime (the kernel drops it however the process dies) and, when
a new run starts, removes every sibling cache root whose owner lock is free: the caches of
killed runs. Set FOUNDRY_DATA_CACHE to put the caches somewhere other than the temp directory;
bound each run's cache with the loader's ``cache_limit``.

We deliberately do not call ``streaming.base.util.clean_stale_shared_memory()``: it unlinks
every streaming shared-memory block on the machine without checking whether its owner is
alive, so it would corrupt a concurrently running job. Unique locals make it unnecessary.
"""

from __future__ import annotations

import atexit
import fcntl
import getpass
import hashlib
import os
import shutil
import sys
import tempfile
import uuid

__all__ = ['is_remote', 'run_cache_dir', 'remove_dead_caches']

_REMOTE_SCHEMES = ('s3://', 'gs://', 'oci://', 'azure://', 'azure-dl://', 'dbfs:/', 'hf://',
                   'http://', 'https://', 'sftp://')

_state: dict[str, object] = {'root': None, 'count': 0}


def is_remote(path: str | None) -> bool:
    """Whether ``path`` is a URL streaming downloads from (rather than a local folder)."""
    return bool(path) and path.startswith(_REMOTE_SCHEMES)


def run_cache_dir(remote: str, name: str) -> str:
    """A fresh local folder for caching ``remote``, unique to this run and this call.

    The per-call counter keeps two datasets of one run (e.g. train and eval reading the same
    remote) apart; ranks build loaders in the same order, so they agree on it.
    """
    root = _run_root()
    _state['count'] = int(_state['count']) + 1
    digest = hashlib.blake2s(remote.encode(), digest_size=6).hexdigest()
    safe_name = ''.join(c if c.isalnum() or c in '-_' else '_' for c in name)
    return os.path.join(root, f'{_state["count"]:02d}-{safe_name}-{digest}')


def _run_root() -> str:
    if _state['root'] is None:
        base = os.environ.get('FOUNDRY_DATA_CACHE') or os.path.join(
            tempfile.gettempdir(), f'foundry-{_user()}', 'data-cache')
        root = os.path.join(base, _run_token())
        os.makedirs(root, exist_ok=True)
        if int(os.environ.get('LOCAL_RANK', '0')) == 0:
            _state['owner_fd'] = _hold_owner_lock(root)
            atexit.register(shutil.rmtree, root, True)
            remove_dead_caches(base)
        _state['root'] = root
    return str(_state['root'])


def _hold_owner_lock(root: str) -> int | None:
    """Lock ROOT/.owner.lock for this process's lifetime (locked before it becomes visible)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix='.owner-', dir=root)
        fcntl.flock(fd, fcntl.LOCK_SH)
        os.replace(tmp, os.path.join(root, '.owner.lock'))
        return fd
    except OSError:
        return None


def remove_dead_caches(base: str) -> list[str]:
    """Delete cache roots under ``base`` whose owning run is gone; return what was removed."""
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        root = os.path.join(base, name)
        lock = os.path.join(root, '.owner.lock')
        if root == _state.get('root') or not os.path.isfile(lock):
            continue
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # its run is alive
        finally:
            os.close(fd)
        shutil.rmtree(root, ignore_errors=True)
        removed.append(root)
    return removed


def _run_token() -> str:
    # Only a process that has Composer loaded can be inside a Composer job; importing it here just to
    # ask would cost a process that reads one remote stream seconds of start-up (torch, Composer).
    dist = sys.modules.get('composer.utils.dist')
    if dist is not None and dist.is_initialized() and dist.get_world_size() > 1:
        token = [uuid.uuid4().hex[:12] if dist.get_global_rank() == 0 else None]
        dist.broadcast_object_list(token, src=0)
        return f'run-{token[0]}'
    if int(os.environ.get('WORLD_SIZE', '1')) > 1:
        return f'launch-{os.getppid()}-{os.environ.get("MASTER_PORT", "0")}'
    return f'pid-{os.getpid()}-{uuid.uuid4().hex[:6]}'


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return str(os.getuid()) if hasattr(os, 'getuid') else 'user'
