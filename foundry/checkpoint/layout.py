"""What is in a save folder, local or on an object store, and which checkpoints are whole.

Composer names checkpoints `ep{epoch}-ba{batch}` and writes them in one of two layouts:

* sharded (torch.distributed.checkpoint): a folder `ep0-ba4/` with one `__{rank}_0.distcp` per
  writing rank and a `.metadata` index. torch writes the index last, through a temporary file
  renamed into place, on the coordinator after every rank has reported its files written; so
  a folder without `.metadata` is a save that was interrupted.
* full: one `torch.save` zip file `ep0-ba4-rank0.pt`, written in place (not atomically). A
  file cut short has no zip central directory at its end.

The pointer `latest-rank0.pt` (a symlink locally, a `latest-rank0.pt.symlink` text object
remotely) names the last checkpoint Composer finished. Composer replaces the local symlink by
remove-then-create, so a kill between the two leaves no pointer at all; this module therefore
never trusts the pointer alone: `SaveFolder.checkpoints()` lists what is there and
`SaveFolder.problem(ref)` says whether a checkpoint is whole (None) or why not.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from typing import Optional

from foundry.checkpoint.errors import CheckpointError

LATEST = 'latest-rank0.pt'
METADATA = '.metadata'
_SHARDED_NAME = re.compile(r'^ep(\d+)-ba(\d+)$')
_FULL_NAME = re.compile(r'^ep(\d+)-ba(\d+)-rank0\.pt$')


@dataclass(frozen=True)
class CheckpointRef:
    """One checkpoint in a save folder."""

    name: str  # 'ep0-ba4' (sharded) or 'ep0-ba4-rank0.pt' (full)
    location: str  # local path or object-store URI
    kind: str  # 'sharded' or 'full'
    epoch: int
    batch: int


def parse_name(name: str) -> Optional[tuple[str, int, int]]:
    """('sharded'|'full', epoch, batch) for a Composer checkpoint name, else None."""
    for kind, pattern in (('sharded', _SHARDED_NAME), ('full', _FULL_NAME)):
        match = pattern.match(name)
        if match:
            return kind, int(match.group(1)), int(match.group(2))
    return None


def is_remote(path: str) -> bool:
    return '://' in path


class SaveFolder:
    """A run's save folder: `SaveFolder.open('/ckpts/run')` or `SaveFolder.open('s3://bucket/run')`."""

    folder: str

    @staticmethod
    def open(folder: str) -> 'SaveFolder':
        return RemoteSaveFolder(folder) if is_remote(folder) else LocalSaveFolder(folder)

    def checkpoints(self) -> list[CheckpointRef]:
        """Every checkpoint (whole or not), oldest first by batch."""
        raise NotImplementedError

    def problem(self, ref: CheckpointRef) -> Optional[str]:
        """None when `ref` is a whole checkpoint, else what is wrong with it."""
        raise NotImplementedError

    def latest_pointer(self) -> Optional[str]:
        """The checkpoint name `latest-rank0.pt` points to, or None when there is no pointer."""
        raise NotImplementedError

    def set_latest(self, ref: CheckpointRef) -> None:
        raise NotImplementedError

    def move_aside(self, ref: CheckpointRef, tag: str = 'incomplete') -> str:
        """Rename a checkpoint out of Composer's naming scheme, keeping its bytes; returns the new location."""
        raise NotImplementedError

    def newest_whole(self) -> tuple[Optional[CheckpointRef], list[tuple[CheckpointRef, str]]]:
        """The newest whole checkpoint, and the (ref, problem) of every broken one newer than it."""
        broken = []
        for ref in reversed(self.checkpoints()):
            reason = self.problem(ref)
            if reason is None:
                return ref, broken
            broken.append((ref, reason))
        return None, broken


# ----------------------------------------------------------------------------------------- local


