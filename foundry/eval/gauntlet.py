"""llm-foundry's Eval Gauntlet (v0.3): ICL accuracies folded into category scores and averages.

For each benchmark (a task label at one few-shot count) in a category:

    score = accuracy
    if subtract_random_baseline:             score -= random_baseline
    if that and rescale_accuracy:            score /= 1 - random_baseline

A category's score is the weighted mean of its benchmarks' scores, with weights by `weighting`:
EQUAL (1 each), SAMPLE_SZ (examples scored) or LOG_SAMPLE_SZ (max(log2(examples), 1)); a
benchmark's own `weight:` (a foundry addition) overrides its computed weight. Each entry of
`averages` is the plain mean of the categories it lists (default: `average` over all of them).
Scores are not clipped: a model below chance gets a negative score, as in llm-foundry.
A category with a benchmark that was not evaluated gets no score (and a warning), never a
score from the benchmarks that happen to be there.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

from foundry.config.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class GauntletBenchmark:
    name: str
    num_fewshot: int
    random_baseline: float = 0.0
    weight: Optional[float] = None

    def check(self, path: str) -> None:
        if not 0 <= self.random_baseline < 1:
            raise ConfigError(f'`{path}.random_baseline` must be in [0, 1), got {self.random_baseline}')
        if self.weight is not None and self.weight <= 0:
            raise ConfigError(f'`{path}.weight` must be positive, got {self.weight}')


@dataclass
class GauntletCategory:
    name: str
    benchmarks: list[GauntletBenchmark]

    def check(self, path: str) -> None:
        if not self.benchmarks:
            raise ConfigError(f'`{path}.benchmarks` is empty; list at least one task')


@dataclass
class GauntletConfig:
    categories: list[GauntletCategory]
    weighting: Literal['EQUAL', 'SAMPLE_SZ', 'LOG_SAMPLE_SZ'] = 'EQUAL'
    subtract_random_baseline: bool = True
    rescale_accuracy: bool = True
    averages: Optional[dict[str, list[str]]] = None
    # Accepted for llm-foundry compatibility; foundry always logs under icl/gauntlet/.
    logger_keys: Optional[list[str]] = None

    def check(self, path: str) -> None:
        names = [c.name for c in self.categories]
        if len(set(names)) != len(names):
            raise ConfigError(f'`{path}.categories` has two categories with the same name')
        for avg, cats in (self.averages or {}).items():
            unknown = [c for c in cats if c not in names]
            if unknown:
                raise ConfigError(f'`{path}.averages.{avg}` names {unknown[0]!r}, which is not a category '
                                  f'({", ".join(names)})')


def parse_gauntlet(value: Union[str, dict, None], where: str = 'eval_gauntlet') -> Optional[GauntletConfig]:
    from foundry.config.validate import from_mapping

    if value is None:
        return None
    if isinstance(value, str):
        import yaml

        if not os.path.isfile(value):
            raise ConfigError(f'`{where}` names {value!r}, which is not a file (a YAML holding eval_gauntlet:)')
        with open(value, encoding='utf-8') as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict) or 'eval_gauntlet' not in data:
            raise ConfigError(f'{value} must hold a mapping with an `eval_gauntlet:` section')
        value, where = data['eval_gauntlet'], f'{where} ({value})'
    return from_mapping(GauntletConfig, value, where)


def check_against_tasks(gauntlet: GauntletConfig, tasks, where: str = 'eval_gauntlet') -> None:
    """Every benchmark must be an evaluated task label at one of its few-shot counts."""
    shots = {t.label: t.num_fewshot for t in tasks}
    for category in gauntlet.categories:
        for bench in category.benchmarks:
            if bench.name not in shots:
                raise ConfigError(f'`{where}` category {category.name!r} lists benchmark {bench.name!r}, which is not '
                                  f'an icl_tasks label ({", ".join(shots) or "no icl_tasks"})')
            if bench.num_fewshot not in shots[bench.name]:
                raise ConfigError(f'`{where}` benchmark {bench.name!r} asks for {bench.num_fewshot}-shot; icl_tasks runs '
                                  f'it at num_fewshot {shots[bench.name]}')


def compute_gauntlet(gauntlet: GauntletConfig, results: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """{'categories': {name: score or None}, 'averages': {name: score or None}, 'benchmarks': [...]}."""
    categories: dict[str, Optional[float]] = {}
    benchmarks = []
    for category in gauntlet.categories:
        scored, missing = [], []
        for bench in category.benchmarks:
            result = results.get(bench.name, {}).get(f'{bench.num_fewshot}-shot')
            if result is None or result.get('accuracy') is None:
                missing.append(f'{bench.name}/{bench.num_fewshot}-shot')
                continue
            score = result['accuracy']
            if gauntlet.subtract_random_baseline:
                score -= bench.random_baseline
                if gauntlet.rescale_accuracy:
                    score /= 1.0 - bench.random_baseline
            weight = bench.weight if bench.weight is not None else _weight(gauntlet.weighting, result['scored'])
            scored.append((score, weight))
            benchmarks.append({'category': category.name, 'name': bench.name, 'num_fewshot': bench.num_fewshot,
                               'accuracy': result['accuracy'], 'score': score, 'weight': weight})
        if missing:
            log.warning('eval_gauntlet: category %s has no score: %s not evaluated', category.name, ', '.join(missing))
            categories[category.name] = None
        else:
            total = sum(w for _, w in scored)
            categories[category.name] = sum(s * w for s, w in scored) / total
    averages = {}
    for name, cats in (gauntlet.averages or {'average': [c.name for c in gauntlet.categories]}).items():
        values = [categories[c] for c in cats]
        averages[name] = None if any(v is None for v in values) else sum(values) / len(values)
    return {'categories': categories, 'averages': averages, 'benchmarks': benchmarks}


def _weight(weighting: str, samples: int) -> float:
    if weighting == 'EQUAL':
        return 1.0
    if weighting == 'SAMPLE_SZ':
        return float(samples)
    return max(math.log2(samples), 1.0) if samples > 0 else 1.0
