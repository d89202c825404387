"""Small ICL tasks of every type, built from the demo corpus's held-out documents.

SMOKE TASKS, NOT BENCHMARKS: they check that evaluation runs end to end and that a model
that has learned something from the demo corpus scores above chance; they measure nothing
about language understanding. The shipped copies under eval/local_data/smoke/ were built with

    python -m foundry.eval.smoke_tasks demo_out/data/corpus eval/local_data/smoke

from the `val` split (documents the demo never trains on) of `make demo`'s corpus (stdlib
docstrings and sources). Every draw comes from one seeded generator, so the same corpus
gives the same files.

    code_lm.jsonl          language_modeling   the last word of a line of Python, given the line before it
    english_mc.jsonl       multiple_choice     the last word of a docstring sentence among 4
    english_schema.jsonl   schema              which first half a sentence's second half belongs to (2)
    code_generation.jsonl  generation_task_with_answers  the last word of a line of Python, generated
"""

from __future__ import annotations

import json
import os
import random
import re
import sys
from typing import Iterator

SEED = 2026
PER_TASK = 100
_LAST_WORD = re.compile(r'^(.*\S)\s+([A-Za-z_][A-Za-z0-9_.]{0,15}[):]{0,2})$')
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+')


def _val_texts(corpus_dir: str, stream: str) -> list[str]:
    with open(os.path.join(corpus_dir, f'{stream}.jsonl'), encoding='utf-8') as f:
        docs = [json.loads(line) for line in f]
    return [d['text'] for d in docs if d.get('split') == 'val']


def _code_pairs(texts: list[str]) -> Iterator[tuple[str, str]]:
    """(previous line + this line without its last word, the last word) for plain code lines."""
    for text in texts:
        lines = text.splitlines()
        for prev, line in zip(lines, lines[1:]):
            stripped = line.strip()
            if not stripped or stripped.startswith(('#', '"', "'")) or len(line) > 72 or not prev.strip():
                continue
            m = _LAST_WORD.match(line)
            if m and len(prev) <= 72:
                yield prev + '\n' + m.group(1), m.group(2)


def _sentences(texts: list[str]) -> list[str]:
    out = []
    for text in texts:
        for para in text.split('\n\n'):
            flat = ' '.join(para.split())
            for sentence in _SENTENCE_END.split(flat):
                words = sentence.split()
                if 6 <= len(words) <= 24 and sentence.endswith('.') and sentence[0].isupper():
                    out.append(sentence)
    return out


def build_smoke_tasks(corpus_dir: str, out_dir: str, per_task: int = PER_TASK) -> dict[str, str]:
    rng = random.Random(SEED)
    os.makedirs(out_dir, exist_ok=True)
    code_pairs = list(dict.fromkeys(_code_pairs(_val_texts(corpus_dir, 'code'))))
    sentences = list(dict.fromkeys(_sentences(_val_texts(corpus_dir, 'english'))))
    rng.shuffle(code_pairs)
    rng.shuffle(sentences)
    if len(code_pairs) < 2 * per_task or len(sentences) < 2 * per_task:
        raise ValueError(f'the corpus at {corpus_dir} is too small for {per_task} examples per task '
                         f'({len(code_pairs)} code lines, {len(sentences)} sentences)')

    lm = [{'context': c, 'continuation': w} for c, w in code_pairs[:per_task]]
    generation = [{'context': c, 'answer': w, 'aliases': []} for c, w in code_pairs[per_task:2 * per_task]]

    mc_sentences = sentences[:per_task]
    last_words = [s.split()[-1] for s in sentences]
    mc = []
    for s in mc_sentences:
        query, answer = s.rsplit(' ', 1)
        distractors = rng.sample([w for w in last_words if w != answer], 3)
        gold = rng.randrange(4)
        choices = distractors[:gold] + [answer] + distractors[gold:]
        mc.append({'query': query, 'choices': choices, 'gold': gold})

    schema = []
    halves = [s.split() for s in sentences[per_task:2 * per_task]]
    for i, words in enumerate(halves):
        cut = len(words) // 2
        other = halves[(i + 1 + rng.randrange(len(halves) - 1)) % len(halves)]
        options = [' '.join(words[:cut]), ' '.join(other[:len(other) // 2])]
        gold = rng.randrange(2)
        if gold == 1:
            options.reverse()
        schema.append({'context_options': options, 'continuation': ' '.join(words[cut:]), 'gold': gold})

    paths = {}
    for name, rows in (('code_lm', lm), ('english_mc', mc), ('english_schema', schema),
                       ('code_generation', generation)):
        paths[name] = os.path.join(out_dir, f'{name}.jsonl')
        with open(paths[name], 'w', encoding='utf-8') as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + '\n')
    return paths


if __name__ == '__main__':
    if len(sys.argv) != 3:
        print('usage: python -m foundry.eval.smoke_tasks CORPUS_DIR OUT_DIR', file=sys.stderr)
        sys.exit(2)
    for name, path in build_smoke_tasks(sys.argv[1], sys.argv[2]).items():
        print(f'{name}: {path}')
