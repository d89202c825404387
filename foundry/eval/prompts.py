"""Few-shot prompts and the token requests the model is asked to score.

Prompt layout (llm-foundry's): `prompt_string`, then each shot as a solved example, each
followed by `example_delimiter`, then the example's own context and `continuation_delimiter`:

    language_modeling / generation:  {context}{continuation_delimiter}{continuation | answer}
    multiple_choice:                 {query}{continuation_delimiter}{choices[gold]}
    schema:                          {context_options[gold]}{continuation_delimiter}{continuation}

Shots are drawn per example from a generator seeded with (fewshot_random_seed, example index),
never including the example itself: the same example gets the same shots whatever the number
of processes, the batch size or the order examples are scored in.

Tokens, as lm-evaluation-harness makes them (so both score the same tokens): whitespace at the
end of the context moves to the start of the continuation, the whole string is encoded, and the
continuation is what follows the context's own encoding. An input that does not fit `max_seq_len`
loses tokens from the left of the context (counted as truncated; a multiple_choice context is cut
once, for its longest choice, so all choices see the same one); an example whose continuation
alone does not fit is skipped (counted). Neither happens silently: both are in the results.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Optional

from foundry.config.errors import ConfigError
from foundry.eval.tasks import ICLTaskConfig


@dataclass
class Item:
    """One example at one few-shot count: what to score and how to judge it."""

    index: int
    # (context, continuation) token lists. multiple_choice: one per choice, one shared context;
    # schema: one per context option, one shared continuation; language_modeling: one;
    # generation: one with an empty continuation (the prompt).
    requests: list[tuple[list[int], list[int]]]
    gold: int = 0
    answers: list[str] = field(default_factory=list)  # generation: the answer and its aliases
    category: Optional[str] = None
    truncated: bool = False
    skipped: bool = False
    max_new_tokens: int = 0  # generation only
    prompt_text: list[str] = field(default_factory=list)  # the contexts as text (lm-eval cross-check)


def fewshot_indices(n_examples: int, index: int, k: int, seed: int) -> list[int]:
    """k distinct example indices other than `index`, fixed by (seed, index)."""
    if k == 0:
        return []
    if k > n_examples - 1:
        raise ConfigError(f'num_fewshot {k} needs at least {k + 1} examples in the task file, which has {n_examples}')
    rng = random.Random(f'{seed}:{index}')
    picks = rng.sample(range(n_examples - 1), k)
    return [p + (p >= index) for p in picks]  # skip over the example itself


def shot_text(example: dict[str, Any], task: ICLTaskConfig) -> str:
    kind, delim = task.icl_task_type, task.continuation_delimiter
    if kind == 'language_modeling':
        return example['context'] + delim + example['continuation']
    if kind == 'multiple_choice':
        return example['query'] + delim + example['choices'][example['gold']]
    if kind == 'schema':
        return example['context_options'][example['gold']] + delim + example['continuation']
    return example['context'] + delim + example['answer']


def prompt_prefix(examples: list[dict[str, Any]], index: int, k: int, task: ICLTaskConfig) -> str:
    shots = [shot_text(examples[j], task) for j in fewshot_indices(len(examples), index, k, task.fewshot_random_seed)]
    return task.prompt_string + ''.join(s + task.example_delimiter for s in shots)


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-evaluation-harness's split of context and continuation into tokens (see module doc)."""
    stripped = context.rstrip()
    if len(stripped) < len(context):
        continuation = context[len(stripped):] + continuation
        context = stripped
    whole = tokenizer(context + continuation, add_special_tokens=False)['input_ids']
    ctx = tokenizer(context, add_special_tokens=False)['input_ids']
    return ctx, whole[len(ctx):]


def fit(ctx: list[int], cont: list[int], max_seq_len: int) -> tuple[list[int], list[int], bool, bool]:
    """Left-truncate so the model input (context + continuation minus its last token) fits.

    Returns (context, continuation, truncated, skipped).
    """
    if len(cont) > max_seq_len or not cont:
        return ctx, cont, False, True
    room = max_seq_len + 1 - len(cont)
    if len(ctx) > room:
        return ctx[len(ctx) - room:], cont, True, False
    return ctx, cont, False, False


