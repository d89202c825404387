"""Tokenize finetuning examples into turns, and label only the tokens the model should learn.

A tokenized example is its token ids plus ``turn_lengths`` = ``[prompt_0, response_0, prompt_1,
response_1, ...]`` (token counts). Which tokens carry labels is decided from those lengths
(``labels_for``), so the same tokenized data (in memory or in MDS) serves every
``target_prompts`` / ``target_responses`` setting:

  * ``target_responses: last`` (default) labels the last response only; ``all`` every response;
  * ``target_prompts: none`` (default) labels no prompt; ``all`` every prompt; ``length>=N``
    the prompts of at least N tokens.

Everything else is -100 (what cross-entropy skips). Prompt/response examples end with the
tokenizer's eos (labelled with the response) so a finetuned model learns to stop; chats end
with what the chat template writes after a message.

Examples longer than ``max_seq_len`` are handled as ``dataset.overlong`` says: ``truncate``
(default; cut at max_seq_len, dropped if no labelled token is left), ``drop``, or ``error``
(one line naming the file and line). Counts and the first location are reported by the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from foundry.data.errors import DataError
from foundry.data.finetuning.examples import to_turns

__all__ = ['TokenizedExample', 'TokenizeStats', 'tokenize_examples', 'labels_for',
           'parse_targets', 'OVERLONG_CHOICES', 'IGNORE_INDEX']

IGNORE_INDEX = -100
OVERLONG_CHOICES = ('truncate', 'drop', 'error')
_BATCH = 512  # examples per call into the tokenizer's Rust thread pool


@dataclass
class TokenizedExample:
    input_ids: np.ndarray        # int64
    turn_lengths: np.ndarray     # int64, [prompt_0, response_0, ...]
    where: str = ''


@dataclass
class TokenizeStats:
    examples: int = 0            # read from the source
    kept: int = 0
    over_long: int = 0
    truncated: int = 0
    dropped: int = 0
    first_over_long: str | None = None
    formats: dict[str, int] = field(default_factory=dict)

    def summary(self, max_seq_len: int) -> str:
        text = f'{self.kept:,} of {self.examples:,} examples kept'
        if self.over_long:
            text += (f'; {self.over_long:,} longer than max_seq_len {max_seq_len} '
                     f'({self.truncated:,} truncated, {self.dropped:,} dropped; first: '
                     f'{self.first_over_long})')
        return text


def parse_targets(target_prompts: Any, target_responses: Any) -> tuple[str | int, str]:
    """('none'|'all'|N, 'last'|'all') from the YAML values; an error naming the key otherwise."""
    prompts = str(target_prompts).lower()
    match = re.fullmatch(r'length>=(\d+)', prompts.replace(' ', ''))
    if match:
        prompts_rule: str | int = int(match.group(1))
    elif prompts in ('none', 'all'):
        prompts_rule = prompts
    else:
        raise DataError(f'dataset.target_prompts is {target_prompts!r}; use none, all or '
                        'length>=N (prompts of at least N tokens).')
    responses = str(target_responses).lower()
    if responses not in ('last', 'all'):
        raise DataError(f'dataset.target_responses is {target_responses!r}; use last or all.')
    return prompts_rule, responses


def labels_for(input_ids: np.ndarray, turn_lengths: np.ndarray, target_prompts: str | int,
               target_responses: str) -> np.ndarray:
    """Labels (unshifted: label t is token t) with -100 on every untargeted token."""
    labels = np.full(len(input_ids), IGNORE_INDEX, dtype=np.int64)
    start = 0
    n_turns = len(turn_lengths) // 2
    for turn in range(n_turns):
        prompt_len, response_len = int(turn_lengths[2 * turn]), int(turn_lengths[2 * turn + 1])
        if target_prompts == 'all' or (isinstance(target_prompts, int) and
                                       prompt_len >= target_prompts):
            labels[start:start + prompt_len] = input_ids[start:start + prompt_len]
        start += prompt_len
        if target_responses == 'all' or turn == n_turns - 1:
            labels[start:start + response_len] = input_ids[start:start + response_len]
        start += response_len
    return labels


def tokenize_examples(raw: Iterable[tuple[str, Any]], tokenizer: Any, *, max_seq_len: int,
                      overlong: str = 'truncate', target_prompts: str | int = 'none',
                      target_responses: str = 'last',
                      preprocessing_fn: Callable[[dict], dict] | None = None,
                      chat_template: str | None = None,
                      stats: TokenizeStats | None = None) -> Iterator[TokenizedExample]:
    """Tokenized, length-checked examples from ``(where, raw_example)`` pairs."""
    if overlong not in OVERLONG_CHOICES:
        raise DataError(f'dataset.overlong is {overlong!r}; use one of {", ".join(OVERLONG_CHOICES)}.')
    stats = stats if stats is not None else TokenizeStats()
    prefix, eos = _special_ids(tokenizer)
    pending: list[tuple[str, list[tuple[str, str]], bool]] = []
    for where, example in raw:
        stats.examples += 1
        if preprocessing_fn is not None:
            try:
                example = preprocessing_fn(example)
            except DataError:
                raise
            except Exception as err:
                raise DataError(f'{where}: dataset.preprocessing_fn failed: '
                                f'{type(err).__name__}: {err}') from err
        turns = to_turns(example, where, tokenizer, chat_template)
        is_chat = 'messages' in example
        stats.formats['chat' if is_chat else 'prompt_response'] = \
            stats.formats.get('chat' if is_chat else 'prompt_response', 0) + 1
        pending.append((where, turns, not is_chat))
        if len(pending) >= _BATCH:
            yield from _finish(pending, tokenizer, prefix, eos, max_seq_len, overlong,
                               target_prompts, target_responses, stats)
            pending = []
    if pending:
        yield from _finish(pending, tokenizer, prefix, eos, max_seq_len, overlong,
                           target_prompts, target_responses, stats)


def _special_ids(tokenizer: Any) -> tuple[list[int], int | None]:
    """Tokens the tokenizer puts before text (e.g. Llama's bos), and eos."""
    with_special = list(tokenizer('a', add_special_tokens=True)['input_ids'])
    plain = list(tokenizer('a', add_special_tokens=False)['input_ids'])
    prefix = with_special[:len(with_special) - len(plain)] if with_special[-len(plain):] == plain \
        else []
    return prefix, tokenizer.eos_token_id


def _finish(pending, tokenizer, prefix, eos, max_seq_len, overlong, target_prompts,
            target_responses, stats) -> Iterator[TokenizedExample]:
    texts = [text for _, turns, _ in pending for turn in turns for text in turn]
    encoded = tokenizer(texts, add_special_tokens=False)['input_ids'] if texts else []
    at = 0
    for where, turns, add_eos in pending:
        pieces = encoded[at:at + 2 * len(turns)]
        at += 2 * len(turns)
        pieces = [list(p) for p in pieces]
        pieces[0] = prefix + pieces[0]
        if add_eos and eos is not None:
            pieces[-1] = pieces[-1] + [eos]
        if not pieces[-1]:
            raise DataError(f'{where}: the response tokenizes to nothing; every example needs '
                            'something to learn.')
        lengths = np.array([len(p) for p in pieces], dtype=np.int64)
        ids = np.array([t for p in pieces for t in p], dtype=np.int64)
        example = TokenizedExample(ids, lengths, where)
        if len(ids) > max_seq_len:
            stats.over_long += 1
            stats.first_over_long = stats.first_over_long or f'{where} ({len(ids)} tokens)'
            if overlong == 'error':
                raise DataError(f'{where}: the example is {len(ids)} tokens, longer than '
                                f'max_seq_len {max_seq_len}; shorten it, raise max_seq_len, or set '
                                'dataset.overlong: truncate or drop.')
            example = _truncate(example, max_seq_len, target_prompts, target_responses) \
                if overlong == 'truncate' else None
            if example is None:
                stats.dropped += 1
                continue
            stats.truncated += 1
        stats.kept += 1
        yield example


def _truncate(example: TokenizedExample, max_seq_len: int, target_prompts, target_responses
              ) -> TokenizedExample | None:
    ids = example.input_ids[:max_seq_len]
    lengths, left = [], max_seq_len
    for n in example.turn_lengths:
        lengths.append(min(int(n), left))
        left -= lengths[-1]
    lengths = np.array(lengths, dtype=np.int64)
    if (labels_for(ids, lengths, target_prompts, target_responses) == IGNORE_INDEX).all():
        return None  # nothing left to learn from: the cut fell inside the prompt
    return TokenizedExample(ids, lengths, example.where)
