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
  it dies), and writes into it the identity (device and inode) of every segment of the prefix,
  recorded right after streaming created them, under the registration lock. Under that lock we
  remove the shared memory of a prefix only when its owner file is no longer locked *and* the
  prefix's ``locals`` segment is still the one that run created: a lock says the run is gone,
  the inode says the memory is still its own (an unlocked owner file alone can be stale: after
  the run ended, or after a program such as llm-foundry called streaming's
  ``clean_stale_shared_memory()``, another program may have taken the prefix). When the prefix
  is someone else's now, only the stale owner file, and segments still carrying the dead run's
  inodes, are removed. Prefixes without an owner file (made by other programs) are never touched.
* **Runs that end leave nothing.** When the dataset goes away or the process exits, the local
  leader removes its owner file and streaming's filelocks of its prefix (streaming leaves those
  in the temp folder, which keeps the prefix number from ever being used again); streaming
  unlinks the shared memory itself.

We deliberately do not call ``streaming.base.util.clean_stale_shared_memory()``: it unlinks
every prefix on the machine, including those of live jobs.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import tempfile
from typing import Callable, Iterator, Optional

log = logging.getLogger(__name__)

__all__ = ['registration', 'claim_prefix', 'release_prefix', 'clean_dead_prefixes',
           'prefix_in_use', 'conflicting_prefixes']

_SHM_DIR = '/dev/shm'
_NAMES = ('locals', 'barrier', 'next_epoch', 'cache_usage', 'shard_states',
          'shard_access_times', 'resume', 'epoch_shape', 'epoch_data')
