"""Preemption's signal handling in a real process, without training: a signal before training starts,
the deadline that bounds a stop (a rank stuck in a save), and a second Ctrl-C. Real signals, real threads,
real exits; the checkpoint-and-resume path through the launcher is in tests/e2e/test_preemption.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from foundry.stopping import RunStopped

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(body: str, deadline_s: float = 1.0) -> tuple[subprocess.CompletedProcess, float]:
    script = textwrap.dedent(f'''
        import os, signal, time
        from foundry.callbacks.preemption import Preemption
        preemption = Preemption(deadline_s={deadline_s}, exit_code=75, save_folder='/ckpt/run')
        preemption.install()
        preemption.fit_start(None, None)  # training under way (one process: no process group)
    ''') + textwrap.dedent(body)
    started = time.time()
    result = subprocess.run([sys.executable, '-c', script], cwd=REPO, capture_output=True, text=True, timeout=120)
    return result, time.time() - started


def test_a_rank_stuck_after_the_signal_exits_at_the_deadline_naming_where_it_was():
    result, _ = _run('''
        def write_the_checkpoint():
            time.sleep(60)  # a save that never ends
        started = time.time()
        os.kill(os.getpid(), signal.SIGTERM)
        write_the_checkpoint()
    ''')
    print(result.stderr.strip().splitlines()[-1])
    assert result.returncode == 75, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        'foundry: preempted (SIGTERM; exit status 75: requeue): not stopped within preemption.deadline_s=1s (this '
        'rank was in <string>:9 in write_the_checkpoint); exiting without a new checkpoint; run the same command to '
        'resume from the last checkpoint')


def test_a_second_ctrl_c_stops_at_once():
    result, _ = _run('''
        os.kill(os.getpid(), signal.SIGINT)  # the first: stop after the batch (which never ends here)
        time.sleep(0.2)
        print(f'second at {time.time()}', flush=True)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(60)
    ''', deadline_s=50.0)
    ended = time.time()
    assert result.returncode == 130, result.stderr
    seconds = ended - float(result.stdout.split('second at ')[1])
    assert result.stderr.strip().splitlines()[-1] == (
        'foundry: second Ctrl-C: stopping now, without a checkpoint; run the same command to resume from the last '
        'checkpoint')
    assert seconds < 10  # not the 60 s sleep, nor the 50 s deadline of the first Ctrl-C


def test_a_signal_before_training_starts_stops_the_rank_at_once():
    from foundry.callbacks.preemption import Preemption

    preemption = Preemption(deadline_s=60.0, exit_code=75, save_folder='/ckpt/run')
    preemption.install()
    try:
        with pytest.raises(RunStopped) as info:
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(5)  # the handler raises in this thread as soon as the signal lands
    finally:
        preemption.uninstall()
        preemption.finish(None)  # not stopped during fit: nothing to raise; ends the deadline thread
    assert info.value.exit_code == 75
    assert str(info.value) == ('preempted (SIGUSR1; exit status 75: requeue) before training started: nothing to save; '
                               'run the same command to resume from the last checkpoint')
