"""Every task type's score against a hand computation from plain full-sequence forwards of a tiny MPT."""

from __future__ import annotations

import json

import pytest
import torch

from foundry.eval.metrics import judge_logliks, normalize_answer
from foundry.eval.prompts import build_items, encode_pair
from foundry.eval.runner import EvalSettings, evaluate, load_tasks
from foundry.eval.scoring import Loglik, ModelRunner, generate_greedy, plan_batches, score_full, score_shared
from foundry.eval.tasks import ICLTaskConfig
from tests.eval.conftest import SMOKE, hand_loglik


def _task(kind: str, name: str, **kw) -> ICLTaskConfig:
    return ICLTaskConfig(label=name, dataset_uri=f'{SMOKE}/{name}.jsonl', icl_task_type=kind, **kw)


def _examples(name: str, n: int = 24) -> list[dict]:
    with open(f'{SMOKE}/{name}.jsonl') as f:
        return [json.loads(line) for line in f][:n]


@pytest.mark.parametrize('share', [True, False])
def test_multiple_choice_logliks_equal_plain_forwards(tokenizer, tiny_model, share):
    task = _task('multiple_choice', 'english_mc')
    items = build_items(task, _examples('english_mc', 10), 2, tokenizer, max_seq_len=64)
    runner = ModelRunner(tiny_model, torch.device('cpu'))
    got = {}
    for batch in plan_batches(items, 'shared' if share else 'full', batch_size=5):
        got.update(score_shared(runner, batch) if share else score_full(runner, batch))
    assert len(got) == len(items)
    for it in items:
        assert len(got[it.index]) == 4
        for (ctx, cont), ll in zip(it.requests, got[it.index]):
            total, greedy = hand_loglik(tiny_model, ctx, cont)
            assert ll.logprob == pytest.approx(total, abs=2e-4)
            assert ll.n_tokens == len(cont) and ll.greedy == greedy


def test_shared_context_runs_each_context_once(tokenizer, tiny_model):
    task = _task('multiple_choice', 'english_mc')
    items = build_items(task, _examples('english_mc', 8), 0, tokenizer, max_seq_len=64)
    shared, full = ModelRunner(tiny_model, torch.device('cpu')), ModelRunner(tiny_model, torch.device('cpu'))
    for batch in plan_batches(items, 'shared', 4):
        score_shared(shared, batch)
    for batch in plan_batches(items, 'full', 8):
        score_full(full, batch)
    assert shared.forwards == 4  # 2 batches of 4 questions x (their contexts, then their 16 choices)
    assert full.forwards == 4    # 32 rows, a question's 4 choices kept together, 8 rows a batch


def test_accuracies_of_every_type_equal_hand_computation(tokenizer, tiny_model, tmp_path):
    tasks = [_task('language_modeling', 'code_lm', num_fewshot=[0, 1]),
             _task('multiple_choice', 'english_mc', num_fewshot=[2]),
             _task('schema', 'english_schema', num_fewshot=[1])]
    for t in tasks:  # 12 examples each keep the test quick
        t.dataset_uri = str(_subset(tmp_path, t.dataset_uri, 12))
    loaded = load_tasks(tasks)
    results = evaluate(ModelRunner(tiny_model, torch.device('cpu')), tokenizer, loaded,
                       EvalSettings(batch_size=7, max_seq_len=64))
    for task in loaded:
        for k in task.config.num_fewshot:
            items = build_items(task.config, task.examples, k, tokenizer, 64)
            correct_mean = correct_sum = 0
            for it in items:
                hand = [hand_loglik(tiny_model, c, k_) for c, k_ in it.requests]
                if task.config.icl_task_type == 'language_modeling':
                    correct_mean += hand[0][1]
                    continue
                means = [h[0] / len(r[1]) for h, r in zip(hand, it.requests)]
                sums = [h[0] for h in hand]
                correct_mean += max(range(len(means)), key=lambda i: (means[i], -i)) == it.gold
                correct_sum += max(range(len(sums)), key=lambda i: (sums[i], -i)) == it.gold
            result = results[task.config.label][f'{k}-shot']
            assert result['scored'] == len(items) == 12
            assert result['accuracy'] == pytest.approx(correct_mean / len(items))
            if task.config.icl_task_type != 'language_modeling':
                assert result['accuracy_sum'] == pytest.approx(correct_sum / len(items))


def test_generation_matches_uncached_greedy_decoding(tokenizer, tiny_model):
    task = _task('generation_task_with_answers', 'code_generation', generation_extra_tokens=3)
    items = build_items(task, _examples('code_generation', 9), 1, tokenizer, max_seq_len=64)
    runner = ModelRunner(tiny_model, torch.device('cpu'))
    got = {}
    for batch in plan_batches(items, 'generate', 4):  # prompts of different lengths: left padding
        got.update(generate_greedy(runner, batch))
    for it in items:
        ids = list(it.requests[0][0])
        with torch.no_grad():
            for _ in range(it.max_new_tokens):
                ids.append(int(tiny_model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
        assert got[it.index] == ids[len(it.requests[0][0]):]


def test_mean_and_summed_rules_pick_different_choices():
    from foundry.eval.prompts import Item

    item = Item(index=0, requests=[], gold=1)
    # choice 0: one token at -1.0 (mean -1.0, sum -1.0); choice 1: four tokens at -0.5 each (mean -0.5, sum -2.0)
    logliks = [Loglik(-1.0, 1, False), Loglik(-2.0, 4, False)]
    judged = judge_logliks('multiple_choice', item, logliks)
    assert judged == {'correct': True, 'correct_sum': False}
    # Ties go to the lower index under both rules.
    assert judge_logliks('schema', Item(index=0, requests=[], gold=0), [Loglik(-1, 1, False)] * 2) == \
        {'correct': True, 'correct_sum': True}
    assert judge_logliks('language_modeling', item, [Loglik(-3.0, 2, True)]) == {'correct': True}


def test_answers_are_normalised_before_exact_match():
    assert normalize_answer('  The  Answer, it is!') == 'answer it is'
    from foundry.eval.metrics import judge_generation
    from foundry.eval.prompts import Item

    item = Item(index=0, requests=[], answers=['New York', 'NYC'])
    assert judge_generation(item, ' new york.\nnext question', '\n')['correct']
    assert judge_generation(item, ' nyc', '\n')['correct']
    assert not judge_generation(item, ' new york city', '\n')['correct']


def test_encode_pair_moves_the_delimiter_space_into_the_continuation(tokenizer):
    ctx, cont = encode_pair(tokenizer, 'return the ', 'value')
    assert tokenizer.decode(ctx) == 'return the'
    assert tokenizer.decode(cont) == ' value'
    assert ctx + cont == tokenizer('return the value', add_special_tokens=False)['input_ids']


def _subset(tmp_path, path, n):
    out = tmp_path / path.rsplit('/', 1)[1]
    with open(path) as f:
        out.write_text(''.join(f.readlines()[:n]))
    return out