_FILELOCKS = ('barrier_filelock', 'cache_filelock')
# prefix -> (fd of the owner lock this process holds, pid that took it). Forked DataLoader workers
# inherit this dict (and the fd); only the process that claimed a prefix releases its files.
_held: dict[int, tuple[int, int]] = {}


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
    """Mark ``prefix`` as owned by this live process (call under ``registration``, right after
    streaming created the prefix's segments)."""
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
    try:
        record = json.dumps({'pid': os.getpid(), 'segments': _segment_ids(prefix)}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
    except OSError:  # a read-only owner file of another user: the claim still holds the lock
        pass
    if not _held:
        atexit.register(_release_all)
    _held[prefix] = (fd, os.getpid())


def held_here(prefix: int) -> bool:
    """Whether this process claimed `prefix` (a dataset it built earlier may still hold it)."""
    return _held.get(prefix, (None, None))[1] == os.getpid()


def release_prefix(prefix: int) -> None:
    """Drop this process's claim (the dataset that registered ``prefix`` is gone): its owner
    file and streaming's filelocks of the prefix are removed, the lock released."""
    fd, pid = _held.pop(prefix, (None, None))
    if fd is None:
        return
    if pid == os.getpid():
        path = _owner_path(prefix)
        try:
            if _same_file(fd, path):  # never a newer owner's file
                for name in _FILELOCKS:
                    _unlink(os.path.join(_root(), f'{prefix:06d}_{name}'))
                _unlink(path)
        except OSError:
            pass
    try:
        os.close(fd)
    except OSError:
        pass


def _release_all() -> None:
    for prefix in list(_held):
        release_prefix(prefix)


def _same_file(fd: int, path: str) -> bool:
    mine, there = os.fstat(fd), os.stat(path)
    return (mine.st_dev, mine.st_ino) == (there.st_dev, there.st_ino)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except (FileNotFoundError, PermissionError):
        pass


def _segment_ids(prefix: int) -> dict[str, list[int]]:
    """{segment name: [st_dev, st_ino]} of the prefix's shared memory that exists now.

    The inode identifies a segment for as long as it exists (tmpfs never reuses one in
    practice); times do not: writes through the mapping change its ctime and mtime.
    """
    out = {}
    for name in _NAMES:
        try:
            st = os.stat(os.path.join(_SHM_DIR, f'{prefix:06d}_{name}'))
        except OSError:
            continue
        out[name] = [st.st_dev, st.st_ino]
    return out


def _recorded_segments(fd: int) -> Optional[dict[str, list[int]]]:
    """The segment identities an owner file holds (None: unreadable, or written by an older foundry)."""
    try:
        record = json.loads(os.pread(fd, 1 << 16, 0) or b'null')
        segments = record['segments']
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return segments if isinstance(segments, dict) else None


def _existing_prefixes() -> list[int]:
    found = set()
    if os.path.isdir(_SHM_DIR):
        for name in os.listdir(_SHM_DIR):
            head, _, tail = name.partition('_')
            if len(head) == 6 and head.isdigit() and tail in _NAMES:
                found.add(int(head))
    for name in os.listdir(_root()):
        head, _, tail = name.partition('_')
        if len(head) == 6 and head.isdigit() and tail in _FILELOCKS:
            found.add(int(head))
    return sorted(found)


def _owner_prefixes() -> list[int]:
    out = []
    for name in os.listdir(_owner_dir()):
        head, dot, tail = name.partition('.')
        if len(head) == 6 and head.isdigit() and dot and tail == 'lock':
            out.append(int(head))
    return out


def _inspect(prefix: int) -> tuple[str, dict[str, list[int]]]:
    """What ``prefix``'s owner file says, and the segments a dead owner recorded:

    'live': a live foundry process owns it; 'dead': its foundry owner is gone and the prefix's
    ``locals`` is still the one that owner created; 'stale': the owner is gone and the prefix is
    not (or no longer) its memory, or the file holds no record; 'none': no owner file.
    """
    if prefix in _held:
        return 'live', {}
    path = _owner_path(prefix)
    if not os.path.exists(path):
        return 'none', {}
    try:
        fd = _open_lock(path)
    except OSError:
        return 'none', {}
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return 'live', {}
        recorded = _recorded_segments(fd)
    finally:
        os.close(fd)  # closing drops our probe lock
    if recorded is None:
        return 'stale', {}
    if 'locals' in recorded and _segment_ids(prefix).get('locals') == recorded['locals']:
        return 'dead', recorded
    return 'stale', recorded


def prefix_in_use(prefix: int) -> bool | None:
    """True if a live foundry process owns ``prefix``; False if its foundry owner died and the
    prefix's memory is still what that owner created; None if unknown (not foundry's, or no
    longer the dead owner's)."""
    return {'live': True, 'dead': False}.get(_inspect(prefix)[0])


def _remove_prefix(prefix: int) -> None:
    for name in _NAMES:
        _unlink(os.path.join(_SHM_DIR, f'{prefix:06d}_{name}'))
    for name in _FILELOCKS:
        _unlink(os.path.join(_root(), f'{prefix:06d}_{name}'))
    _unlink(_owner_path(prefix))


def _remove_stale_owner(prefix: int, recorded: dict[str, list[int]]) -> None:
    """The owner is gone and the prefix is not its memory any more: drop the owner file, and only
    those segments that still carry the inodes the dead owner recorded (nobody else's)."""
    now = _segment_ids(prefix)
    for name, ident in recorded.items():
        if name in _NAMES and now.get(name) == ident:
            _unlink(os.path.join(_SHM_DIR, f'{prefix:06d}_{name}'))
    if not now:
        # No memory under the prefix at all, so no program is using it; its leftover filelocks
        # (streaming never removes them) would keep the number from being used again.
        for name in _FILELOCKS:
            _unlink(os.path.join(_root(), f'{prefix:06d}_{name}'))
    _unlink(_owner_path(prefix))


def clean_dead_prefixes() -> list[int]:
    """Remove the shared memory of prefixes whose foundry owner process is gone (module doc)."""
    removed, stale = [], []
    for prefix in sorted(set(_existing_prefixes()) | set(_owner_prefixes())):
        state, recorded = _inspect(prefix)
        if state == 'dead':
            _remove_prefix(prefix)
            removed.append(prefix)
        elif state == 'stale':
            _remove_stale_owner(prefix, recorded)
            stale.append(prefix)
    if removed:
        log.info('removed streaming shared memory left by killed runs: prefixes %s', removed)
    if stale:
        log.debug('removed owner files of runs that are gone whose prefix is not their memory now: %s', stale)
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
