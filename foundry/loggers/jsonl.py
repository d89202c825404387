"""A metrics file every run gets: one JSON object per logged step, appended and flushed.

Line format (global rank 0 only):

    {"batch": 3, "loss/train/total": 2.71, "time/batch": 3, ..., "lr-DecoupledLionW/group0": 0.0006}

`batch` is Composer's logging step, `state.timestamp.batch` when the metric was
logged: the number of batches finished so far. That makes it the 0-BASED index of
the batch whose `loss/train/total` is on the line (Composer logs the train loss every
batch, before it advances the timestamp). Metrics that callbacks log at BATCH_END of
batch k (throughput/*, lr-* for the next batch, eval metrics/*) carry step k + 1 and
land on the next line, exactly where wandb and tensorboard plot them. The last line
of a fit (batch = number of batches trained) holds end-of-fit values and no train loss.

All metrics logged with the same step are merged into one line, completed when a
metric with a different step arrives, at fit end and at close; each write is flushed.
The file is opened in append mode, so a resumed run continues it. A run killed after
its last checkpoint wrote lines for batches the resumed run trains again; at fit start
(when the resumed batch B is known) those lines (batch > B) are moved out of the file,
so every batch appears once, with the values of the run that continued. Line B keeps
what was logged before the checkpoint (end-of-batch callbacks of batch B - 1) and gets
the resumed run's values merged in. The moved lines are appended, each marked with
`"superseded_at_resume": B`, to `metrics.jsonl.superseded` next to the file.
`read_metrics` also keeps the later of two lines for one batch.

No host-device sync per batch. Reading a GPU tensor's value (`.tolist()`, `.item()`)
blocks the host until the GPU has run everything queued before it, which stalls the
launch of the next batch's kernels. Python numbers and CPU tensors are converted at once
and their lines written as soon as they are complete (a killed run loses only the step it
was in the middle of). A metric that is an accelerator tensor (a torchmetrics train
metric, for example) is kept as a detached copy on its device instead, and its line is
held; held lines are written together every `device_flush_interval` lines, at fit end and
at close, after one device-to-host copy per (device, dtype) for all their tensors. So a
killed run may lose up to that many held lines, and lines stay in step order.
"""

from __future__ import annotations

import json
import math
import os
from typing import IO, Any, Optional

from composer.core import State
from composer.loggers import Logger, LoggerDestination
from composer.utils import dist

__all__ = ['JSONLinesLogger', 'read_metrics']


