"""The output of a restartable conversion: manifest, part folders, done markers, merged index.

Layout::

    OUT/conversion.json         settings, the list of parts, and (when complete) the summary
    OUT/part-00000/...          one MDS sub-dataset per part, with done.json written last
    OUT/index.json              the merged index, written last and atomically

A rerun of an interrupted conversion keeps every part whose done.json exists (the tokens that
part carried over into the next sample are recorded there, so the result is identical to an
uninterrupted run) and continues with the first unfinished one. Readers only ever open
``OUT/index.json``, which appears once every shard it names is complete and checked.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from foundry.data import objstore
from foundry.data.errors import DataError
from foundry.data.prep.mds_writer import TokenShardWriter
from foundry.data.prep.sources import Part

if TYPE_CHECKING:
    from foundry.data.prep.encode_worker import Encoded

__all__ = ['ConversionOutput', 'PartWriter', 'MANIFEST', 'DONE', 'FORMAT']

MANIFEST = 'conversion.json'
DONE = 'done.json'
FORMAT = 'foundry-mds-conversion/1'


class ConversionOutput:
    """The output location: manifest, part folders, done markers and the merged index."""

    def __init__(self, root: str) -> None:
        self.root = root if objstore.is_url(root) else os.path.expanduser(root)
        self.created = False
        self.manifest: dict = {}

    def part_path(self, index: int) -> str:
        return objstore.join(self.root, f'part-{index:05d}')

    def _read_json(self, name: str) -> Any:
        try:
            return json.loads(objstore.read_bytes(objstore.join(self.root, name)))
        except FileNotFoundError:
            return None
        except ValueError:
            raise DataError(f'{objstore.join(self.root, name)} is not valid JSON; the output '
                            'folder is damaged. Delete it and convert again.') from None

    def _write_json(self, name: str, obj: Any) -> None:
        objstore.write_bytes(objstore.join(self.root, name),
                             json.dumps(obj, indent=1, sort_keys=True).encode())

    def prepare(self, settings: dict, parts: list[Part]) -> list[dict] | None:
        """Check what is already there; return the done markers of the finished prefix of
        parts (empty for a fresh start), or None if the conversion is already complete."""
        if not objstore.is_url(self.root) and os.path.isfile(self.root):
            raise DataError(f'output path {self.root!r} is a file, not a folder. Choose another '
                            '--out_root.')
        listed = [{'key': p.key, 'fingerprint': p.fingerprint} for p in parts]
        manifest = self._read_json(MANIFEST)
        if manifest is None:
            if self._non_empty():
                raise DataError(f'output folder {self.root!r} already exists and is not empty '
                                '(and holds no conversion to resume). Delete it or choose '
                                'another --out_root.')
            self.created = True
            self.manifest = {'format': FORMAT, 'settings': settings, 'parts': listed,
                             'complete': False, 'summary': None}
            self._write_json(MANIFEST, self.manifest)
            return []
        if manifest.get('format') != FORMAT or not isinstance(manifest.get('settings'), dict):
            raise DataError(f'{objstore.join(self.root, MANIFEST)} was not written by this '
                            'version of the converter. Delete the output folder and convert '
                            'again.')
        old = manifest['settings']
        changed = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
        if changed:
            detail = '; '.join(f'{k}: {old.get(k)!r} -> {settings.get(k)!r}' for k in changed)
            raise DataError(f'output folder {self.root!r} holds an unfinished or finished '
                            f'conversion made with different settings ({detail[:400]}). Use '
                            'the same flags to resume, or delete it / choose another --out_root.')
        self.manifest = manifest
        if manifest.get('complete') and objstore.exists(objstore.join(self.root, 'index.json')) \
                and manifest.get('parts') == listed:
            return None

        done: list[dict] = []
        old_parts = manifest.get('parts') or []
        for i, part in enumerate(listed):
            if i >= len(old_parts) or old_parts[i] != part:
                break
            marker = self._read_json(f'part-{i:05d}/{DONE}')
            if marker is None:
                break
            done.append(marker)
        # Later parts (changed or unfinished) are redone; record the current part list.
        # The merged index goes first, so no reader can see the parts being redone.
        objstore.delete_file(objstore.join(self.root, 'index.json'))
        manifest['parts'] = listed
        manifest['complete'] = False
        manifest['summary'] = None
        self._write_json(MANIFEST, manifest)
        for stale in range(len(done), max(len(old_parts), len(listed))):
            objstore.delete_tree(self.part_path(stale))
        return done

    def _non_empty(self) -> bool:
        if objstore.is_url(self.root):
            return bool(objstore.list_files(self.root))
        return os.path.isdir(self.root) and bool(os.listdir(self.root))

    def mark_done(self, index: int, marker: dict) -> None:
        self._write_json(f'part-{index:05d}/{DONE}', marker)

    def after_failure(self, parts_done: int) -> int:
        """Remove what a failed run leaves when no part is complete; keep finished parts."""
        if parts_done == 0:
            try:
                if objstore.is_url(self.root):
                    objstore.delete_tree(self.root)
                elif self.created or not any(n != MANIFEST for n in os.listdir(self.root)):
                    objstore.delete_tree(self.root)
            except Exception:
                pass
        return parts_done

    def recorded_summary(self) -> dict:
        """The summary stored by the run that completed this conversion."""
        return dict(self.manifest.get('summary') or {})

    def merge(self, n_parts: int, summary: dict) -> None:
        """Check every part's shards, then write the merged index last (atomically)."""
        present = {e.path: e.size for e in objstore.list_files(self.root)}
        shards = []
        for i in range(n_parts):
            folder = f'part-{i:05d}'
            index = self._read_json(f'{folder}/index.json')
            if index is None:
                raise DataError(f'{self.part_path(i)}/index.json is missing although the part is '
                                'marked done; delete that part folder and rerun to redo it.')
            for shard in index['shards']:
                for key in ('raw_data', 'zip_data', 'raw_meta', 'zip_meta'):
                    info = shard.get(key)
                    if not info:
                        continue
                    if key == 'raw_data' and shard.get('zip_data'):
                        info['basename'] = f'{folder}/{info["basename"]}'
                        continue  # only the compressed file is stored
                    info['basename'] = f'{folder}/{info["basename"]}'
                    path = objstore.join(self.root, *info['basename'].split('/'))
                    if present.get(path) != info['bytes']:
                        objstore.delete_tree(objstore.join(self.root, folder, DONE))
                        raise DataError(f'shard {path} is {present.get(path, "missing")} '
                                        f'{"bytes" if path in present else ""} but its index '
                                        f'says {info["bytes"]} bytes; part {folder} was marked '
                                        'undone, rerun to redo it.')
                shards.append(shard)
        self.manifest['complete'] = True
        self.manifest['summary'] = summary
        self._write_json(MANIFEST, self.manifest)
        objstore.write_bytes(objstore.join(self.root, 'index.json'),
                             json.dumps({'version': 2, 'shards': shards}).encode())


