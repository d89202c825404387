"""--fast_bpe: tiktoken's BPE gives the tokenizer's own ids, and any difference stops conversion."""

from __future__ import annotations

import os

import pytest

from foundry.data.convert import convert
from foundry.data.errors import DataError
from foundry.data.fast_bpe import FastBPE
from foundry.data.sources import JsonSource
from tests.data.test_convert_restart import shard_files
from tests.data.test_convert_sources import write_jsonl

HARD_TEXT = [
    'def f(x):\n        return x  # 8 spaces\n\tdone\r\n',
    ' ' * 57 + 'x' + ' ' * 25 + 'y' + ' \n' * 3,
    "I'm sure they'll say it's 12,345.67 -- or 3e-5?",
    'café (composed) cafe\u0301 (decomposed) \u212b Å ﬁ',  # NFC changes the second and third
    'emoji 👍🏽 and 中文字符 and עִבְרִית and \U0001F600',
    'literal <|endoftext|> and <|padding|> inside text, and <|endoftext|><|endoftext|>',
    '\u00a0non-breaking\u2009thin\u3000ideographic spaces',
    '',
    'x' * 300,
]


def test_same_ids_as_the_tokenizer(neox_tokenizer_path, neox_tokenizer):
    fast = FastBPE.from_tokenizer_json(open(neox_tokenizer_path).read())
    docs = HARD_TEXT + [open(__file__).read(), open(os.__file__).read()]
    exact = [neox_tokenizer(d, add_special_tokens=False)['input_ids'] for d in docs]
    assert fast.encode_batch(docs) == exact
    assert fast.encode_batch(docs, threads=2) == exact


def test_tiny_byte_level_tokenizer_qualifies_too(tiny_tokenizer_path, tiny_tokenizer):
    fast = FastBPE.from_tokenizer_json(open(tiny_tokenizer_path).read())
    assert fast.encode_batch(HARD_TEXT) == \
        [tiny_tokenizer(d, add_special_tokens=False)['input_ids'] for d in HARD_TEXT]


def test_conversion_output_is_identical(neox_tokenizer, tmp_path):
    docs = (HARD_TEXT + [open(os.__file__).read()]) * 20
    write_jsonl(tmp_path / 'in.jsonl', docs)
    exact = convert(JsonSource(str(tmp_path / 'in.jsonl')), str(tmp_path / 'exact'),
                    neox_tokenizer, 64, progress=False, verbose=False)
    fast = convert(JsonSource(str(tmp_path / 'in.jsonl')), str(tmp_path / 'fast'),
                   neox_tokenizer, 64, fast_bpe=True, progress=False, verbose=False)
    assert fast.workers > 0 and exact.workers == 0  # --fast_bpe runs a process per core
    assert shard_files(tmp_path / 'exact') == shard_files(tmp_path / 'fast')


def test_unsuitable_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({'a': 0, '<unk>': 1}, unk_token='<unk>'))
    with pytest.raises(DataError, match=r"--fast_bpe cannot encode with this tokenizer: its "
                                        r"model is 'WordLevel', not BPE"):
        FastBPE.from_tokenizer_json(tok.to_str())


def test_a_disagreement_stops_the_conversion(neox_tokenizer, tmp_path, monkeypatch):
    write_jsonl(tmp_path / 'in.jsonl', HARD_TEXT * 10)
    real = FastBPE.encode_batch

    def off_by_one(self, docs, threads=1):
        out = real(self, docs, threads)
        out[2] = [i + 1 for i in out[2]]
        return out

    monkeypatch.setattr(FastBPE, 'encode_batch', off_by_one)
    with pytest.raises(DataError, match=r"--fast_bpe and the tokenizer disagree on a document "
                                        r"\(\"I'm sure"):
        convert(JsonSource(str(tmp_path / 'in.jsonl')), str(tmp_path / 'out'), neox_tokenizer,
                16, fast_bpe=True, workers=0, progress=False, verbose=False)