class LocalSaveFolder(SaveFolder):
    def __init__(self, folder: str):
        self.folder = folder

    def checkpoints(self) -> list[CheckpointRef]:
        if not os.path.isdir(self.folder):
            return []
        refs = []
        for name in os.listdir(self.folder):
            parsed = parse_name(name)
            path = os.path.join(self.folder, name)
            if parsed is None or os.path.islink(path):
                continue
            kind, epoch, batch = parsed
            if (kind == 'sharded') != os.path.isdir(path):
                continue
            refs.append(CheckpointRef(name, path, kind, epoch, batch))
        return sorted(refs, key=lambda r: (r.batch, r.epoch, r.name))

    def problem(self, ref: CheckpointRef) -> Optional[str]:
        return local_checkpoint_problem(ref.location)

    def latest_pointer(self) -> Optional[str]:
        link = os.path.join(self.folder, LATEST)
        if not os.path.islink(link):
            return None
        return os.path.basename(os.path.normpath(os.readlink(link)))

    def set_latest(self, ref: CheckpointRef) -> None:
        link = os.path.join(self.folder, LATEST)
        tmp = os.path.join(self.folder, f'.{LATEST}.tmp-{os.getpid()}')
        if os.path.lexists(tmp):
            os.remove(tmp)
        os.symlink(ref.name, tmp)
        os.replace(tmp, link)  # atomic: the pointer is never missing

    def move_aside(self, ref: CheckpointRef, tag: str = 'incomplete') -> str:
        target = _free_name(os.path.join(self.folder, f'{ref.name}.{tag}'), os.path.lexists)
        os.replace(ref.location, target)
        return target

    def move_all_aside(self, refs: list[CheckpointRef]) -> str:
        """Park checkpoints of an earlier run in `replaced-<UTC time>/` (with the pointer)."""
        stamp = time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())
        parking = _free_name(os.path.join(self.folder, f'replaced-{stamp}'), os.path.lexists)
        os.makedirs(parking)
        for ref in refs:
            os.replace(ref.location, os.path.join(parking, ref.name))
        link = os.path.join(self.folder, LATEST)
        if os.path.lexists(link):
            os.replace(link, os.path.join(parking, LATEST))
        return parking


def local_checkpoint_problem(path: str) -> Optional[str]:
    """None when the local checkpoint at `path` (sharded folder or full file) is whole, else why not."""
    if os.path.isdir(path):
        return _sharded_problem(path)
    if not os.path.isfile(path):
        return 'does not exist'
    return _full_file_problem(path)


def _sharded_problem(path: str) -> Optional[str]:
    meta_path = os.path.join(path, METADATA)
    if not os.path.isfile(meta_path):
        return f'no {METADATA} (the save was interrupted before every rank finished writing)'
    try:
        from torch.distributed.checkpoint import FileSystemReader

        metadata = FileSystemReader(path).read_metadata()
    except Exception as e:  # a truncated or foreign index
        return f'unreadable {METADATA}: {type(e).__name__}: {e}'
    needed = _bytes_needed(metadata)
    for relative, size in sorted(needed.items()):
        file = os.path.join(path, relative)
        if not os.path.isfile(file):
            return f'{relative} is listed in {METADATA} but missing'
        have = os.path.getsize(file)
        if have < size:
            return f'{relative} is {have} bytes, {METADATA} needs {size}'
    return None


def _bytes_needed(metadata) -> dict[str, int]:
    """Each data file named by a DCP index, with the byte length the index needs from it."""
    needed: dict[str, int] = {}
    for info in (metadata.storage_data or {}).values():
        relative = getattr(info, 'relative_path', None)
        if relative is None:
            continue
        end = int(getattr(info, 'offset', 0) or 0) + int(getattr(info, 'length', 0) or 0)
        needed[relative] = max(needed.get(relative, 0), end)
    return needed


def _full_file_problem(path: str) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError) as e:
        return f'not a complete torch.save file ({e}); the write was interrupted'
    if not any(n.endswith('data.pkl') for n in names):
        return 'zip without data.pkl: not a torch.save file'
    return None


def _free_name(base: str, exists) -> str:
    candidate, n = base, 1
    while exists(candidate):
        n += 1
        candidate = f'{base}.{n}'
    return candidate


# ---------------------------------------------------------------------------------------- remote


