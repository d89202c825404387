"""throughput_monitor: the peak table, the CPU peak measurement, and its metrics in a real Trainer run."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch
from composer import Trainer
from torch.utils.data import DataLoader

from foundry.callbacks import CALLBACK_KEYS, CALLBACKS, build_callbacks
from foundry.callbacks.mfu import GPU_PEAK_FLOPS, ThroughputMonitor, gpu_peak_flops, measure_cpu_peak_flops
from foundry.loggers.jsonl import JSONLinesLogger, read_metrics
from foundry.models import ComposerMPTCausalLM, flops_per_sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'models'))
from mpt_helpers import VOCAB, tiny_config  # noqa: E402


@pytest.mark.parametrize('name,precision,expected', [
    ('NVIDIA A100-SXM4-40GB', 'amp_bf16', 312e12),
    ('NVIDIA A100-SXM4-80GB', 'amp_fp16', 312e12),
    ('NVIDIA H100 80GB HBM3', 'amp_bf16', 989e12),
    ('NVIDIA H200', 'amp_bf16', 989e12),
    ('NVIDIA H100 PCIe', 'amp_bf16', 756e12),
    ('NVIDIA A100-SXM4-40GB', 'fp32', 19.5e12),
    ('NVIDIA H100 80GB HBM3', 'fp32', 67e12),
    ('NVIDIA H200', 'fp32', 67e12),
    ('Tesla T4', 'amp_bf16', None),
])
def test_gpu_peak_table(name, precision, expected):
    with allow_tf32(False):
        assert gpu_peak_flops(name, precision) == expected


def test_fp32_with_tf32_allowed_uses_tensor_core_peak():
    with allow_tf32(True):
        assert gpu_peak_flops('NVIDIA H100 80GB HBM3', 'fp32') == GPU_PEAK_FLOPS['h100']['tf32']


@contextlib.contextmanager
def allow_tf32(value: bool):
    # torch.backends.cuda.matmul is a module proxy that monkeypatch cannot restore.
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = value
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_cpu_peak_is_measured_once_per_process():
    peak = measure_cpu_peak_flops(seconds=0.2)
    assert 1e9 < peak < 1e14  # between 1 GFLOP/s and 100 TFLOP/s: a real measurement of a CPU
    assert measure_cpu_peak_flops(seconds=0.2) == peak  # cached
    assert torch.get_num_threads() >= 1


def test_registered_with_keys():
    assert CALLBACKS['throughput_monitor'] is ThroughputMonitor
    assert CALLBACK_KEYS['throughput_monitor'] == {
        'window_size': 10, 'log_interval': 1, 'peak_flops': None, 'cpu_peak_seconds': 1.0}
    (monitor,) = build_callbacks({'throughput_monitor': {'window_size': 3}})
    assert monitor.window_size == 3
    with pytest.raises(ValueError, match='window_size'):
        ThroughputMonitor(window_size=0)


def lm_batches(n, batch=4, seq=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (n * batch, seq), generator=g)
    return [{'input_ids': ids[i], 'labels': ids[i], 'attention_mask': torch.ones_like(ids[i])}
            for i in range(len(ids))]


def fit(tmp_path, monitor, batches=8, **config):
    torch.manual_seed(0)
    model = ComposerMPTCausalLM(tiny_config(**config))
    trainer = Trainer(model=model, train_dataloader=DataLoader(lm_batches(batches), batch_size=4),
                      optimizers=torch.optim.SGD(model.parameters(), lr=0.01), max_duration=f'{batches}ba',
                      device='cpu', loggers=[JSONLinesLogger(tmp_path / 'metrics.jsonl')],
                      callbacks=[monitor], progress_bar=False, log_to_console=False)
    trainer.fit()
    trainer.close()
    return model, read_metrics(tmp_path / 'metrics.jsonl')


def test_metrics_in_a_real_run(tmp_path):
    peak = 5e10
    model, rows = fit(tmp_path, ThroughputMonitor(window_size=3, peak_flops=peak))
    steps = sorted(rows)
    logged = [rows[s] for s in steps if 'throughput/device/mfu' in rows[s]]
    assert len(logged) == 7  # batches 2..8: rates need two batch ends
    flops = 4 * flops_per_sequence(model.config, 16)
    for r in logged:
        assert r['throughput/tokens_per_sec'] == pytest.approx(16 * r['throughput/samples_per_sec'])
        assert r['throughput/samples_per_sec'] == pytest.approx(4 * r['throughput/batches_per_sec'])
        assert r['throughput/device/tokens_per_sec'] == pytest.approx(r['throughput/tokens_per_sec'])
        assert r['throughput/device/flops_per_sec'] == pytest.approx(flops * r['throughput/batches_per_sec'])
        assert r['throughput/device/mfu'] == pytest.approx(r['throughput/device/flops_per_sec'] / peak)
        assert r['throughput/device/hfu'] == pytest.approx(r['throughput/device/mfu'])  # no recomputation
        assert r['time/remaining_estimate_sec'] >= 0
    assert logged[-1]['time/remaining_estimate_sec'] == 0
    assert logged[0]['time/remaining_estimate_sec'] > 0
    first = [rows[s]['time/first_batch_sec'] for s in steps if 'time/first_batch_sec' in rows[s]]
    assert len(first) == 1 and first[0] > 0
    assert any(rows[s].get('throughput/device/peak_flops') == peak for s in steps)


@pytest.mark.parametrize('every,recomputed', [(1, 2), (2, 1)])
def test_hfu_counts_recomputed_blocks(tmp_path, every, recomputed):
    _, rows = fit(tmp_path, ThroughputMonitor(window_size=2, peak_flops=1e11), batches=4,
                  ac_every_n_blocks=every)
    r = [v for v in rows.values() if 'throughput/device/hfu' in v][-1]
    # llm-foundry's HFU: 4 passes instead of 3 when every block (of 2) is recomputed.
    passes = 3 + recomputed / 2
    assert r['throughput/device/hfu'] == pytest.approx(r['throughput/device/mfu'] * passes / 3)


def test_cpu_run_measures_the_peak(tmp_path):
    _, rows = fit(tmp_path, ThroughputMonitor(window_size=2, cpu_peak_seconds=0.2), batches=3)
    peaks = [v['throughput/device/peak_flops'] for v in rows.values() if 'throughput/device/peak_flops' in v]
    assert peaks == [measure_cpu_peak_flops(seconds=0.2)]
    mfu = [v['throughput/device/mfu'] for v in rows.values() if 'throughput/device/mfu' in v]
    assert mfu and all(0 < m < 1 for m in mfu)