class PartWriter:
    """The MDS sub-dataset of one part, and the statistics its done marker records."""

    def __init__(self, out: ConversionOutput, index: int, dtype: np.dtype, compression: str | None,
                 size_limit: int | str | None) -> None:
        self.index = index
        self.out = out
        self.path = out.part_path(index)
        objstore.delete_tree(self.path)  # leftovers of an interrupted attempt
        self.writer = TokenShardWriter(self.path, dtype, compression, size_limit)
        self.documents = self.empty = self.input_bytes = 0
        self.invalid_utf8: dict[str, list[int]] = {}

    def add(self, encoded: Encoded, cutter: Any) -> None:
        self.documents += encoded.documents
        self.empty += encoded.empty_documents
        self.input_bytes += encoded.input_bytes
        for file, (count, offset) in encoded.bad_utf8.items():
            entry = self.invalid_utf8.setdefault(file, [0, offset])
            entry[0] += count
        write = self.writer.write
        for sample in cutter.add(encoded):
            write(sample)

    def finish(self, cutter: Any) -> dict:
        self.writer.finish()
        written = sum((s.get('zip_data') or s['raw_data'])['bytes'] for s in self.writer.shards)
        return {
            'documents': self.documents, 'empty_documents': self.empty,
            'input_bytes': self.input_bytes, 'bytes': written,
            'samples': sum(s['samples'] for s in self.writer.shards),
            'samples_total': cutter.samples, 'tokens_total': cutter.tokens,
            'dropped_no_wrap_total': cutter._dropped,
            'invalid_utf8': self.invalid_utf8,
            'carry': cutter.buffer.tolist(),  # tokens that continue into the next part
        }

    def abandon(self) -> None:
        try:
            self.writer.cancel()
        except Exception:
            pass
        try:
            objstore.delete_tree(self.path)
        except Exception:
            pass
