"""launch/gpu/check.sh --cpu-smoke: every step of the one-GPU check (install aside) on this CPU, so the script
the GPU machine runs cannot rot between the times a GPU is at hand.

Tiny model overrides on yamls/pretrain/mpt-125m.yaml and mpt-1b.yaml, seq 128, a few batches, through the real
`composer -n 1 launch/train.py`: speed figures from metrics.jsonl, a run SIGKILLed inside a checkpoint save and
restarted (losses bit-identical to the uninterrupted run), `foundry export hf` loaded by transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import torch

# The GPU machine runs the current stack's torch (2.11); on the stable stack (torch 2.7) this three-minute
# rehearsal would check a combination the script never meets, and CI runs both stacks in one budget.
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(tuple(int(x) for x in torch.__version__.split('+')[0].split('.')[:2]) < (2, 11),
                                 reason='rehearses the GPU machine (torch 2.11, the current stack); this is torch '
                                        f'{torch.__version__}')]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_cpu_smoke_runs_every_step_of_the_gpu_check(tmp_path):
    out, work = tmp_path / 'out', tmp_path / 'work'
    proc = subprocess.run(['bash', os.path.join(REPO, 'launch', 'gpu', 'check.sh'), '--cpu-smoke',
                           '--out', str(out), '--work', str(work)],
                          capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, 'PYTHON': sys.executable})
    summary_txt = (out / 'summary.txt').read_text() if (out / 'summary.txt').exists() else ''
    print(summary_txt)
    assert proc.returncode == 0, f'{summary_txt}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}'

    summary = json.loads((out / 'summary.json').read_text())
    assert summary['passed'] and summary['failed_step'] is None
    assert list(summary['steps']) == ['imports', 'data', 'configs', 'mpt-125m', 'mpt-1b', 'resume', 'export']
    for model in ('mpt-125m', 'mpt-1b'):
        figures = summary[model]
        assert figures['tokens_per_s'] > 0 and figures['mfu'] > 0, figures  # MFU over the measured CPU peak
        assert (out / 'runs' / model / 'metrics.jsonl').exists()
        assert (out / 'logs' / f'{model}.log').exists()

    resume = summary['resume']
    assert resume['exact'] and resume['max_abs_diff'] == 0.0, resume  # bit-identical on CPU
    assert resume['resumed_at_batch'] == 2 and resume['resumed_from'].endswith('ep0-ba2')
    assert resume['batches_compared'] == 6 and resume['data_equal'] and resume['eval_exact']
    assert 'killed in the batch-4 save and resumed from' in (out / 'resume_losses.txt').read_text()

    export = summary['export']
    assert export['max_abs_diff'] < 1e-4 and export['argmax_agree'] == 1.0, export
    assert export['theirs_class'] == 'MptForCausalLM' and export['generated_len'] == 24
    for line in ('mpt-125m :', 'resume   :', 'export   :', 'result   : PASS'):
        assert line in summary_txt
