"""The hang watchdog on gloo through the real launcher: rank 1's data loader stalls at batch 3
(FOUNDRY_STALL=1:3) while rank 0 waits for it in a collective; with `watchdog.timeout_s=4` the job ends
within seconds (not at the 10-minute collective timeout) with one line naming rank 1 and what it was
doing, and both ranks' Python stacks in the run folder.
"""

from __future__ import annotations

import os
import re
import time

import pytest

from tests.e2e.conftest import launch, tiny_overrides

pytestmark = pytest.mark.slow


def test_a_stalled_rank_is_named_and_every_rank_stacks_are_dumped(tiny_data, tmp_path):
    started = time.time()
    result = launch(tiny_overrides(tiny_data, str(tmp_path), 'max_duration=8ba', 'save_interval=2ba',
                                   'watchdog.timeout_s=4'), env={'FOUNDRY_STALL': '1:3'}, timeout=400)
    seconds = time.time() - started
    out = result.stdout + result.stderr
    lines = [line for line in out.splitlines() if line.startswith('foundry: hang:')]
    print(f'exit status {result.returncode} after {seconds:.0f}s (launch included)')
    print('\n'.join(lines))
    assert result.returncode == 1, out[-4000:]
    assert len(lines) == 1, out[-4000:]
    match = re.fullmatch(r"foundry: hang: rank 1 made no progress for (\d+)s, fetching batch 3 from the data loader "
                         r"\(at foundry/callbacks/watchdog.py:\d+ in stalled_collate\); every rank's Python stacks are "
                         r"in (.+)/; ending the job \(exit status 1\)", lines[0])
    assert match, lines[0]
    assert 4 <= int(match.group(1)) < 60
    folder = match.group(2)
    assert os.path.dirname(folder) == str(tmp_path / 'run')
    assert sorted(os.listdir(folder)) == ['rank0.txt', 'rank1.txt', 'summary.txt']
    with open(os.path.join(folder, 'rank1.txt')) as f:
        rank1 = f.read()
    with open(os.path.join(folder, 'rank0.txt')) as f:
        rank0 = f.read()
    assert rank1.startswith('rank 1 (pid ') and 'in stalled_collate' in rank1 and 'torch/utils/data' in rank1
    assert 'Current thread' in rank1 or 'Thread 0x' in rank1  # faulthandler's dump, every thread
    assert 'torch/distributed/' in rank0  # rank 0 waits for rank 1 in a collective
    with open(os.path.join(folder, 'summary.txt')) as f:
        assert f.read().strip() == lines[0]
    assert 'Traceback' not in out
