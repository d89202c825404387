"""Keep concurrent and killed training runs from colliding in streaming's shared memory.

streaming gives every StreamingDataset a machine-wide *prefix* (``000000_locals``,
``000000_barrier``, ... in /dev/shm, plus filelocks in the temp folder). Two problems follow:

* **Concurrent starts race.** Two jobs starting together both find prefix 0 free and both try to
  create it; one dies with ``FileExistsError: /000000_locals``. We serialise registration with
  an exclusive ``flock`` on one machine-wide lock file, held by each job's local leader from
  just before streaming scans the prefixes until the new prefix is registered; the job's other
  local ranks wait on a barrier so they scan only once their leader holds the lock.
* **Killed runs leave their prefix behind.** A run killed with SIGKILL never unlinks its shared
  memory; if the next run uses the same ``local`` folder, streaming refuses it with "Reused
  local directory". Each foundry run's local leader therefore holds a lock on an *owner file*
  for its prefix for as long as it lives (the kernel drops it when the process dies, however
  it dies). Under the registration lock we remove the shared memory of every prefix whose owner
  file is no longer locked: it belonged to a foundry run that is gone. Prefixes without an owner
  file (made by other programs) are never touched.

We deliberately do not call ``streaming.base.util.clean_stale_shared_memory()``: it unlinks
every prefix on the machine, including those of live jobs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
from typing import Callable, Iterator

log = logging.getLogger(__name__)

__all__ = ['registration', 'claim_prefix', 'release_prefix', 'clean_dead_prefixes',
           'prefix_in_use', 'conflicting_prefixes']

_SHM_DIR = '/dev/shm'
_NAMES = ('locals', 'barrier', 'next_epoch', 'cache_usage', 'shard_states',
          'shard_access_times', 'resume', 'epoch_shape', 'epoch_data')
_FILELOCKS = ('barrier_filelock', 'cache_filelock')
_held: dict[int, int] = {}  # prefix -> fd of the owner lock this process holds


def _root() -> str:
    return tempfile.gettempdir()


def _owner_dir() -> str:
    path = os.path.join(_root(), 'foundry-streaming-owners')
    os.makedirs(path, exist_ok=True)
    try:
        os.chmod(path, 0o1777)  # shared by every user of the machine, like /tmp
    except PermissionError:
        pass
    return path


def _owner_path(prefix: int) -> str:
    return os.path.join(_owner_dir(), f'{prefix:06d}.lock')


def _open_lock(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        fd = os.open(path, os.O_RDONLY)  # flock works on read-only descriptors too
    try:
        os.chmod(path, 0o666)
    except PermissionError:
        pass
    return fd


def _barrier() -> None:
    try:
        import torch.distributed as dist
    except ImportError:
        return
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def registration(is_local_leader: bool,
                 prepare: Callable[[], None] | None = None) -> Iterator[None]:
    """Serialise streaming's shared-memory registration across jobs on this machine.

    Every rank of the job must enter it (it contains a barrier when torch.distributed is up).
    The local leader runs ``prepare`` (e.g. cache checks) under the lock before the barrier.
    """
    fd = None
    if is_local_leader:
        fd = _open_lock(os.path.join(_root(), 'foundry-streaming-registration.lock'))
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            clean_dead_prefixes()
        except Exception as err:  # cleaning is best effort; registration must go on
            log.warning('could not clean stale streaming shared memory: %s', err)
        if prepare is not None:
            try:
                prepare()
            except BaseException:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
                raise
    _barrier()
    try:
        yield
    finally:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def claim_prefix(prefix: int) -> None:
    """Mark ``prefix`` as owned by this live process (call under ``registration``)."""
    if prefix in _held:
        return
    fd = _open_lock(_owner_path(prefix))
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        # An exclusive holder means a cleaner is inspecting it right now; should not happen
        # under the registration lock. Keep going without the claim.
        os.close(fd)
        return
    _held[prefix] = fd


def release_prefix(prefix: int) -> None:
    """Drop this process's claim (the dataset that registered ``prefix`` is gone)."""
    fd = _held.pop(prefix, None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def _existing_prefixes() -> list[int]:
    if not os.path.isdir(_SHM_DIR):
        return []
    found = set()
    for name in os.listdir(_SHM_DIR):
        head, _, tail = name.partition('_')
        if len(head) == 6 and head.isdigit() and tail in _NAMES:
            found.add(int(head))
    for name in os.listdir(_root()):
        head, _, tail = name.partition('_')
        if len(head) == 6 and head.isdigit() and tail in _FILELOCKS:
            found.add(int(head))
    return sorted(found)


def prefix_in_use(prefix: int) -> bool | None:
    """True if a live foundry process owns ``prefix``, False if its owner died, None if unknown."""
    if prefix in _held:
        return True
    path = _owner_path(prefix)
    if not os.path.exists(path):
        return None
    fd = _open_lock(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops our probe lock
    return False


def _remove_prefix(prefix: int) -> None:
    for name in _NAMES:
        try:
            os.unlink(os.path.join(_SHM_DIR, f'{prefix:06d}_{name}'))
        except FileNotFoundError:
            pass
    for name in _FILELOCKS:
        try:
            os.unlink(os.path.join(_root(), f'{prefix:06d}_{name}'))
        except FileNotFoundError:
            pass
    try:
        os.unlink(_owner_path(prefix))
    except FileNotFoundError:
        pass


def clean_dead_prefixes() -> list[int]:
    """Remove the shared memory of prefixes whose foundry owner process is gone."""
    removed = []
    for prefix in _existing_prefixes():
        if prefix_in_use(prefix) is False:
            _remove_prefix(prefix)
            removed.append(prefix)
    if removed:
        log.info('removed streaming shared memory left by killed runs: prefixes %s', removed)
    return removed


def conflicting_prefixes(locals_: list[str]) -> list[int]:
    """Prefixes whose registered local folders overlap ``locals_`` (absolute paths)."""
    out = []
    wanted = set(locals_)
    for prefix in _existing_prefixes():
        path = os.path.join(_SHM_DIR, f'{prefix:06d}_locals')
        try:
            with open(path, 'rb') as f:
                data = f.read()
        except OSError:
            continue
        try:
            size = int.from_bytes(data[:4], 'little')
            theirs = data[4:size].decode('utf-8').split('\0')[:-1]
        except Exception:
            continue
        if wanted & set(theirs):
            out.append(prefix)
    return out