def build_items(task: ICLTaskConfig, examples: list[dict[str, Any]], k: int, tokenizer,
                max_seq_len: int) -> list[Item]:
    """Every example of the task at k shots, tokenized and fitted to max_seq_len."""
    budget = generation_budget(task, examples, tokenizer)
    return [build_item(task, examples, i, k, tokenizer, max_seq_len, budget) for i in range(len(examples))]


def generation_budget(task: ICLTaskConfig, examples: list[dict[str, Any]], tokenizer) -> int:
    """Tokens to generate for every example of a generation task: the longest answer or alias in the task
    (tokenized on its own) plus `generation_extra_tokens`, as llm-foundry sizes it. 0 for other types."""
    if task.icl_task_type != 'generation_task_with_answers':
        return 0
    answers = [a for ex in examples for a in (ex['answer'], *ex.get('aliases', []))]
    return max(len(ids) for ids in tokenizer(answers, add_special_tokens=False)['input_ids']) + task.generation_extra_tokens


def build_item(task: ICLTaskConfig, examples: list[dict[str, Any]], index: int, k: int, tokenizer,
               max_seq_len: int, generation_tokens: Optional[int] = None) -> Item:
    example = examples[index]
    prefix = prompt_prefix(examples, index, k, task)
    kind, delim = task.icl_task_type, task.continuation_delimiter
    item = Item(index=index, requests=[], gold=int(example.get('gold', 0)), category=example.get('category'))
    if kind == 'generation_task_with_answers':
        if generation_tokens is None:
            generation_tokens = generation_budget(task, examples, tokenizer)
        return _generation_item(item, example, prefix + example['context'] + delim, tokenizer, max_seq_len,
                                generation_tokens)
    if kind == 'language_modeling':
        pairs = [(prefix + example['context'] + delim, example['continuation'])]
    elif kind == 'multiple_choice':
        pairs = [(prefix + example['query'] + delim, choice) for choice in example['choices']]
    else:
        pairs = [(prefix + option + delim, example['continuation']) for option in example['context_options']]
    item.prompt_text = [p[0] for p in pairs]
    encoded = [encode_pair(tokenizer, context, continuation) for context, continuation in pairs]
    if kind == 'multiple_choice':
        # One context for every choice, cut for the longest one, so the choices can share its pass (and are
        # judged on the same context; lm-evaluation-harness cuts each choice's context separately).
        longest = max(encoded, key=lambda pair: len(pair[1]))
        shared, _, item.truncated, item.skipped = fit(longest[0], longest[1], max_seq_len)
        item.requests = [(shared, cont) for _, cont in encoded]
    else:
        for ctx, cont in encoded:
            ctx, cont, truncated, skipped = fit(ctx, cont, max_seq_len)
            item.truncated |= truncated
            item.skipped |= skipped
            item.requests.append((ctx, cont))
    if item.skipped:
        item.requests = []
    return item


def _generation_item(item: Item, example: dict, context: str, tokenizer, max_seq_len: int,
                     generation_tokens: int) -> Item:
    item.answers = [example['answer'], *example.get('aliases', [])]
    item.prompt_text = [context]
    item.max_new_tokens = generation_tokens
    # Trailing whitespace stays with the answer, as in encode_pair: a byte-level BPE writes ' word' as one
    # token, so a prompt ending in a lone space token would start the model off out of distribution.
    ctx = tokenizer(context.rstrip() or context, add_special_tokens=False)['input_ids']
    room = max_seq_len - item.max_new_tokens
    if room < 1 or not ctx:
        item.skipped = True
        return item
    if len(ctx) > room:
        ctx, item.truncated = ctx[len(ctx) - room:], True
    item.requests = [(ctx, [])]
    return item
