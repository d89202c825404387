"""No host-device sync per batch in foundry's callbacks and loggers.

Reading a GPU tensor's value (`.item()`, `float(t)`, `.tolist()`, `.cpu()`, printing it) blocks the
host until the GPU has drained its queue. There is no GPU here, so `HostReads` (a TorchFunctionMode,
the CPU stand-in for `torch.cuda.set_sync_debug_mode`) records every such call made while code in
foundry/callbacks or foundry/loggers is on the stack. Metrics are CPU tensors, and the JSON-lines
logger is told to treat them as accelerator tensors (`_on_host` patched to False), which is what it
sees on a GPU; the calls it then makes are exactly the ones that would block there.

Composer's own per-batch syncs (it reads the loss with `.cpu().item()`) are not foundry's and are
not counted.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from composer import Trainer
from composer.core import Callback, State
from composer.devices import DeviceCPU
from composer.loggers import InMemoryLogger, Logger
from torch.overrides import TorchFunctionMode
from torch.utils.data import DataLoader

import foundry.loggers.jsonl as jsonl
from foundry.callbacks.mfu import ThroughputMonitor
from foundry.loggers.jsonl import JSONLinesLogger, read_metrics
from foundry.models import ComposerMPTCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'models'))
from mpt_helpers import VOCAB, tiny_config  # noqa: E402

FOUNDRY = Path(jsonl.__file__).resolve().parents[1]
WATCHED = tuple(str(FOUNDRY / sub) + os.sep for sub in ('callbacks', 'loggers'))
# Tensor methods that copy a value to the host (and so wait for the device).
READS = {'item', 'tolist', 'cpu', 'numpy', '__float__', '__int__', '__bool__', '__index__', '__format__',
         '__repr__', '__str__', '__array__'}


def _to_host(args, kwargs) -> bool:
    targets = list(args[1:]) + [kwargs.get('device')]
    return any(str(t) == 'cpu' for t in targets if isinstance(t, (str, torch.device)))


class HostReads(TorchFunctionMode):
    """Records (batch, call) for every host read made while foundry's callbacks/loggers run."""

    def __init__(self):
        super().__init__()
        self.batch = -1
        self.calls: list[tuple[int, str]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, '__name__', '')
        if (name in READS or (name == 'to' and _to_host(args, kwargs))) and self._in_watched_code():
            self.calls.append((self.batch, name))
        return func(*args, **kwargs)

    @staticmethod
    def _in_watched_code() -> bool:
        frame = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_filename.startswith(WATCHED):
                return True
            frame = frame.f_back
        return False

    def per_batch(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for batch, _ in self.calls:
            out[batch] = out.get(batch, 0) + 1
        return out


@pytest.fixture
def metrics_on_device(monkeypatch):
    monkeypatch.setattr(jsonl, '_on_host', lambda tensor: False)


def test_the_counter_sees_the_reads_it_should(metrics_on_device, tmp_path):
    """The mode catches each kind of read the logger could make, and only inside watched code."""
    t = torch.tensor(1.5)
    with HostReads() as reads:
        t.item(), float(t), t.tolist(), t.cpu(), t.to('cpu'), f'{t}'  # test code: not watched
        jsonl._values_to_host([{'a': t, 'b': torch.ones(2)}])  # watched: one copy per (device, dtype)
    assert [name for _, name in reads.calls] == ['tolist']


def test_monitor_and_logger_read_nothing_between_flushes(metrics_on_device, tmp_path):
    """12 batches of tensor metrics: reads only when 5 held lines are written, at no other batch."""
    model = ComposerMPTCausalLM(tiny_config())
    state = State(model=model, rank_zero_seed=0, run_name='sync', device=DeviceCPU(), max_duration='12ba')
    jsonl_logger = JSONLinesLogger(tmp_path / 'metrics.jsonl', device_flush_interval=5)
    logger = Logger(state, destinations=[jsonl_logger])
    monitor = ThroughputMonitor(window_size=3, peak_flops=1e12)
    ids = torch.zeros(4, 16, dtype=torch.long)
    losses = [torch.tensor(2.0 + i / 8) for i in range(12)]
    with HostReads() as reads:
        monitor.fit_start(state, logger)
        for i in range(12):
            reads.batch = i
            state.batch = {'input_ids': ids, 'labels': ids}
            logger.log_metrics({'loss/train/total': losses[i], 'metrics/train/Perplexity': losses[i].exp(),
                                'tokens': torch.tensor(64 * i)})
            state.timestamp = state.timestamp.to_next_batch(samples=4, tokens=64)
            monitor.batch_end(state, logger)  # its metrics (Python floats) land on the next step's line
        reads.batch = 12
        jsonl_logger.fit_end(state, logger)
    # The monitor logs at step i + 1 at the end of batch i, which completes line i: lines 0..4 are
    # complete at batch 4, 5..9 at batch 9, the rest at fit end. Each flush is one copy per
    # (device, dtype): float32 values and int64 token counts.
    assert reads.per_batch() == {4: 2, 9: 2, 12: 2}
    assert all(name == 'tolist' for _, name in reads.calls)
    rows = read_metrics(tmp_path / 'metrics.jsonl')
    assert [rows[i]['loss/train/total'] for i in range(12)] == pytest.approx([2.0 + i / 8 for i in range(12)])
    assert rows[11]['tokens'] == 64 * 11 and isinstance(rows[11]['tokens'], int)
    assert 'throughput/device/mfu' in rows[12]


def test_a_real_fit_reads_only_at_flushes(metrics_on_device, tmp_path):
    """Composer's Trainer with torchmetrics train metrics (tensors every batch) and throughput_monitor."""

    class MarkBatch(Callback):
        def __init__(self, reads: HostReads):
            self.reads = reads

        def batch_start(self, state, logger):
            self.reads.batch = int(state.timestamp.batch)

        def fit_end(self, state, logger):
            self.reads.batch = -2

    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB, (40, 16), generator=torch.Generator().manual_seed(0))
    data = [{'input_ids': x, 'labels': x, 'attention_mask': torch.ones_like(x)} for x in ids]
    model = ComposerMPTCausalLM(tiny_config(), use_train_metrics=True)
    memory = InMemoryLogger()
    reads = HostReads()
    trainer = Trainer(model=model, train_dataloader=DataLoader(data, batch_size=4),
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.01), max_duration='10ba', device='cpu',
                      loggers=[JSONLinesLogger(tmp_path / 'metrics.jsonl', device_flush_interval=4), memory],
                      callbacks=[ThroughputMonitor(window_size=2, peak_flops=1e12), MarkBatch(reads)],
                      progress_bar=False, log_to_console=False)
    with reads:
        trainer.fit()
    trainer.close()
    per_batch = reads.per_batch()
    # One copy per flush of 4 held lines (all train metrics are float32), at two batches, plus fit end.
    fit_batches = sorted(b for b in per_batch if b >= 0)
    assert len(fit_batches) == 2 and fit_batches[1] - fit_batches[0] == 4, per_batch
    assert all(per_batch[b] == 1 for b in fit_batches) and per_batch.get(-2, 0) <= 1
    rows = read_metrics(tmp_path / 'metrics.jsonl')
    logged = {ts.batch.value: float(v) for ts, v in memory.data['metrics/train/LanguageCrossEntropy']}
    assert {b: rows[b]['metrics/train/LanguageCrossEntropy'] for b in logged} == pytest.approx(logged)
    assert any('throughput/device/mfu' in r for r in rows.values())
