"""Task configs, task files, few-shot draws, truncation counts and the gauntlet's arithmetic."""

from __future__ import annotations

import json
import math

import pytest
import torch

from foundry.config.errors import ConfigError
from foundry.config.load import load_config
from foundry.data.errors import DataError
from foundry.eval.gauntlet import compute_gauntlet, parse_gauntlet
from foundry.eval.prompts import build_item, fewshot_indices, prompt_prefix
from foundry.eval.runner import Collectives, EvalSettings, evaluate, load_tasks
from foundry.eval.scoring import ModelRunner
from foundry.eval.tasks import ICLTaskConfig, load_examples, parse_icl_tasks
from tests.eval.conftest import REPO, SMOKE

TINY = f'{REPO}/tests/fixtures/tiny.yaml'


def test_shipped_task_and_gauntlet_yamls_validate_through_the_training_config():
    cfg = load_config(TINY, [f'icl_tasks={REPO}/eval/yamls/smoke_tasks.yaml',
                             f'eval_gauntlet={REPO}/eval/yamls/smoke_gauntlet.yaml', 'icl_subset_num_batches=2'])
    assert cfg.icl_subset_num_batches == 2


def _write_tasks(tmp_path, tasks) -> str:
    path = tmp_path / 'tasks.yaml'
    path.write_text(json.dumps({'icl_tasks': tasks}))  # JSON is YAML
    return str(path)


def test_config_errors_are_one_line_and_name_the_key(tmp_path):
    base = {'label': 'mc', 'dataset_uri': f'{SMOKE}/english_mc.jsonl', 'icl_task_type': 'multiple_choice'}
    cases = [
        ({**base, 'num_fewshots': [0]}, 'did you mean `icl_tasks (%s)[0].num_fewshot`?'),
        ({**base, 'icl_task_type': 'mcq'}, "expected one of 'language_modeling'"),
        ({**base, 'dataset_uri': 'no/such.jsonl'}, "no such file 'no/such.jsonl'"),
        ({**base, 'metric_names': ['x']}, 'foundry picks the metric from icl_task_type'),
        ({**base, 'num_fewshot': []}, 'num_fewshot` must be a non-empty list'),
    ]
    for entry, expected in cases:
        path = _write_tasks(tmp_path, [entry])
        with pytest.raises(ConfigError) as err:
            load_config(TINY, [f'icl_tasks={path}'])
        message = str(err.value)
        assert '\n' not in message
        assert (expected % path if '%s' in expected else expected) in message, message
    with pytest.raises(ConfigError, match="labelled 'mc'"):
        parse_icl_tasks([base, base])


def test_gauntlet_must_name_evaluated_tasks_and_shots(tmp_path):
    tasks = _write_tasks(tmp_path, [{'label': 'mc', 'dataset_uri': f'{SMOKE}/english_mc.jsonl',
                                     'icl_task_type': 'multiple_choice', 'num_fewshot': [0]}])
    gauntlet = {'categories': [{'name': 'c', 'benchmarks': [{'name': 'mc', 'num_fewshot': 5}]}]}
    with pytest.raises(ConfigError, match="asks for 5-shot; icl_tasks runs it at num_fewshot \\[0\\]"):
        load_config(TINY, [f'icl_tasks={tasks}', f'eval_gauntlet={json.dumps(gauntlet)}'])
    gauntlet['categories'][0]['benchmarks'][0] = {'name': 'mcq', 'num_fewshot': 0}
    with pytest.raises(ConfigError, match="benchmark 'mcq', which is not an icl_tasks label"):
        load_config(TINY, [f'icl_tasks={tasks}', f'eval_gauntlet={json.dumps(gauntlet)}'])
    with pytest.raises(ConfigError, match='`eval_gauntlet` needs `icl_tasks`'):
        load_config(TINY, [f'eval_gauntlet={json.dumps(gauntlet)}'])


def test_bad_example_names_file_line_and_fields(tmp_path):
    path = tmp_path / 'bad.jsonl'
    path.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{"query": "q", "answers": ["a"]}\n')
    task = ICLTaskConfig(label='t', dataset_uri=str(path), icl_task_type='multiple_choice')
    with pytest.raises(DataError, match=r"bad.jsonl:2: a multiple_choice example needs 'query', 'choices', 'gold'; "
                                        r"this one has 'query', 'answers'"):
        load_examples(task)
    path.write_text('{"query": "q", "choices": ["a", "b"], "gold": 2}\n')
    with pytest.raises(DataError, match='gold is 2, outside 0..1'):
        load_examples(task)


def test_fewshot_draws_are_seeded_per_example_and_never_the_example():
    for index in range(10):
        picks = fewshot_indices(10, index, 5, seed=1234)
        assert index not in picks and len(set(picks)) == 5
        assert picks == fewshot_indices(10, index, 5, seed=1234)
    assert fewshot_indices(10, 3, 5, seed=1) != fewshot_indices(10, 3, 5, seed=2)
    with pytest.raises(ConfigError, match='num_fewshot 10 needs at least 11 examples'):
        fewshot_indices(10, 0, 10, seed=0)
    task = ICLTaskConfig(label='t', dataset_uri='x', icl_task_type='language_modeling', prompt_string='P:',
                         example_delimiter='||', continuation_delimiter='=')
    examples = [{'context': f'c{i}', 'continuation': f'x{i}'} for i in range(4)]
    shots = fewshot_indices(4, 2, 2, task.fewshot_random_seed)
    assert prompt_prefix(examples, 2, 2, task) == 'P:' + ''.join(f'c{j}=x{j}||' for j in shots)


