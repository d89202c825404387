"""The loss guard on real training runs in this process (tiny.yaml, one rank, FSDP2, sharded checkpoints):
a NaN injected into the loss of a chosen batch (FOUNDRY_INJECT_NAN) poisons the model under `warn`, is
dropped under `skip`, and rolled back to the last checkpoint (with the next batches' data skipped) under
`rollback`; every action is logged with its batch. Checkpoints are compared tensor for tensor.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from foundry.callbacks.loss_guard import SpikeDetector
from foundry.config.errors import ConfigError
from foundry.loggers.jsonl import read_metrics
from tests.e2e.conftest import TINY_YAML, tiny_data  # noqa: F401  (the corpus fixture)


def _train(data_root: str, root: str, nan_batch: int, monkeypatch, *extra: str) -> dict[int, dict]:
    from foundry.config.load import load_config
    from foundry.train import train

    monkeypatch.setenv('FOUNDRY_INJECT_NAN', str(nan_batch))
    cfg = load_config(TINY_YAML, [f'variables.data_root={data_root}', f'train_loader.dataset.local={data_root}/english',
                                  f'run_folder={root}/run', f'save_folder={root}/checkpoints', 'model.resid_pdrop=0.1',
                                  *extra])
    train(cfg).close()
    return read_metrics(f'{root}/run/metrics.jsonl')


def _weights(checkpoint: str) -> dict[str, torch.Tensor]:
    from foundry.checkpoint.reader import iter_model_tensors

    out: dict[str, torch.Tensor] = {}
    for group in iter_model_tensors(checkpoint):
        out.update(group)
    return out


def _momentum(checkpoint: str, tmp_path) -> dict[str, torch.Tensor]:
    """DecoupledLionW's exp_avg per parameter, read from a sharded checkpoint."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    out = tmp_path / f'{abs(hash(checkpoint))}.pt'
    dcp_to_torch_save(checkpoint, str(out))
    state = torch.load(str(out), weights_only=False)['state']['optimizers']['DecoupledLionW']['state']
    return {name: s['exp_avg'] for name, s in state.items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_warn_lets_the_nan_in_and_skip_drops_that_update(tiny_data, tmp_path, monkeypatch, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger='foundry')
    common = ('max_duration=5ba', 'save_interval=1ba')

    warned = _train(tiny_data, str(tmp_path / 'warn'), 3, monkeypatch, 'loss_guard.action=warn', *common)
    assert 'loss guard: batch 3: non-finite loss (nan); the update is applied (loss_guard.action: warn)' in caplog.text
    assert warned[3]['loss_guard/warned'] == 1 and math.isnan(warned[3]['loss/train/total'])
    # The injection is real: the applied NaN gradient poisons LION's momentum, and as torch's sign(NaN) is 0,
    # the weights stop moving for good (batch 4 trains nothing).
    warn_checkpoints = tmp_path / 'warn' / 'checkpoints'
    assert not _finite(_momentum(str(warn_checkpoints / 'ep0-ba4'), tmp_path))
    assert _same(_weights(str(warn_checkpoints / 'ep0-ba4')), _weights(str(warn_checkpoints / 'ep0-ba5')))

    caplog.clear()
    skipped = _train(tiny_data, str(tmp_path / 'skip'), 3, monkeypatch, 'loss_guard.action=skip', *common)
    print('\n'.join(line for line in caplog.text.splitlines() if 'loss guard' in line))
    assert 'loss guard: batch 3: non-finite loss (nan); the update is dropped (loss_guard.action: skip)' in caplog.text
    assert skipped[3]['loss_guard/skipped'] == 1 and math.isnan(skipped[3]['loss/train/total'])
    checkpoints = tmp_path / 'skip' / 'checkpoints'
    before, after = _weights(str(checkpoints / 'ep0-ba3')), _weights(str(checkpoints / 'ep0-ba4'))
    assert _same(before, after)  # batch 3 changed nothing: weights and optimizer state
    assert _same(_momentum(str(checkpoints / 'ep0-ba3'), tmp_path), _momentum(str(checkpoints / 'ep0-ba4'), tmp_path))
    assert _finite(_momentum(str(checkpoints / 'ep0-ba5'), tmp_path))
    assert not _same(after, _weights(str(checkpoints / 'ep0-ba5')))  # batch 4 trained again
    assert _finite(_weights(str(checkpoints / 'ep0-ba5')))
    assert all(math.isfinite(skipped[b]['loss/train/total']) for b in (0, 1, 2, 4))
    # Up to the NaN both runs trained the same batches identically: the guard itself changes nothing.
    assert [skipped[b]['loss/train/total'] for b in range(3)] == [warned[b]['loss/train/total'] for b in range(3)]


def test_rollback_restores_the_last_checkpoint_and_skips_the_next_batches(tiny_data, tmp_path, monkeypatch,  # noqa: F811
                                                                           caplog):
    caplog.set_level(logging.WARNING, logger='foundry')
    metrics = _train(tiny_data, str(tmp_path), 5, monkeypatch, 'loss_guard.action=rollback', 'loss_guard.skip_batches=2',
                     'max_duration=8ba', 'save_interval=2ba')
    checkpoints = tmp_path / 'checkpoints'
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('loss guard')]
    print('\n'.join(lines))
    assert lines == [
        f'loss guard: batch 5: non-finite loss (nan); the update is dropped, the model and '
        f'optimizer are restored from {checkpoints}/ep0-ba4 (batch 4) and the next 2 batches of data are skipped '
        f'(loss_guard.action: rollback)',
        'loss guard: batch 6: data skipped after the rollback at batch 5 (1 more to skip)',
        'loss guard: batch 7: data skipped after the rollback at batch 5 (0 more to skip)',
    ]
    assert metrics[5]['loss_guard/rolled_back_to'] == 4
    assert [b for b, m in metrics.items() if m.get('loss_guard/skipped')] == [5, 6, 7]
    at4 = _weights(str(checkpoints / 'ep0-ba4'))
    # Batch 4's update was undone, 5's dropped, 6 and 7 skipped: the run ends with the batch-4 weights
    # and optimizer state.
    assert _same(_weights(str(checkpoints / 'ep0-ba6')), at4)
    assert _same(_weights(str(checkpoints / 'ep0-ba8')), at4)
    assert _same(_momentum(str(checkpoints / 'ep0-ba8'), tmp_path), _momentum(str(checkpoints / 'ep0-ba4'), tmp_path))
    assert _finite(at4)


