"""Run every task at every few-shot count, with the examples split across ranks.

Rank r scores examples r, r + W, r + 2W, ... . When the model is sharded (FSDP), every forward
pass is a collective (the ranks gather each block's weights together), so every rank must run
the same number of passes: before a task starts, ranks agree on the largest count any of them
planned (scoring.plan_batches / forwards_in, known before any pass) and the ranks with fewer
run one-token idle passes after theirs. Results are gathered to every rank, so every rank
returns the same numbers. Without sharding the idle passes are harmless and cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from foundry.eval.metrics import aggregate, judge_generation, judge_logliks
from foundry.eval.prompts import Item, build_item, generation_budget
from foundry.eval.scoring import ModelRunner, forwards_in, generate_greedy, plan_batches, score_full, score_shared
from foundry.eval.tasks import ICLTaskConfig, load_examples

log = logging.getLogger(__name__)

PASS_KIND = {'language_modeling': 'full', 'schema': 'full', 'multiple_choice': 'shared',
             'generation_task_with_answers': 'generate'}


@dataclass
class Collectives:
    """The two collectives the runner needs; the defaults are a single process."""

    rank: int = 0
    world_size: int = 1
    max_int: Callable[[int], int] = lambda x: x
    gather: Callable[[Any], list[Any]] = lambda obj: [obj]


def composer_collectives() -> Collectives:
    """Collectives over Composer's process group (the training run's, or the one foundry eval starts)."""
    import torch
    from composer.utils import dist

    def max_int(x: int) -> int:
        t = torch.tensor([x], dtype=torch.long, device=_dist_device())
        dist.all_reduce(t, reduce_operation='MAX')
        return int(t.item())

    return Collectives(rank=dist.get_global_rank(), world_size=dist.get_world_size(), max_int=max_int,
                       gather=dist.all_gather_object)


def _dist_device():
    import torch
    import torch.distributed as tdist

    if tdist.is_available() and tdist.is_initialized() and tdist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


@dataclass
class EvalSettings:
    batch_size: int = 8            # a task's batch_size overrides it
    max_seq_len: int = 2048        # a task's max_seq_len overrides it
    subset_num_batches: int = -1   # > 0: only the first N batches' worth of examples per rank
    share_context: bool = True     # multiple_choice: one context pass per question (see scoring.py)
    keep_examples: bool = False    # also return each example's judgment


@dataclass
class LoadedTask:
    config: ICLTaskConfig
    examples: list[dict[str, Any]] = field(default_factory=list)


def load_tasks(tasks: list[ICLTaskConfig]) -> list[LoadedTask]:
    return [LoadedTask(task, load_examples(task)) for task in tasks]


def evaluate(runner: ModelRunner, tokenizer, tasks: list[LoadedTask], settings: EvalSettings,
             collectives: Optional[Collectives] = None) -> dict[str, dict[str, dict[str, Any]]]:
    """{label: {'{k}-shot': {accuracy, [accuracy_sum], examples, scored, skipped, truncated, seconds, ...}}}."""
    coll = collectives or Collectives()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    for task in tasks:
        for k in task.config.num_fewshot:
            start = time.perf_counter()
            result = _evaluate_one(runner, tokenizer, task, k, settings, coll)
            result['seconds'] = round(time.perf_counter() - start, 3)
            results.setdefault(task.config.label, {})[f'{k}-shot'] = result
    return results


def _evaluate_one(runner: ModelRunner, tokenizer, task: LoadedTask, k: int, settings: EvalSettings,
                  coll: Collectives) -> dict[str, Any]:
    cfg = task.config
    batch_size = cfg.batch_size or settings.batch_size
    max_seq_len = cfg.max_seq_len or settings.max_seq_len
    n = len(task.examples)
    if settings.subset_num_batches > 0:
        n = min(n, settings.subset_num_batches * batch_size * coll.world_size)
    budget = generation_budget(cfg, task.examples, tokenizer)
    own = [build_item(cfg, task.examples, i, k, tokenizer, max_seq_len, budget)
           for i in range(coll.rank, n, coll.world_size)]
    kind = PASS_KIND[cfg.icl_task_type]
    if kind == 'shared' and not settings.share_context:
        kind = 'full'
    batches = plan_batches(own, kind, batch_size)
    planned = forwards_in(batches, kind)
    target = coll.max_int(planned)
    before = runner.forwards
    judgments = _run(runner, tokenizer, cfg, kind, batches)
    while runner.forwards - before < target:
        runner.idle_forward()
    rows = [(it.index, it.category, it.truncated, it.skipped, judgments.get(it.index)) for it in own]
    everything = sorted((row for part in coll.gather(rows) for row in part), key=lambda r: r[0])
    items = [Item(index=i, requests=[], category=c, truncated=t, skipped=s) for i, c, t, s, _ in everything]
    all_judgments = {i: j for i, _, _, s, j in everything if not s}
    result = aggregate(items, all_judgments)
    if settings.keep_examples:
        result['per_example'] = [{'index': i, 'skipped': s, 'truncated': t, **(j or {})} for i, _, t, s, j in everything]
    if result['skipped'] or result['truncated']:
        log.warning('icl task %s (%d-shot): %d of %d examples skipped (continuation longer than max_seq_len %d), '
                    '%d truncated on the left', cfg.label, k, result['skipped'], result['examples'], max_seq_len,
                    result['truncated'])
    return result


def _run(runner: ModelRunner, tokenizer, cfg: ICLTaskConfig, kind: str,
         batches: list[list[Item]]) -> dict[int, dict[str, Any]]:
    judgments: dict[int, dict[str, Any]] = {}
    for batch in batches:
        if kind == 'generate':
            generated = generate_greedy(runner, batch)
            for it in batch:
                text = tokenizer.decode(generated[it.index], skip_special_tokens=True)
                judgments[it.index] = judge_generation(it, text, cfg.example_delimiter)
            continue
        logliks = score_shared(runner, batch) if kind == 'shared' else score_full(runner, batch)
        for it in batch:
            judgments[it.index] = judge_logliks(cfg.icl_task_type, it, logliks[it.index])
    return judgments