def test_results_do_not_depend_on_how_examples_are_split_across_ranks(tokenizer, tiny_model):
    task = ICLTaskConfig(label='mc', dataset_uri=f'{SMOKE}/english_mc.jsonl', icl_task_type='multiple_choice',
                         num_fewshot=[1])
    loaded = load_tasks([task])
    loaded[0].examples = loaded[0].examples[:11]
    settings = EvalSettings(batch_size=3, max_seq_len=64, keep_examples=True)
    runner = ModelRunner(tiny_model, torch.device('cpu'))
    whole = evaluate(runner, tokenizer, loaded, settings)['mc']['1-shot']
    # Three "ranks" run in turn; gather hands each the parts of all three (what dist.all_gather_object does).
    parts = {}

    def as_rank(rank):
        return Collectives(rank=rank, world_size=3, max_int=lambda x: x,
                           gather=lambda rows: [parts.setdefault(rank, rows)] and [parts.get(r, []) for r in range(3)])

    for rank in range(3):
        split = evaluate(runner, tokenizer, loaded, settings, as_rank(rank))['mc']['1-shot']
    assert split['per_example'] == whole['per_example']
    assert split['accuracy'] == whole['accuracy'] and split['scored'] == 11


def test_truncated_and_skipped_examples_are_counted(tokenizer, tiny_model, tmp_path):
    path = tmp_path / 'lm.jsonl'
    rows = [{'context': 'short context', 'continuation': ' value'},
            {'context': 'a much longer context ' * 8, 'continuation': ' value'},
            {'context': 'ctx', 'continuation': ' the continuation alone is far too long for the window ' * 3}]
    path.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    task = ICLTaskConfig(label='lm', dataset_uri=str(path), icl_task_type='language_modeling')
    result = evaluate(ModelRunner(tiny_model, torch.device('cpu')), tokenizer, load_tasks([task]),
                      EvalSettings(batch_size=4, max_seq_len=24))['lm']['0-shot']
    assert (result['examples'], result['scored'], result['skipped'], result['truncated']) == (3, 2, 1, 1)
    item = build_item(task, load_examples(task), 1, 0, tokenizer, 24)
    ctx, cont = item.requests[0]
    assert len(ctx) + len(cont) - 1 == 24  # cut on the left to exactly the window


def test_gauntlet_arithmetic_by_hand():
    gauntlet = parse_gauntlet({
        'weighting': 'LOG_SAMPLE_SZ',
        'categories': [
            {'name': 'a', 'benchmarks': [{'name': 'x', 'num_fewshot': 0, 'random_baseline': 0.25},
                                         {'name': 'y', 'num_fewshot': 3, 'random_baseline': 0.5}]},
            {'name': 'b', 'benchmarks': [{'name': 'z', 'num_fewshot': 0, 'weight': 3.0}]},
            {'name': 'c', 'benchmarks': [{'name': 'missing', 'num_fewshot': 0}]},
        ],
        'averages': {'ab': ['a', 'b'], 'all': ['a', 'b', 'c']},
    })
    results = {'x': {'0-shot': {'accuracy': 0.55, 'scored': 64}},
               'y': {'3-shot': {'accuracy': 0.40, 'scored': 1024}},
               'z': {'0-shot': {'accuracy': 0.30, 'scored': 8}}}
    out = compute_gauntlet(gauntlet, results)
    x, y = (0.55 - 0.25) / 0.75, (0.40 - 0.5) / 0.5   # baseline subtracted, rescaled (y below chance: negative)
    wx, wy = math.log2(64), math.log2(1024)
    assert out['categories']['a'] == pytest.approx((x * wx + y * wy) / (wx + wy))
    assert out['categories']['b'] == pytest.approx(0.30)
    assert out['categories']['c'] is None
    assert out['averages']['ab'] == pytest.approx((out['categories']['a'] + 0.30) / 2)
    assert out['averages']['all'] is None
    no_rescale = parse_gauntlet({'rescale_accuracy': False, 'categories': [
        {'name': 'a', 'benchmarks': [{'name': 'x', 'num_fewshot': 0, 'random_baseline': 0.25}]}]})
    assert compute_gauntlet(no_rescale, results)['averages']['average'] == pytest.approx(0.30)


def test_has_categories_reports_each_category(tokenizer, tiny_model, tmp_path):
    with open(f'{SMOKE}/english_mc.jsonl') as f:
        rows = [json.loads(line) for line in f][:10]
    path = tmp_path / 'mc.jsonl'
    path.write_text(''.join(json.dumps({**r, 'category': 'odd' if i % 2 else 'even'}) + '\n' for i, r in enumerate(rows)))
    task = ICLTaskConfig(label='mc', dataset_uri=str(path), icl_task_type='multiple_choice', has_categories=True)
    result = evaluate(ModelRunner(tiny_model, torch.device('cpu')), tokenizer, load_tasks([task]),
                      EvalSettings(batch_size=4, max_seq_len=64, keep_examples=True))['mc']['0-shot']
    correct = {p['index']: p['correct'] for p in result['per_example']}
    for name, parity in (('even', 0), ('odd', 1)):
        mine = [correct[i] for i in range(10) if i % 2 == parity]
        assert result['categories'][name] == {'scored': 5, 'accuracy': sum(mine) / 5,
                                              'accuracy_sum': result['categories'][name]['accuracy_sum']}
    path.write_text(json.dumps(rows[0]) + '\n')
    with pytest.raises(DataError, match='has_categories: true, so every example needs a string "category"'):
        load_examples(task)
