"""JSONLinesLogger and the logger registry, driven through a real tiny Composer Trainer on CPU."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from composer import Trainer
from composer.loggers import InMemoryLogger, TensorboardLogger, WandBLogger
from composer.models import ComposerClassifier
from torch.utils.data import DataLoader, TensorDataset

from foundry.callbacks import build_callbacks
from foundry.loggers import LOGGER_KEYS, LOGGERS, build_loggers
from foundry.loggers.jsonl import JSONLinesLogger, read_metrics

from tests.loggers.wandb_records import history_rows

BATCHES = 5


def _fit(loggers, callbacks=(), batches: int = BATCHES) -> Trainer:
    """Train a 2-layer classifier on random tensors for `batches` batches of 4."""
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(4 * batches, 8), torch.randint(0, 3, (4 * batches,)))
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    trainer = Trainer(
        model=ComposerClassifier(module, num_classes=3),
        train_dataloader=DataLoader(data, batch_size=4),
        optimizers=torch.optim.SGD(module.parameters(), lr=0.1),
        max_duration=f'{batches}ba',
        device='cpu',
        loggers=list(loggers),
        callbacks=list(callbacks),
        progress_bar=False,
        log_to_console=False,
        seed=0,
    )
    trainer.fit()
    trainer.close()
    return trainer


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    # Composer and wandb may drop files in the working directory.
    monkeypatch.chdir(tmp_path)


def test_one_line_per_batch_with_train_loss(tmp_path):
    path = tmp_path / 'run' / 'metrics.jsonl'  # parent folder does not exist yet
    memory = InMemoryLogger()
    _fit([JSONLinesLogger(path), memory], build_callbacks({'lr_monitor': None, 'speed_monitor': {'window_size': 2}}))

    lines = [json.loads(raw) for raw in path.read_text().splitlines()]
    batches = [line['batch'] for line in lines]
    assert batches == sorted(set(batches)), 'one line per step, in order'
    with_loss = [line for line in lines if 'loss/train/total' in line]
    # 0-based: the line with batch k carries the loss of the k-th batch trained.
    assert [line['batch'] for line in with_loss] == list(range(BATCHES))
    # The same numbers Composer handed every other destination, at the same steps.
    expected = {ts.batch.value: value for ts, value in memory.data['loss/train/total']}
    assert {line['batch']: line['loss/train/total'] for line in with_loss} == pytest.approx(expected)
    for line in with_loss:
        assert line['time/batch'] == line['batch']
    # Callback metrics from the end of batch k sit on line k + 1, as in wandb; a final line closes the fit.
    assert batches[-1] == BATCHES and 'loss/train/total' not in lines[-1]
    assert any('throughput/batches_per_sec' in line for line in lines)
    assert all(any(k.startswith('lr-') for k in line) for line in lines[1:])


def test_resumed_run_appends_and_later_line_wins(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    _fit([JSONLinesLogger(path)])
    first = read_metrics(path)
    n_lines = len(path.read_text().splitlines())

    # A "resumed" run that replays batches 3 and 4 with different values.
    resumed = JSONLinesLogger(path)
    resumed.log_metrics({'loss/train/total': 100.0}, step=3)
    resumed.log_metrics({'time/batch': 3}, step=3)
    resumed.log_metrics({'loss/train/total': 200.0}, step=4)
    resumed.close(None, None)

    assert len(path.read_text().splitlines()) == n_lines + 2, 'appended, not overwritten'
    metrics = read_metrics(path)
    assert list(metrics) == sorted(metrics)
    assert metrics[3] == {'loss/train/total': 100.0, 'time/batch': 3}  # the later line replaces the whole step
    assert metrics[4] == {'loss/train/total': 200.0}
    assert metrics[2] == first[2]


def _fit_checkpointed(loggers, save_folder, batches: int, data_seed: int, load_path=None) -> Trainer:
    """`_fit` with a checkpoint every 3 batches (and optionally resuming from one)."""
    torch.manual_seed(data_seed)
    data = TensorDataset(torch.randn(4 * 6, 8), torch.randint(0, 3, (4 * 6,)))
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    trainer = Trainer(model=ComposerClassifier(module, num_classes=3), train_dataloader=DataLoader(data, batch_size=4),
                      optimizers=torch.optim.SGD(module.parameters(), lr=0.1), max_duration=f'{batches}ba',
                      device='cpu', loggers=list(loggers), callbacks=build_callbacks({'lr_monitor': None}),
                      save_folder=str(save_folder), save_interval='3ba', load_path=load_path,
                      progress_bar=False, log_to_console=False, seed=0)
    trainer.fit()
    trainer.close()
    return trainer


def test_resume_keeps_one_line_per_batch_with_the_continuing_runs_values(tmp_path):
    """A run checkpointed at batch 3 and killed after logging batch 5 is resumed from 3: batches 3-5 once."""
    path = tmp_path / 'metrics.jsonl'
    _fit_checkpointed([JSONLinesLogger(path)], tmp_path / 'ckpt', batches=6, data_seed=0)
    first = read_metrics(path)
    # What a kill after batch 5 leaves: lines up to batch 5 (no end-of-fit line 6), the checkpoint at 3.
    path.write_text(''.join(line for line in path.read_text().splitlines(keepends=True)
                            if json.loads(line)['batch'] <= 5))
    # The resumed run trains batches 3-5 on other data, so its losses differ from the killed run's.
    _fit_checkpointed([JSONLinesLogger(path)], tmp_path / 'ckpt2', batches=6, data_seed=1,
                      load_path=str(tmp_path / 'ckpt' / 'ep0-ba3-rank0.pt'))

    lines = [json.loads(raw) for raw in path.read_text().splitlines()]
    assert [line['batch'] for line in lines] == list(range(7)), 'every batch once, in order'
    metrics = read_metrics(path)
    for b in range(3):
        assert metrics[b] == first[b]
    for b in range(3, 6):
        assert metrics[b]['loss/train/total'] != first[b]['loss/train/total'], f'batch {b} kept the killed run\'s loss'
    # Line 3 keeps what only the killed run logged, before its checkpoint (lr_monitor at batch 2's end).
    assert metrics[3]['lr-SGD/group0'] == first[3]['lr-SGD/group0'] == 0.1
    moved = [json.loads(raw) for raw in (tmp_path / 'metrics.jsonl.superseded').read_text().splitlines()]
    assert [(m['batch'], m['superseded_at_resume']) for m in moved] == [(4, 3), (5, 3)]
    assert [m['loss/train/total'] for m in moved] == [first[4]['loss/train/total'], first[5]['loss/train/total']]


def test_killed_writer_fragment_is_isolated(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    path.write_text('{"batch": 0, "loss/train/total": 1.0}\n{"batch": 1, "loss/tr')  # killed mid-write
    logger = JSONLinesLogger(path)
    logger.log_metrics({'loss/train/total': 0.5}, step=1)
    logger.close(None, None)
    assert read_metrics(path) == {0: {'loss/train/total': 1.0}, 1: {'loss/train/total': 0.5}}


def test_lines_are_flushed_as_steps_advance(tmp_path):
    path = tmp_path / 'metrics.jsonl'
    logger = JSONLinesLogger(path)
    logger.log_metrics({'a': torch.tensor(1.5)}, step=0)
    logger.log_metrics({'b': 2}, step=0)
    assert not path.exists() or path.read_text() == '', 'step 0 may still get metrics'
    logger.log_metrics({'a': 3.0}, step=1)
    # Readable by another process before close: the run could be killed now and keep step 0.
    assert read_metrics(path) == {0: {'a': 1.5, 'b': 2}}
    logger.close(None, None)
    assert read_metrics(path) == {0: {'a': 1.5, 'b': 2}, 1: {'a': 3.0}}


def test_step_that_returns_is_rewritten_complete(tmp_path):
    """trainer.eval() after fit logs at the final step again; the later line must keep the fit's values."""
    path = tmp_path / 'metrics.jsonl'
    logger = JSONLinesLogger(path)
    logger.log_metrics({'time/batch': 5}, step=5)
    logger.fit_end(None, None)
    logger.log_metrics({'metrics/eval/Accuracy': 0.5}, step=5)
    logger.close(None, None)
    assert read_metrics(path)[5] == {'time/batch': 5, 'metrics/eval/Accuracy': 0.5}