class RemoteSaveFolder(SaveFolder):
    """A save folder on an object store, read through Composer's ObjectStore classes.

    Object stores have no partial objects (an upload is visible only once complete), so a full
    checkpoint that exists is whole; a sharded one is whole when its `.metadata` is there and
    every data file it names has at least the bytes it needs.
    """

    def __init__(self, folder: str):
        from composer.utils import maybe_create_object_store_from_uri, parse_uri

        self.folder = folder.rstrip('/')
        self.backend, self.bucket, path = parse_uri(self.folder)
        self.prefix = path.strip('/')
        self.store = maybe_create_object_store_from_uri(self.folder)
        self._keys: Optional[list[str]] = None

    def key(self, *parts: str) -> str:
        return '/'.join(p for p in (self.prefix, *parts) if p)

    def uri(self, key: str) -> str:
        return f'{self.backend}://{self.bucket}/{key}'

    def keys(self, refresh: bool = False) -> list[str]:
        if self._keys is None or refresh:
            prefix = self.prefix + '/' if self.prefix else ''
            self._keys = [k[len(prefix):] for k in self.store.list_objects(prefix) if k.startswith(prefix)]
        return self._keys

    def checkpoints(self) -> list[CheckpointRef]:
        found: dict[str, CheckpointRef] = {}
        for relative in self.keys(refresh=True):
            top = relative.split('/', 1)[0]
            parsed = parse_name(top)
            if parsed is None or top in found:
                continue
            kind, epoch, batch = parsed
            if kind == 'sharded' and '/' not in relative:
                continue  # an object named like a folder
            found[top] = CheckpointRef(top, self.uri(self.key(top)), kind, epoch, batch)
        return sorted(found.values(), key=lambda r: (r.batch, r.epoch, r.name))

    def problem(self, ref: CheckpointRef) -> Optional[str]:
        if ref.kind == 'full':
            return None
        present = {k[len(ref.name) + 1:] for k in self.keys() if k.startswith(ref.name + '/')}
        if METADATA not in present:
            return f'no {METADATA} (the save or its upload was interrupted)'
        with tempfile.TemporaryDirectory() as tmp:
            try:
                self.store.download_object(self.key(ref.name, METADATA), os.path.join(tmp, METADATA))
                from torch.distributed.checkpoint import FileSystemReader

                metadata = FileSystemReader(tmp).read_metadata()
            except Exception as e:
                return f'unreadable {METADATA}: {type(e).__name__}: {e}'
        for relative, size in sorted(_bytes_needed(metadata).items()):
            if relative not in present:
                return f'{relative} is listed in {METADATA} but missing'
            have = self.store.get_object_size(self.key(ref.name, relative))
            if have < size:
                return f'{relative} is {have} bytes, {METADATA} needs {size}'
        return None

    def latest_pointer(self) -> Optional[str]:
        target = self.read_pointer()
        return None if target is None else target.rstrip('/').rsplit('/', 1)[-1]

    def read_pointer(self) -> Optional[str]:
        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, 'latest.symlink')
            try:
                self.store.download_object(self.key(LATEST + '.symlink'), local)
            except FileNotFoundError:
                return None
            with open(local) as f:
                return f.read().strip()

    def set_latest(self, ref: CheckpointRef) -> None:
        from foundry.checkpoint.store import upload_file

        with tempfile.TemporaryDirectory() as tmp:
            local = os.path.join(tmp, 'latest.symlink')
            with open(local, 'w') as f:
                f.write(self.key(ref.name))
            upload_file(self.store, local, self.key(LATEST + '.symlink'), self.uri(self.key(LATEST + '.symlink')))

    def move_aside(self, ref: CheckpointRef, tag: str = 'incomplete') -> str:
        client = getattr(self.store, 'client', None)
        if self.backend != 's3' or client is None:
            raise CheckpointError(
                f'{ref.location} is an incomplete checkpoint and a new save would collide with it; foundry can move '
                f'objects aside on s3 only: delete or rename {ref.location} by hand, or set save_overwrite=true')
        names = [k for k in self.keys() if k == ref.name or k.startswith(ref.name + '/')]
        existing = set(self.keys())
        new_name = _free_name(f'{ref.name}.{tag}', lambda n: any(k == n or k.startswith(n + '/') for k in existing))
        for relative in names:
            source = self.key(relative)
            target = self.key(new_name + relative[len(ref.name):])
            client.copy_object(Bucket=self.bucket, Key=target, CopySource={'Bucket': self.bucket, 'Key': source})
            client.delete_object(Bucket=self.bucket, Key=source)
        self._keys = None
        return self.uri(self.key(new_name))
