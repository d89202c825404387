"""Fault injection for crash tests: make a checkpoint save hang at a chosen batch.

    FOUNDRY_FAULT=hang_in_save:6 FOUNDRY_FAULT_MARKER=/tmp/hanging composer launch/train.py ...

makes rank 0 stop inside the save of the checkpoint at batch 6, at the worst moment:

* sharded: every rank has written its `.distcp` file, and rank 0 hangs before writing the
  `.metadata` index (inside torch.distributed.checkpoint's `FileSystemWriter.finish`);
* full: rank 0 has written half of `ep*-ba6-rank0.pt` and hangs.

It first creates the marker file, so a test knows when to SIGKILL the job. Nothing is
installed unless FOUNDRY_FAULT is set.
"""

from __future__ import annotations

import io
import logging
import os
import re
import time

log = logging.getLogger(__name__)

ENV = 'FOUNDRY_FAULT'
MARKER_ENV = 'FOUNDRY_FAULT_MARKER'


def install_from_env() -> bool:
    spec = os.environ.get(ENV)
    if not spec:
        return False
    kind, _, arg = spec.partition(':')
    if kind != 'hang_in_save' or not arg.isdigit():
        raise ValueError(f'{ENV}={spec!r}: expected hang_in_save:<batch>')
    batch = int(arg)
    _patch_sharded(batch)
    _patch_full(batch)
    log.warning('fault injection armed: the checkpoint save at batch %d will hang (%s=%s)', batch, ENV, spec)
    return True


def _hang(where: str) -> None:
    marker = os.environ.get(MARKER_ENV)
    log.warning('fault injection: hanging inside the checkpoint save (%s)', where)
    if marker:
        with open(marker, 'w') as f:
            f.write(where)
    while True:
        time.sleep(60)


def _patch_sharded(batch: int) -> None:
    from torch.distributed.checkpoint import filesystem

    pattern = re.compile(rf'(^|/)ep\d+-ba{batch}/?$')
    original = filesystem.FileSystemWriter.finish
    if getattr(original, '_foundry_fault', False):
        return

    def finish(self, metadata, results):
        if pattern.search(str(self.path)):
            _hang(f'{self.path}: data files written, {".metadata"} not yet')
        return original(self, metadata, results)

    finish._foundry_fault = True
    filesystem.FileSystemWriter.finish = finish


def _patch_full(batch: int) -> None:
    import torch
    from composer.utils import checkpoint

    pattern = re.compile(rf'(^|/)ep\d+-ba{batch}-rank0\.pt$')
    original = checkpoint._write_checkpoint_file
    if getattr(original, '_foundry_fault', False):
        return

    def write(state_dict, filename):
        if pattern.search(str(filename)):
            buffer = io.BytesIO()
            torch.save(state_dict, buffer)
            data = buffer.getvalue()
            with open(filename, 'wb') as f:
                f.write(data[:len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
            _hang(f'{filename}: {len(data) // 2} of {len(data)} bytes written')
        return original(state_dict, filename)

    write._foundry_fault = True
    checkpoint._write_checkpoint_file = write
