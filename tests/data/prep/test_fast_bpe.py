"""The fast_bpe encoder (the default for GPT-2/GPT-NeoX-style tokenizers): tiktoken's BPE gives the tokenizer's
own ids, long documents cut at safe points give the same ids, and any difference stops conversion."""

from __future__ import annotations

import os

import pytest

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert
from foundry.data.prep.fast_bpe import FastBPE
from foundry.data.prep.sources import JsonSource
from tests.data.prep.test_convert_restart import shard_files
from tests.data.prep.test_convert_sources import write_jsonl

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


@pytest.mark.parametrize('workers', [None, 2])
def test_conversion_output_is_identical(neox_tokenizer, tmp_path, workers):
    docs = (HARD_TEXT + [open(os.__file__).read()]) * 20
    write_jsonl(tmp_path / 'in.jsonl', docs)
    exact = convert(JsonSource(str(tmp_path / 'in.jsonl')), str(tmp_path / 'exact'),
                    neox_tokenizer, 64, encoder='hf', progress=False, verbose=False)
    fast = convert(JsonSource(str(tmp_path / 'in.jsonl')), str(tmp_path / 'fast'),
                   neox_tokenizer, 64, workers=workers, progress=False, verbose=False)
    # The default picks fast_bpe for GPT-NeoX; a small input runs in this process, workers=2 forks two
    # processes that inherit the encoder built once here.
    assert (exact.encoder, fast.encoder) == ('hf', 'fast_bpe')
    assert fast.workers == (workers or 0)
    assert shard_files(tmp_path / 'exact') == shard_files(tmp_path / 'fast')


def test_auto_says_which_encoder_runs_and_why(neox_tokenizer_path):
    from tokenizers import Tokenizer, models

    from foundry.data.prep.encoders import choose_encoder

    encoder, why = choose_encoder('auto', ('json', open(neox_tokenizer_path).read()))
    assert encoder == 'fast_bpe' and 'byte-level BPE' in why and '--encoder hf' in why
    word_level = Tokenizer(models.WordLevel({'a': 0, '<unk>': 1}, unk_token='<unk>')).to_str()
    encoder, why = choose_encoder('auto', ('json', word_level))
    assert encoder == 'hf' and "its model is 'WordLevel', not BPE" in why
    with pytest.raises(DataError, match="--encoder fast_bpe cannot encode with this tokenizer: its model is"):
        choose_encoder('fast_bpe', ('json', word_level))


def test_safe_points_cut_without_changing_ids(neox_tokenizer_path, neox_tokenizer):
    from foundry.data.prep.fast_bpe import is_safe_point, split_at_safe_points

    text = ''.join(HARD_TEXT * 3) + open(os.__file__).read() + open(__file__).read()
    pieces = split_at_safe_points(text, 200)
    assert len(pieces) > 20 and ''.join(pieces) == text
    assert all(is_safe_point(text, sum(map(len, pieces[:i]))) for i in range(1, len(pieces)))
    whole = neox_tokenizer(text, add_special_tokens=False)['input_ids']
    assert [i for p in pieces for i in neox_tokenizer(p, add_special_tokens=False)['input_ids']] == whole
    fast = FastBPE.from_tokenizer_json(open(neox_tokenizer_path).read())
    import foundry.data.prep.fast_bpe as fast_bpe

    # Force the long-document path on this text: cut into ~200-character segments on threads.
    saved = fast_bpe.LONG_PIECE_CHARS, fast_bpe.SEGMENT_CHARS
    fast_bpe.LONG_PIECE_CHARS, fast_bpe.SEGMENT_CHARS = 1000, 200
    try:
        assert fast.encode_batch([text, 'short', text]) == [whole, neox_tokenizer('short')['input_ids'], whole]
    finally:
        fast_bpe.LONG_PIECE_CHARS, fast_bpe.SEGMENT_CHARS = saved


@pytest.mark.slow
def test_a_5mb_single_document_converts_to_the_tokenizers_ids(neox_tokenizer, tmp_path):
    """Whole standard-library sources as one 5 MB document: cut at safe points, encoded on every core."""
    import glob

    import numpy as np
    from streaming import StreamingDataset

    text, files = '', sorted(glob.glob(os.path.join(os.path.dirname(os.__file__), '*.py')))
    for path in files:
        with open(path, encoding='utf-8', errors='replace') as f:
            text += f.read()
        if len(text) >= 5_000_000:
            break
    text = text[:5_000_000]
    write_jsonl(tmp_path / 'one.jsonl', [text])
    summary = convert(JsonSource(str(tmp_path / 'one.jsonl')), str(tmp_path / 'out'), neox_tokenizer, 2048,
                      progress=False, verbose=False)
    assert summary.encoder == 'fast_bpe' and summary.documents == 1
    want = neox_tokenizer(text, add_special_tokens=False)['input_ids'] + [neox_tokenizer.eos_token_id]
    dataset = StreamingDataset(local=str(tmp_path / 'out'), shuffle=False, batch_size=1)
    got = np.concatenate([np.asarray(dataset.get_item(i)['tokens'], dtype=np.int64) for i in range(len(dataset))])
    assert len(got) == len(want) // 2048 * 2048 and np.array_equal(got, np.asarray(want[:len(got)]))


def test_unsuitable_tokenizer_is_refused(tmp_path):
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({'a': 0, '<unk>': 1}, unk_token='<unk>'))
    with pytest.raises(DataError, match=r"--encoder fast_bpe cannot encode with this tokenizer: its "
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
    with pytest.raises(DataError, match=r"the fast_bpe encoder and the tokenizer disagree on a document "
                                        r"\(\"I'm sure.*--encoder hf"):
        convert(JsonSource(str(tmp_path / 'in.jsonl')), str(tmp_path / 'out'), neox_tokenizer,
                16, fast_bpe=True, workers=0, progress=False, verbose=False)
