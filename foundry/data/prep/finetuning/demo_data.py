"""Instruction data for ``make demo-finetune``, built from the demo corpus (docstring -> function).

Every function of the demo's code stream (stdlib sources) that has a docstring becomes a
prompt/response example: the prompt gives the docstring's first paragraph and the function's
name, the response is the function's source. The corpus' own train/val split is kept (val
functions come from files the model never saw). The same functions, grouped by module, are
also written as multi-turn chats (``chat_{split}.jsonl``) to exercise the chat format.
"""

from __future__ import annotations

import ast
import json
import os
import textwrap
from typing import Iterator

__all__ = ['build_instruction_data', 'PROMPT']

PROMPT = '### Instruction:\n{summary}\nName: {name}\n### Response:\n'
SYSTEM = 'You write Python standard-library code.'


def _functions(text: str, max_chars: int) -> Iterator[tuple[str, str, str]]:
    """(name, summary, source) of each documented function small enough to learn whole."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node, clean=True)
        if not doc:
            continue
        summary = ' '.join(doc.split('\n\n')[0].split())
        if len(summary) < 20 or len(summary) > 160:
            continue
        source = ast.get_source_segment(text, node, padded=True)
        if not source or len(source) > max_chars:
            continue
        yield node.name, summary, textwrap.dedent(source).rstrip() + '\n'


def build_instruction_data(code_jsonl: str, out_dir: str, max_chars: int = 360
                           ) -> dict[str, dict[str, int]]:
    """Write ``{split}.jsonl`` (prompt/response) and ``chat_{split}.jsonl`` under ``out_dir``.

    Returns example counts per file kind and split. Skipped when ``out_dir/manifest.json``
    records the same input and settings.
    """
    key = {'code_jsonl': os.path.abspath(code_jsonl), 'size': os.path.getsize(code_jsonl),
           'max_chars': max_chars, 'prompt': PROMPT, 'version': 1}
    manifest = os.path.join(out_dir, 'manifest.json')
    if os.path.isfile(manifest):
        with open(manifest) as handle:
            old = json.load(handle)
        if old.get('key') == key:
            return old['counts']
    os.makedirs(out_dir, exist_ok=True)
    rows: dict[str, list[dict]] = {}
    chats: dict[str, list[dict]] = {}
    seen: set[str] = set()
    with open(code_jsonl, encoding='utf-8') as handle:
        for line in handle:
            doc = json.loads(line)
            split = doc.get('split', 'train')
            module = []
            for name, summary, source in _functions(doc['text'], max_chars):
                if source in seen:  # the same helper appears in several stdlib files
                    continue
                seen.add(source)
                prompt = PROMPT.format(summary=summary, name=name)
                rows.setdefault(split, []).append({'prompt': prompt, 'response': source})
                module.append((summary, name, source))
            for i in range(0, len(module), 3):  # conversations of up to 3 turns
                messages = [{'role': 'system', 'content': SYSTEM}]
                for summary, name, source in module[i:i + 3]:
                    messages += [{'role': 'user', 'content': f'{summary} Call it {name}.'},
                                 {'role': 'assistant', 'content': source}]
                chats.setdefault(split, []).append({'messages': messages})
    counts: dict[str, dict[str, int]] = {'prompt_response': {}, 'chat': {}}
    for kind, data, pattern in (('prompt_response', rows, '{}.jsonl'),
                                ('chat', chats, 'chat_{}.jsonl')):
        for split, items in data.items():
            path = os.path.join(out_dir, pattern.format(split))
            with open(path + '.tmp', 'w', encoding='utf-8') as out:
                for item in items:
                    out.write(json.dumps(item) + '\n')
            os.replace(path + '.tmp', path)
            counts[kind][split] = len(items)
    with open(manifest, 'w') as handle:
        json.dump({'key': key, 'counts': counts}, handle, indent=1)
    return counts
