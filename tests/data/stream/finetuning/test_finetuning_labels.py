"""Finetuning examples -> token ids and labels, checked token by token; bad input named by
file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from foundry.data.errors import DataError
from foundry.data.finetuning.sources import iter_raw_examples
from foundry.data.finetuning.tokenize import TokenizeStats, labels_for, tokenize_examples
from foundry.data.stream.finetuning.collator import FinetuningCollator

IGNORE = -100
CHAT = {'messages': [
    {'role': 'system', 'content': 'You are terse.'},
    {'role': 'user', 'content': 'Name a prime.'},
    {'role': 'assistant', 'content': 'Seven.'},
    {'role': 'user', 'content': 'Another?'},
    {'role': 'assistant', 'content': 'Eleven.'},
]}


def enc(tokenizer, text):
    return tokenizer(text, add_special_tokens=False)['input_ids']


def tokenize(tokenizer, rows, **kwargs):
    kwargs.setdefault('max_seq_len', 512)
    stats = TokenizeStats()
    out = list(tokenize_examples([(f'mem:{i + 1}', r) for i, r in enumerate(rows)], tokenizer,
                                 stats=stats, **kwargs))
    return out, stats


def batch_labels(example, **targets):
    collator = FinetuningCollator(256, 0, **targets)
    batch = collator([{'input_ids': example.input_ids, 'turn_lengths': example.turn_lengths}])
    n = len(example.input_ids)
    return batch['input_ids'][0, :n].tolist(), batch['labels'][0, :n].tolist()


def test_prompt_response_labels_are_the_response_and_eos(neox_tokenizer):
    tok = neox_tokenizer
    prompt, response = 'Write a haiku about rain.\n', 'Soft rain on the roof'
    [example], _ = tokenize(tok, [{'prompt': prompt, 'response': response}])
    p, r, eos = enc(tok, prompt), enc(tok, response), tok.eos_token_id
    ids, labels = batch_labels(example)
    assert ids == p + r + [eos]
    assert labels == [IGNORE] * len(p) + r + [eos]
    # target_prompts: all labels the prompt too, except the very first token (nothing predicts it).
    _, labels_all = batch_labels(example, target_prompts='all')
    assert labels_all == [IGNORE] + p[1:] + r + [eos]
    # length>=N: the prompt only when it has at least N tokens.
    assert batch_labels(example, target_prompts=len(p))[1] == labels_all
    assert batch_labels(example, target_prompts=len(p) + 1)[1] == labels


def test_chat_labels_follow_chatml_turns(neox_tokenizer):
    tok = neox_tokenizer  # no chat template of its own: foundry's default (ChatML) is used
    [example], stats = tokenize(tok, [CHAT])
    assert stats.formats == {'chat': 1}
    prompt0 = ('<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nName a prime.'
               '<|im_end|>\n<|im_start|>assistant\n')
    response0 = 'Seven.<|im_end|>\n'
    prompt1 = '<|im_start|>user\nAnother?<|im_end|>\n<|im_start|>assistant\n'
    response1 = 'Eleven.<|im_end|>\n'
    pieces = [enc(tok, t) for t in (prompt0, response0, prompt1, response1)]
    ids, last = batch_labels(example)
    assert ids == sum(pieces, [])
    ignore = lambda piece: [IGNORE] * len(piece)  # noqa: E731
    assert last == ignore(pieces[0]) + ignore(pieces[1]) + ignore(pieces[2]) + pieces[3]
    _, every = batch_labels(example, target_responses='all')
    assert every == ignore(pieces[0]) + pieces[1] + ignore(pieces[2]) + pieces[3]
    assert tok.decode([t for t in every if t != IGNORE]) == response0 + response1


def test_tokenizer_chat_template_is_used_when_present(tiny_tokenizer):
    template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                "{% if add_generation_prompt %}[assistant] {% endif %}")
    [example], _ = tokenize(tiny_tokenizer, [CHAT], chat_template=template)
    ids, labels = batch_labels(example)
    assert tiny_tokenizer.decode(ids).startswith('[system] You are terse.\n[user] Name a prime.')
    assert tiny_tokenizer.decode([t for t in labels if t != IGNORE]) == 'Eleven.\n'


@pytest.mark.parametrize('row, message', [
    ({'prompt': 'x'}, "mem:1: the example has no 'response' key (keys present: 'prompt')"),
    ({'question': 'x', 'answer': 'y'}, 'neither "prompt"/"response" nor "messages"'),
    ({'prompt': 'x', 'response': '  '}, 'mem:1: the response is empty'),
    ({'messages': [{'role': 'user', 'content': 'hi'}, {'role': 'bot', 'content': 'yo'}]},
     "mem:1: messages[1] has role 'bot'; roles are system, user, assistant"),
    ({'messages': [{'role': 'user', 'content': 'hi'}]}, 'it must end with an assistant message'),
    ({'messages': [{'role': 'assistant', 'content': 'hi'}]},
     "messages[0] has role 'assistant' where 'user' was expected"),
    ({'messages': []}, '"messages" must be a non-empty list'),
])
def test_bad_examples_are_one_line_naming_where(tiny_tokenizer, row, message):
    with pytest.raises(DataError) as err:
        tokenize(tiny_tokenizer, [row])
    assert message in str(err.value)
    assert '\n' not in str(err.value)


def test_bad_lines_in_files_name_the_file_and_line(tmp_path, tiny_tokenizer):
    good = json.dumps({'prompt': 'a', 'response': 'b'})
    path = tmp_path / 'data.jsonl'
    path.write_text(f'{good}\n\n{good}\n{{"prompt": "a", "respons": "b"}}\n')
    with pytest.raises(DataError, match=rf"^{path}:4: the example has no 'response' key"):
        list(tokenize_examples(iter_raw_examples(str(path), None), tiny_tokenizer, max_seq_len=64))
    path.write_text(f'{good}\nnot json\n')
    with pytest.raises(DataError, match=rf'^{path}:2: not a JSON object'):
        list(iter_raw_examples(str(path), None))


def test_overlong_examples_are_counted_truncated_dropped_or_refused(tiny_tokenizer):
    short = {'prompt': 'def add(a, b):', 'response': ' return a + b'}
    long = {'prompt': 'quick ' * 3, 'response': 'brown fox ' * 40}
    prompt_only_long = {'prompt': 'lazy dog ' * 60, 'response': 'x'}
    rows = [short, long, prompt_only_long]
    kept, stats = tokenize(tiny_tokenizer, rows, max_seq_len=24)
    assert (stats.over_long, stats.truncated, stats.dropped, stats.kept) == (2, 1, 1, 2)
    assert stats.first_over_long.startswith('mem:2 (')
    assert len(kept[1].input_ids) == 24 and kept[1].turn_lengths.sum() == 24
    assert 'first: mem:2' in stats.summary(24)
    _, stats = tokenize(tiny_tokenizer, rows, max_seq_len=24, overlong='drop')
    assert (stats.kept, stats.dropped) == (1, 2)
    with pytest.raises(DataError, match=r'^mem:2: the example is \d+ tokens, longer than '
                                        r'max_seq_len 24'):
        tokenize(tiny_tokenizer, rows, max_seq_len=24, overlong='error')


def test_labels_for_multi_turn_rules():
    ids = np.arange(10, 20)
    turns = np.array([2, 3, 1, 4])  # p0 r0 p1 r1
    assert labels_for(ids, turns, 'none', 'last').tolist() == [IGNORE] * 6 + [16, 17, 18, 19]
    assert labels_for(ids, turns, 'none', 'all').tolist() == \
        [IGNORE] * 2 + [12, 13, 14] + [IGNORE] + [16, 17, 18, 19]
    assert labels_for(ids, turns, 2, 'last').tolist() == [10, 11] + [IGNORE] * 4 + [16, 17, 18, 19]