class JSONLinesLogger(LoggerDestination):
    """Append every logged metric to `path` as JSON lines, one line per step (see module doc)."""

    def __init__(self, path: str | os.PathLike[str], device_flush_interval: int = 10) -> None:
        super().__init__()
        if device_flush_interval < 1:
            raise ValueError(f'device_flush_interval must be >= 1, got {device_flush_interval}')
        self.path = os.fspath(path)
        self.device_flush_interval = device_flush_interval
        # Completed lines not yet written, in step order (see the module docstring).
        self._held: list[dict[str, Any]] = []
        self._file: Optional[IO[str]] = None
        self._step: Optional[int] = None
        self._pending: dict[str, Any] = {}
        # The last line written, so a step that comes back (e.g. trainer.eval() after fit)
        # is rewritten complete rather than as a fragment that would hide the first line.
        self._last_line: Optional[dict[str, Any]] = None
        # Bytes of the file that earlier runs wrote (before this logger opened it); None until opened.
        # Only these are checked against the resumed batch, once, at the first fit start.
        self._earlier_bytes: Optional[int] = None

    def init(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self._open()

    def log_metrics(self, metrics: dict[str, Any], step: Optional[int] = None) -> None:
        if dist.get_global_rank() != 0:
            return
        if step is None:  # Composer always passes one; a direct caller may not
            step = self._step if self._step is not None else 0
        step = int(step)
        if self._step is not None and step != self._step:
            self._write_pending()
        self._step = step
        # Convert now: a tensor logged by reference could change before the line is written.
        self._pending.update({k: _plain(v) for k, v in metrics.items()})

    def fit_start(self, state: State, logger: Logger) -> None:
        del logger  # unused
        if dist.get_global_rank() != 0 or not self._earlier_bytes:
            return
        earlier, self._earlier_bytes = self._earlier_bytes, 0
        self._drop_lines_replayed_from(int(state.timestamp.batch), earlier)

    def fit_end(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self._write_pending(force=True)

    def close(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self._write_pending(force=True)
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        if self._file is not None or dist.get_global_rank() != 0:
            return
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        self._file = open(self.path, 'a', encoding='utf-8')
        # A run killed mid-write can leave half a line; start ours on a fresh one so only
        # that fragment is unreadable (read_metrics skips it), not our first line too.
        if self._file.tell() > 0 and not _ends_with_newline(self.path):
            self._file.write('\n')
            self._file.flush()
        if self._earlier_bytes is None:
            self._earlier_bytes = self._file.tell()

    def _write_pending(self, force: bool = False) -> None:
        if self._pending and self._step is not None:
            line: dict[str, Any] = {'batch': self._step}
            if self._last_line is not None and self._last_line['batch'] == self._step:
                line.update(self._last_line)
            line.update(self._pending)
            self._last_line = line
            self._pending = {}
            self._held.append(line)
        if not self._held:
            return
        if not force and len(self._held) < self.device_flush_interval and _holds_device_tensors(self._held):
            return  # wait: writing now would read a GPU value, a host-device sync
        _values_to_host(self._held)
        if self._file is not None and self._file.closed:  # closed under us (interpreter shutdown, GC order)
            self._file = None
        self._open()
        assert self._file is not None
        self._file.write(''.join(json.dumps(line, default=_to_json) + '\n' for line in self._held))
        self._file.flush()
        self._held = []


    def _drop_lines_replayed_from(self, resumed_batch: int, earlier_bytes: int) -> None:
        """Move earlier runs' lines for batches > `resumed_batch` to the `.superseded` file (module doc)."""
        self._write_pending(force=True)
        with open(self.path, 'rb') as f:
            earlier, ours = f.read(earlier_bytes), f.read()
        kept, moved, last = [], [], None
        for raw in earlier.decode('utf-8', errors='replace').splitlines():
            try:
                batch = int(json.loads(raw)['batch'])
            except (ValueError, KeyError, TypeError):
                kept.append(raw)  # a killed write's fragment: read_metrics skips it
                continue
            if batch < resumed_batch:
                kept.append(raw)
            elif batch == resumed_batch:
                last = json.loads(raw)
            else:
                moved.append(raw)
        if not moved and last is None:
            return
        if moved:
            with open(self.path + '.superseded', 'a', encoding='utf-8') as side:
                side.write(''.join(json.dumps({**json.loads(raw), 'superseded_at_resume': resumed_batch}) + '\n'
                                   for raw in moved))
        if self._file is not None:
            self._file.close()
            self._file = None
        tmp = self.path + '.tmp'
        with open(tmp, 'wb') as f:  # replaced in one rename: a kill leaves the old file or the new one
            f.write(''.join(raw + '\n' for raw in kept).encode('utf-8') + ours)
        os.replace(tmp, self.path)
        self._open()
        if last is not None:
            # Pending again: the resumed run's metrics for this step update it, and it is written once.
            last.pop('batch')
            self._step, self._pending = resumed_batch, last


def read_metrics(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Metrics by batch from a JSONLinesLogger file, sorted by batch.

    When a batch appears on several lines (a resumed run replaying it), the later line
    replaces the earlier one whole. Unparseable lines (the tail of a killed write) are
    skipped. Each value dict has the metrics without the `batch` key.
    """
    out: dict[int, dict[str, Any]] = {}
    with open(path, encoding='utf-8') as f:
        for raw in f:
            raw = raw.strip()
            if not raw:
                continue
            try:
                line = json.loads(raw)
                batch = int(line.pop('batch'))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            out[batch] = line
    return dict(sorted(out.items()))


def _on_host(tensor: Any) -> bool:
    """Whether reading this tensor's value costs no host-device sync."""
    return tensor.device.type == 'cpu'


def _plain(value: Any) -> Any:
    # Metrics arrive as Python floats, 0-d tensors or numpy scalars; json needs plain values.
    if hasattr(value, 'detach'):  # torch.Tensor
        value = value.detach()
        # A device tensor is copied on its device (asynchronous) and read when its line is written.
        return value.tolist() if _on_host(value) else value.clone()
    if hasattr(value, 'tolist'):  # numpy array or scalar
        return value.tolist()
    return value


def _holds_device_tensors(lines: list[dict[str, Any]]) -> bool:
    return any(hasattr(v, 'detach') for line in lines for v in line.values())


def _values_to_host(lines: list[dict[str, Any]]) -> None:
    """Replace every tensor in `lines` by its value, with one device-to-host copy per (device, dtype)."""
    import torch

    groups: dict[tuple[Any, Any], list[tuple[dict[str, Any], str, Any]]] = {}
    for line in lines:
        for key, value in line.items():
            if hasattr(value, 'detach'):
                groups.setdefault((value.device, value.dtype), []).append((line, key, value))
    for entries in groups.values():
        # tolist() on the concatenation is the one device-to-host copy (and sync) of this group.
        flat = torch.cat([t.reshape(-1) for _, _, t in entries]).tolist()
        offset = 0
        for line, key, t in entries:
            line[key] = _nest(flat[offset:offset + t.numel()], tuple(t.shape))
            offset += t.numel()


def _nest(values: list[Any], shape: tuple[int, ...]) -> Any:
    """A flat list of values in the nested-list form `tensor.tolist()` gives for `shape`."""
    if not shape:
        return values[0]
    inner = math.prod(shape[1:])
    return [_nest(values[i * inner:(i + 1) * inner], shape[1:]) for i in range(shape[0])]


def _to_json(value: Any) -> Any:
    # Anything still not JSON-serialisable is recorded as its repr rather than crashing the run.
    return str(value)


def _ends_with_newline(path: str) -> bool:
    with open(path, 'rb') as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b'\n'