def test_only_global_rank_zero_writes(tmp_path, monkeypatch, no_process_group):
    monkeypatch.setenv('RANK', '1')  # what composer.utils.dist reads when no process group is up
    path = tmp_path / 'metrics.jsonl'
    logger = JSONLinesLogger(path)
    logger.init(None, None)
    logger.log_metrics({'a': 1.0}, step=0)
    logger.close(None, None)
    assert not path.exists()


def test_wandb_offline_logs_in_tiny_trainer(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.setenv('WANDB_DIR', str(tmp_path))
    monkeypatch.setenv('WANDB_SILENT', 'true')
    import wandb

    wandb.teardown()  # a wandb service left by an earlier in-process run would keep the old settings
    cfg = {'wandb': {'project': 'foundry-test', 'name': 'tiny', 'tags': ['ci'], 'init_kwargs': {'notes': 'offline'}}}
    loggers = build_loggers(cfg)
    assert len(loggers) == 1 and isinstance(loggers[0], WandBLogger)
    assert cfg['wandb']['init_kwargs'] == {'notes': 'offline'}, 'the config is not mutated'

    _fit(loggers)

    # Composer logs (rather than raises) errors from a logger's close; there must be none.
    assert not [r for r in caplog.records if 'Error running' in r.getMessage()]
    runs = glob.glob(str(tmp_path / 'wandb' / 'offline-run-*'))
    assert len(runs) == 1
    # The run file is written by wandb's service process; shutting it down flushes the file.
    wandb.teardown()
    (log,) = glob.glob(os.path.join(runs[0], '*.wandb'))
    losses = [row['loss/train/total'] for row in history_rows(log) if 'loss/train/total' in row]
    assert len(losses) == BATCHES, f'one train loss per batch in the offline run, got {losses}'
    assert all(isinstance(x, float) and 0.0 < x < 10.0 for x in losses), losses


def test_tensorboard_logs_in_tiny_trainer(tmp_path):
    loggers = build_loggers({'tensorboard': {'log_dir': str(tmp_path / 'tb')}})
    assert [type(x) for x in loggers] == [TensorboardLogger]
    _fit(loggers)
    assert glob.glob(str(tmp_path / 'tb' / '**' / 'events.out.tfevents.*'), recursive=True)


def test_logger_registry_errors():
    assert set(LOGGERS) == {'wandb', 'tensorboard'}
    assert {'project', 'entity', 'name', 'group', 'tags', 'log_artifacts', 'init_kwargs'} <= set(LOGGER_KEYS['wandb'])
    assert 'log_dir' in LOGGER_KEYS['tensorboard']
    assert build_loggers(None) == [] and build_loggers({}) == []
    with pytest.raises(ValueError, match=r"unknown logger 'wandbb' \(did you mean 'wandb'\?\)"):
        build_loggers({'wandbb': {}})
    with pytest.raises(ValueError, match=r"unknown key 'projct' for logger 'wandb' \(did you mean 'project'\?\)"):
        build_loggers({'wandb': {'projct': 'x'}})


def test_device_tensor_lines_are_held_and_written_in_order(tmp_path, monkeypatch):
    """Lines holding accelerator tensors are written every device_flush_interval lines, in step order.

    No GPU here: `_on_host` is patched so CPU tensors take the accelerator path
    (tests/callbacks/test_host_sync.py counts the host reads this saves).
    """
    import foundry.loggers.jsonl as jsonl

    monkeypatch.setattr(jsonl, '_on_host', lambda tensor: False)
    path = tmp_path / 'metrics.jsonl'
    logger = JSONLinesLogger(path, device_flush_interval=3)
    source = torch.tensor([1.0, 2.0])
    logger.log_metrics({'loss': torch.tensor(0.5), 'pair': source}, step=0)
    source.add_(10)  # the logger kept a copy: the line shows the value at log time
    logger.log_metrics({'lr': 0.1}, step=1)  # plain, but after a held line: waits to keep the order
    logger.log_metrics({'n': torch.tensor([[1, 2], [3, 4]])}, step=2)
    assert not path.exists() or path.read_text() == ''
    logger.log_metrics({'loss': torch.tensor(0.25)}, step=3)  # completes line 2: three held, written
    assert read_metrics(path) == {0: {'loss': 0.5, 'pair': [1.0, 2.0]}, 1: {'lr': 0.1}, 2: {'n': [[1, 2], [3, 4]]}}
    logger.fit_end(None, None)  # fit end writes whatever is held
    assert read_metrics(path)[3] == {'loss': 0.25}
    logger.log_metrics({'metrics/eval/x': torch.tensor(2.0)}, step=3)  # a step that returns, then close
    logger.close(None, None)
    assert read_metrics(path)[3] == {'loss': 0.25, 'metrics/eval/x': 2.0}
    with pytest.raises(ValueError, match='device_flush_interval'):
        JSONLinesLogger(path, device_flush_interval=0)
