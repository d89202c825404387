"""The embedded demo corpus: both streams, a working tokenizer, MDS splits, and reruns skip."""

from __future__ import annotations

import json
import os

import pytest

from foundry.data.errors import DataError
from foundry.data.prep.demo_corpus import build_demo_data, train_demo_tokenizer, write_demo_corpus
from foundry.data.stream.text_loader import build_text_dataloader
from foundry.data.tokenizer import build_tokenizer

SMALL = dict(seq_len=32, max_bytes_per_stream=120_000, vocab_size=600, verbose=False)


@pytest.fixture(scope='module')
def demo(tmp_path_factory):
    return build_demo_data(str(tmp_path_factory.mktemp('demo')), **SMALL)


def test_builds_both_streams_with_train_and_val(demo):
    for name in ('english', 'code'):
        for split in ('train', 'val'):
            assert os.path.isfile(os.path.join(demo.out_root, name, split, 'index.json'))
        with open(os.path.join(demo.out_root, 'corpus', f'{name}.jsonl')) as f:
            records = [json.loads(line) for line in f]
        assert {r['split'] for r in records} == {'train', 'val'}
        size = sum(len(r['text'].encode()) for r in records)
        assert 0.5 * SMALL['max_bytes_per_stream'] < size <= SMALL['max_bytes_per_stream']
    with open(os.path.join(demo.out_root, 'corpus', 'code.jsonl')) as f:
        assert 'def ' in json.loads(f.readline())['text']


def test_tokenizer_works_with_build_tokenizer(demo):
    tok = build_tokenizer(demo.tokenizer)
    assert len(tok) == SMALL['vocab_size']
    assert tok.eos_token == '<|endoftext|>' and tok.eos_token_id == 0 and tok.pad_token_id == 0
    text = 'Return the value of x.\n    def f(self):'
    assert tok.decode(tok(text)['input_ids']) == text


def test_demo_streams_load_as_a_mixture(demo):
    tok = build_tokenizer(demo.tokenizer)
    cfg = {'name': 'text', 'num_workers': 0, 'drop_last': True,
           'dataset': {'max_seq_len': 32, 'shuffle': True, 'streams': {
               'english': {'local': os.path.join(demo.out_root, 'english'), 'split': 'train',
                           'proportion': 0.6},
               'code': {'local': os.path.join(demo.out_root, 'code'), 'split': 'train',
                        'proportion': 0.4}}}}
    batch = next(iter(build_text_dataloader(cfg, tok, 8).dataloader))
    assert batch['input_ids'].shape == (8, 32)
    assert int(batch['input_ids'].max()) < len(tok)


def test_rerun_skips_and_seq_len_change_redoes_only_mds(demo):
    tok_mtime = os.path.getmtime(demo.tokenizer)
    index = os.path.join(demo.out_root, 'code', 'train', 'index.json')
    index_mtime = os.path.getmtime(index)
    again = build_demo_data(demo.out_root, **SMALL)
    assert again.seconds < 1.0
    assert os.path.getmtime(index) == index_mtime

    build_demo_data(demo.out_root, **{**SMALL, 'seq_len': 16})
    assert os.path.getmtime(demo.tokenizer) == tok_mtime
    assert os.path.getmtime(index) != index_mtime
    with open(os.path.join(demo.out_root, 'manifest.json')) as f:
        assert json.load(f)['mds']['seq_len'] == 16
    assert not [p for p in os.listdir(os.path.join(demo.out_root, 'code')) if '.tmp-' in p]


def test_corpus_is_deterministic(tmp_path):
    a = write_demo_corpus(str(tmp_path / 'a'), 50_000)
    b = write_demo_corpus(str(tmp_path / 'b'), 50_000)
    for name in a:
        with open(a[name], 'rb') as fa, open(b[name], 'rb') as fb:
            assert fa.read() == fb.read()


def test_train_tokenizer_on_plain_text(tmp_path):
    text = tmp_path / 'words.txt'
    text.write_text('hello world, hello tokenizer. ' * 200)
    path = train_demo_tokenizer([str(text)], vocab_size=300, out_path=str(tmp_path / 't.json'))
    tok = build_tokenizer(path)
    assert tok.convert_ids_to_tokens(0) == '<|endoftext|>' and tok.eos_token_id == 0
    with pytest.raises(DataError, match='too small'):
        train_demo_tokenizer([str(text)], vocab_size=100, out_path=str(tmp_path / 'x.json'))


def test_provided_tokenizer_is_used(tmp_path, tiny_tokenizer_path):
    result = build_demo_data(str(tmp_path / 'd'), tokenizer_path=tiny_tokenizer_path,
                             **{**SMALL, 'max_bytes_per_stream': 60_000})
    assert result.tokenizer == tiny_tokenizer_path
    assert not os.path.exists(tmp_path / 'd' / 'tokenizer.json')