def test_spike_detector():
    spikes = SpikeDetector(window=4, sigmas=3.0)
    for loss in (2.0, 2.1, 1.9, 2.0):
        assert spikes.check(loss) is None  # filling the window
    assert spikes.check(2.2) is None  # within 3 standard deviations (0.082): 2.0 + 0.245
    message = spikes.check(9.0)
    assert message is not None and message.startswith('loss spike: 9 is above the mean of the last 4 batches (2.05)')
    assert list(spikes.history) == [2.1, 1.9, 2.0, 2.2]  # the spike did not join the window
    assert SpikeDetector(window=4, sigmas=None).check(1e9) is None  # non-finite checks only


@pytest.mark.parametrize('override, message', [
    ('loss_guard.action=rolback', "`loss_guard.action` is 'rolback'; expected one of 'off', 'warn', 'skip', 'rollback'"),
    ('loss_guard.window=1', '`loss_guard.window` is 1; expected at least 2 batches'),
    ('loss_guard.spike_sigmas=0', '`loss_guard.spike_sigmas` is 0; expected a positive number'),
    ('loss_guard.action=rollback save_folder=s3://bucket/run',
     '`loss_guard.action: rollback` reads the last checkpoint from a local `save_folder`'),
    ('loss_guard.action=rollback fsdp_config.state_dict_type=full', '`loss_guard.action: rollback` needs sharded'),
    ('preemption.deadline_s=0', '`preemption.deadline_s` is 0; expected a number of seconds above 0'),
    ('preemption.exit_code=130', '`preemption.exit_code` is 130; expected an exit status from 1 to 255 other than 130'),
    ('watchdog.timeout_s=-5', '`watchdog.timeout_s` is -5; expected seconds above 0, or null for no watchdog'),
    ('watchdog.timout_s=5', 'unknown key `watchdog.timout_s`: did you mean `watchdog.timeout_s`?'),
])
def test_long_run_keys_are_validated(override, message):
    from foundry.config.load import load_config

    with pytest.raises(ConfigError) as info:
        load_config(TINY_YAML, ['variables.data_root=/data', 'save_folder=/tmp/x', *override.split()])
    assert message in str(info.value)


def test_bare_off_in_yaml_means_off():
    from foundry.config.load import load_config

    cfg = load_config(TINY_YAML, ['variables.data_root=/data', 'loss_guard.action=off'])  # YAML reads it as false
    assert cfg.loss_guard.action == 'off'
