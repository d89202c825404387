"""ICL evaluation during a real 2-process FSDP2 run, then standalone on its checkpoint, export and plot.

One training launch serves every check: the in-training scores (examples split over 2 ranks, the
model sharded) of the final model must equal `foundry eval` on the checkpoint it saved, in one
process and on 2 processes, and on its Hugging Face export.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from foundry.loggers.jsonl import read_metrics
from tests.e2e.conftest import REPO, launch, tiny_overrides

pytestmark = pytest.mark.slow

SMOKE = os.path.join(REPO, 'eval', 'local_data', 'smoke')
TYPES = {'code_lm': 'language_modeling', 'english_mc': 'multiple_choice', 'english_schema': 'schema',
         'code_generation': 'generation_task_with_answers'}


def _task_files(tmp_path) -> str:
    tasks = []
    for label, kind in TYPES.items():
        with open(os.path.join(SMOKE, f'{label}.jsonl')) as f:
            lines = f.readlines()[:14]  # small: 7 per rank
        path = tmp_path / f'{label}.jsonl'
        path.write_text(''.join(lines))
        tasks.append({'label': label, 'dataset_uri': str(path), 'icl_task_type': kind,
                      'num_fewshot': [0, 1] if kind == 'multiple_choice' else [0], 'batch_size': 4})
    gauntlet = {'categories': [
        {'name': 'code', 'benchmarks': [{'name': 'code_lm', 'num_fewshot': 0}]},
        {'name': 'english', 'benchmarks': [{'name': 'english_mc', 'num_fewshot': 1, 'random_baseline': 0.25},
                                           {'name': 'english_schema', 'num_fewshot': 0, 'random_baseline': 0.5}]}]}
    path = tmp_path / 'tasks.yaml'
    path.write_text(json.dumps({'icl_tasks': tasks, 'eval_gauntlet': gauntlet}))
    return str(path)


def test_icl_during_fsdp_training_equals_standalone_eval(tiny_data, tmp_path):
    tasks = _task_files(tmp_path)
    result = launch(tiny_overrides(tiny_data, str(tmp_path), 'max_duration=4ba', 'eval_interval=2ba',
                                   f'icl_tasks={tasks}', f'eval_gauntlet={tasks}', 'device_eval_batch_size=4'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    metrics = read_metrics(str(tmp_path / 'run' / 'metrics.jsonl'))
    logged = {b: {k: v for k, v in m.items() if k.startswith('icl/')} for b, m in metrics.items()}
    logged = {b: m for b, m in logged.items() if m}
    assert sorted(logged) == [2, 4]
    final = logged[4]
    for label in TYPES:
        assert f'icl/{label}/0-shot/accuracy' in final
        assert f'icl/{label}/0-shot/skipped' in final and f'icl/{label}/0-shot/truncated' in final
    assert 'icl/english_mc/1-shot/accuracy_sum' in final
    assert {'icl/gauntlet/code', 'icl/gauntlet/english', 'icl/gauntlet/average'} <= set(final)

    checkpoint = str(tmp_path / 'checkpoints' / 'latest-rank0.pt')
    one = _standalone([checkpoint, tasks, '--out', str(tmp_path / 'eval1'), '--max-seq-len', '32',
                       '--batch-size', '4'])
    two = subprocess.run([sys.executable, '-m', 'foundry.cli', 'eval', checkpoint, tasks, '--nproc', '2',
                          '--out', str(tmp_path / 'eval2'), '--max-seq-len', '32', '--batch-size', '4'],
                         capture_output=True, text=True, cwd=REPO, timeout=300)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    with open(tmp_path / 'eval2' / 'results.json') as f:
        two = json.load(f)
    assert two['processes'] == 2

    hf = str(tmp_path / 'hf')
    from foundry.cli import main as foundry_main

    assert foundry_main(['export', 'hf', checkpoint, hf]) == 0
    exported = _standalone([hf, tasks, '--out', str(tmp_path / 'eval_hf'), '--max-seq-len', '32', '--batch-size', '4'])

    for report in (one, two, exported):
        standalone = {k: v for k, v in _as_metrics(report).items()}
        assert standalone == pytest.approx({k: v for k, v in final.items() if k in standalone}), report['source']
        assert set(standalone) == {k for k in final if k != 'icl/seconds'}
    assert (tmp_path / 'eval1' / 'results.md').read_text().count('| code_lm |') == 1

    png = tmp_path / 'plot.png'
    assert foundry_main(['plot', str(tmp_path / 'run'), '--out', str(png)]) == 0
    import matplotlib.image

    assert matplotlib.image.imread(str(png)).shape[:2] == (935, 1430)


def _standalone(args: list[str]) -> dict:
    from foundry.eval.cli import main

    assert main(args) == 0
    out = args[args.index('--out') + 1]
    with open(os.path.join(out, 'results.json')) as f:
        return json.load(f)


def _as_metrics(report: dict) -> dict:
    from foundry.eval.report import metrics_for_logger

    return metrics_for_logger(report['results'], report['gauntlet'])
