"""The callback registry: names, keys, errors, and the callbacks running in a real tiny Trainer."""

from __future__ import annotations

import pytest
import torch
from composer import Trainer
from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.models import ComposerClassifier
from torch.utils.data import DataLoader, TensorDataset

from foundry.callbacks import CALLBACK_KEYS, CALLBACKS, build_callbacks
from foundry.loggers.jsonl import JSONLinesLogger, read_metrics

# llm-foundry's pretrain YAML section, as the config loader hands it over.
LLM_FOUNDRY_CALLBACKS = {
    'speed_monitor': {'window_size': 10},
    'lr_monitor': {},
    'memory_monitor': {},
    'runtime_estimator': {},
}


def test_llm_foundry_section_builds_in_order():
    built = build_callbacks(LLM_FOUNDRY_CALLBACKS)
    assert [type(c) for c in built] == [SpeedMonitor, LRMonitor, MemoryMonitor, RuntimeEstimator]
    assert built[0].history_wct.maxlen == 10 + 1  # SpeedMonitor keeps window_size + 1 timestamps


def test_empty_entries_and_sections():
    assert build_callbacks(None) == [] and build_callbacks({}) == []
    (monitor,) = build_callbacks({'optimizer_monitor': None})
    assert isinstance(monitor, OptimizerMonitor)


def test_keys_table():
    assert set(CALLBACKS) == set(CALLBACK_KEYS) == {
        'speed_monitor', 'lr_monitor', 'memory_monitor', 'runtime_estimator', 'optimizer_monitor',
        'hf_checkpointer', 'throughput_monitor',
    }
    assert CALLBACK_KEYS['speed_monitor']['window_size'] == 100
    assert CALLBACK_KEYS['lr_monitor'] == {}
    assert 'batch_log_interval' in CALLBACK_KEYS['optimizer_monitor']


def test_unknown_name_suggests_nearest():
    with pytest.raises(ValueError, match=r"unknown callback 'speed_monitr' \(did you mean 'speed_monitor'\?\)"):
        build_callbacks({'speed_monitr': {}})


def test_unknown_key_names_callback_and_keys():
    with pytest.raises(ValueError) as e:
        build_callbacks({'speed_monitor': {'window': 5}})
    msg = str(e.value)
    assert "unknown key 'window' for callback 'speed_monitor'" in msg
    assert "did you mean 'window_size'" in msg and 'gpu_flops_available' in msg


def test_callbacks_log_in_tiny_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(24, 8), torch.randint(0, 3, (24,)))
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    cfg = {
        'speed_monitor': {'window_size': 2},
        'lr_monitor': {},
        'memory_monitor': {},  # logs nothing on CPU, must not fail
        'runtime_estimator': {'skip_batches': 1},
        'optimizer_monitor': {'batch_log_interval': 1},
    }
    trainer = Trainer(
        model=ComposerClassifier(module, num_classes=3),
        train_dataloader=DataLoader(data, batch_size=4),
        optimizers=torch.optim.SGD(module.parameters(), lr=0.1),
        max_duration='6ba',
        device='cpu',
        loggers=[JSONLinesLogger(tmp_path / 'metrics.jsonl')],
        callbacks=build_callbacks(cfg),
        progress_bar=False,
        log_to_console=False,
    )
    trainer.fit()
    trainer.close()

    keys = set().union(*read_metrics(tmp_path / 'metrics.jsonl').values())
    assert 'throughput/batches_per_sec' in keys
    assert any(k.startswith('lr-SGD') for k in keys)
    assert 'l2_norm/grad/global' in keys
    assert 'time/remaining_estimate' in keys
