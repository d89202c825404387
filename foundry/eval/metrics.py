"""Per-example judgments and per-task accuracies, by task type.

- language_modeling: correct when every continuation token is the argmax.
- multiple_choice and schema: `accuracy` picks the option with the highest MEAN per-token
  log-probability of the continuation (lowest mean loss: Composer's and llm-foundry's rule);
  `accuracy_sum` picks the highest SUMMED log-probability (lm-evaluation-harness's `acc`).
  Ties go to the lower index.
- generation_task_with_answers: the greedy continuation, cut at the first `example_delimiter`,
  must equal the answer or an alias after normalisation (lower case, no punctuation, no
  articles, single spaces: SQuAD's rule, which llm-foundry also uses).

An accuracy is over the examples scored; skipped ones (continuation longer than the sequence)
are not in it, and are counted next to it with the truncated ones.
"""

from __future__ import annotations

import re
import string
from typing import Any, Optional

from foundry.eval.prompts import Item
from foundry.eval.scoring import Loglik

_ARTICLES = re.compile(r'\b(a|an|the)\b')
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = ''.join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return ' '.join(_ARTICLES.sub(' ', text).split())


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=lambda i: (values[i], -i))


def judge_logliks(kind: str, item: Item, logliks: list[Loglik]) -> dict[str, Any]:
    if kind == 'language_modeling':
        return {'correct': logliks[0].greedy}
    means = [ll.mean for ll in logliks]
    sums = [ll.logprob for ll in logliks]
    return {'correct': _argmax(means) == item.gold, 'correct_sum': _argmax(sums) == item.gold}


def judge_generation(item: Item, text: str, example_delimiter: str) -> dict[str, Any]:
    if example_delimiter and example_delimiter in text:
        text = text[:text.index(example_delimiter)]
    answer = normalize_answer(text)
    return {'correct': any(answer == normalize_answer(a) for a in item.answers), 'generated': text}


def aggregate(items: list[Item], judgments: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Accuracy (and accuracy_sum where defined) over scored items, with counts and per-category scores."""
    scored = [it for it in items if not it.skipped]
    result: dict[str, Any] = {
        'examples': len(items),
        'scored': len(scored),
        'skipped': sum(it.skipped for it in items),
        'truncated': sum(it.truncated for it in items),
    }
    result.update(_accuracies(scored, judgments))
    categories = sorted({it.category for it in items if it.category is not None})
    if categories:
        result['categories'] = {
            c: {'scored': sum(it.category == c for it in scored),
                **_accuracies([it for it in scored if it.category == c], judgments)}
            for c in categories}
    return result


def _accuracies(scored: list[Item], judgments: dict[int, dict[str, Any]]) -> dict[str, Optional[float]]:
    if not scored:
        return {'accuracy': None}
    out = {'accuracy': sum(judgments[it.index]['correct'] for it in scored) / len(scored)}
    if 'correct_sum' in judgments[scored[0].index]:
        out['accuracy_sum'] = sum(judgments[it.index]['correct_sum'] for it in scored) / len(scored)
    return out
