"""Preemption and Ctrl-C through the real launcher on 2 ranks: stop after the batch, checkpoint, exit status,
and the same command resumes with exactly the per-batch losses of an uninterrupted run.

1. SIGTERM to the launcher process only (what Kubernetes does to a pod's first process), launched with
   `python -m foundry.launch` (Composer's launcher with SIGTERM/SIGUSR1 passed on): exit status 75.
2. The same command with the plain `composer` launcher, then Ctrl-C as a terminal sends it (SIGINT to
   the whole process group): every rank stops after the same batch, exit status 130, one line saying
   how to resume.
3. The same command to the end: losses and data == the uninterrupted run's, batch for batch.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from tests.checkpoint.launching import (BATCHES, Job, logged_batches, losses, overrides, reference_run, run,
                                        side_by_side, token_sums)

pytestmark = pytest.mark.slow

FOUNDRY_LAUNCH = [sys.executable, '-m', 'foundry.launch']


@pytest.fixture(scope='module')
def reference(tiny_data, tmp_path_factory):
    return reference_run(tiny_data, str(tmp_path_factory.mktemp('reference')))


def _stop(job: Job, when, sig: int, to_group: bool) -> tuple[int, float]:
    job.wait_for(when, 'the batch to signal after')
    sent = time.time()
    if to_group:
        os.killpg(job.proc.pid, sig)
    else:
        os.kill(job.proc.pid, sig)
    rc = job.wait(timeout=120)
    return rc, time.time() - sent


def _whole_checkpoints(folder) -> list[int]:
    return sorted(int(p.name.rsplit('ba', 1)[1]) for p in folder.glob('ep0-ba*') if (p / '.metadata').exists())


def test_sigterm_and_ctrl_c_checkpoint_and_exit_then_the_same_command_resumes_exactly(reference, tiny_data, tmp_path):
    # A deadline far above what the stop needs, so that a loaded CI machine tests the checkpoint path, not the
    # deadline (tests/callbacks/test_preemption_signals.py tests that one).
    args = overrides(tiny_data, str(tmp_path), None, 'preemption.deadline_s=300')
    metrics = str(tmp_path / 'run' / 'metrics.jsonl')
    checkpoints = tmp_path / 'checkpoints'

    # 1. SIGTERM to the launcher alone, while batch 3 trains (between the checkpoints at 2 and 4).
    first = Job(args, str(tmp_path / 'log1.txt'), launcher=FOUNDRY_LAUNCH)
    rc, seconds = _stop(first, lambda: 2 in logged_batches(metrics), signal.SIGTERM, to_group=False)
    log1 = first.log()
    stopped1 = max(_whole_checkpoints(checkpoints))
    print(f'SIGTERM to the launcher: exit status {rc} {seconds:.1f}s after the signal; checkpoint ep0-ba{stopped1}')
    print('\n'.join(line for line in log1.splitlines() if 'foundry' in line and 'SIGTERM' in line or
                    line.startswith('foundry:')))
    assert rc == 75, log1[-3000:]
    assert 'foundry.launch: SIGTERM received; passed on to 2 training process(es)' in log1
    line = (f'foundry: preempted (SIGTERM; exit status 75: requeue): stopped after {stopped1} batches; saved checkpoint '
            f'ep0-ba{stopped1} in {checkpoints}; run the same command to resume from it')
    assert line in log1
    assert 'Traceback' not in log1
    assert os.readlink(checkpoints / 'latest-rank0.pt') == f'ep0-ba{stopped1}'
    assert 3 <= stopped1 < BATCHES  # the batch in flight was finished and saved, off the 2-batch interval
    assert max(logged_batches(metrics)) == stopped1 - 1  # and nothing after it was trained

    # 2. The same command (plain composer), Ctrl-C to the process group two batches later.
    second = Job(args, str(tmp_path / 'log2.txt'))
    rc, seconds = _stop(second, lambda: stopped1 + 1 in logged_batches(metrics), signal.SIGINT, to_group=True)
    log2 = second.log()
    stopped2 = max(_whole_checkpoints(checkpoints))
    print(f'Ctrl-C: exit status {rc} {seconds:.1f}s after the signal; checkpoint ep0-ba{stopped2}')
    print('\n'.join(line for line in log2.splitlines() if line.startswith('foundry:')))
    assert rc == 130, log2[-3000:]
    assert f'autoresume: on; resuming from {checkpoints / f"ep0-ba{stopped1}"} (batch {stopped1})' in log2
    assert (f'foundry: interrupted (Ctrl-C): stopped after {stopped2} batches; saved checkpoint ep0-ba{stopped2} in '
            f'{checkpoints}; run the same command to resume from it') in log2
    # No rank prints a traceback. Composer's own launcher reports the Ctrl-C it got as a SystemExit with one
    # (its import of composer/core/engine.py turns SIGINT into sys.exit); `python -m foundry.launch` does not.
    assert 'KeyboardInterrupt' not in log2
    assert log2.count('Traceback (most recent call last)') == log2.count('SystemExit: 130') <= 1
    assert stopped1 < stopped2 < BATCHES

    # 3. The same command again, to the end: the losses of the uninterrupted run, every batch.
    third = run(args, str(tmp_path / 'log3.txt'))
    assert f'resuming from {checkpoints / f"ep0-ba{stopped2}"} (batch {stopped2})' in third.log()
    resumed = losses(metrics)
    print(side_by_side(f'per-batch loss (SIGTERM after {stopped1} batches, Ctrl-C after {stopped2})',
                       {'uninterrupted': reference.losses, 'preempted+resumed': resumed}))
    assert resumed == reference.losses  # bit-identical, every batch
    assert token_sums(metrics) == reference.token_sums
