"""Bad datasets on disk: each is one clear DataError naming the path, never garbage or a hang."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert_documents
from foundry.data.stream.mds_index import dataset_stats, index_stats
from foundry.data.stream.text_dataset import StreamingTextDataset
from foundry.data.stream.text_loader import build_text_dataloader

DOCS = [f'sample document {i} ' * (5 + i % 11) for i in range(200)]


@pytest.fixture
def dataset(tmp_path, tiny_tokenizer):
    out = tmp_path / 'mds'
    convert_documents(DOCS, str(out), tiny_tokenizer, 16, size_limit=2000, progress=False,
                      verbose=False)
    index = json.loads((out / 'index.json').read_text())
    assert len(index['shards']) > 3
    return out, index


def loader(local, **extra):
    return {'name': 'text', 'num_workers': 0,
            'dataset': {'local': str(local), 'max_seq_len': 16, 'shuffle': False, **extra}}


def shard_path(out, index, i):
    return out / index['shards'][i]['raw_data']['basename']


def test_missing_shard_names_its_path(dataset, tiny_tokenizer):
    out, index = dataset
    os.unlink(shard_path(out, index, 2))
    with pytest.raises(DataError) as err:
        build_text_dataloader(loader(out), tiny_tokenizer, 4)
    assert f'1 of {len(index["shards"])} shards named by {out}/index.json are missing, e.g. ' \
           f'{shard_path(out, index, 2)}' in str(err.value)


def test_truncated_shard_names_its_path_and_sizes(dataset, tiny_tokenizer):
    out, index = dataset
    path = shard_path(out, index, 1)
    data = path.read_bytes()
    path.write_bytes(data[:-7])
    with pytest.raises(DataError, match=rf'shard {path} is {len(data) - 7:,} bytes but '
                                        rf'{out}/index.json says {len(data):,}: the shard is '
                                        'truncated or corrupt, or the index does not belong'):
        build_text_dataloader(loader(out), tiny_tokenizer, 4)


def test_index_from_another_dataset(dataset, tiny_tokenizer, tmp_path):
    out, _ = dataset
    convert_documents(DOCS[:50], str(tmp_path / 'other'), tiny_tokenizer, 8, progress=False,
                      verbose=False)
    (out / 'index.json').write_text((tmp_path / 'other' / 'index.json').read_text())
    with pytest.raises(DataError, match='does not belong to these shards'):
        build_text_dataloader(loader(out), tiny_tokenizer, 4)


def test_corrupt_index_json(dataset, tiny_tokenizer):
    out, _ = dataset
    (out / 'index.json').write_text('{"version": 2, "shards": [')
    with pytest.raises(DataError, match=rf'{out}/index.json is not valid JSON'):
        build_text_dataloader(loader(out), tiny_tokenizer, 4)


def test_same_size_garbage_shard_fails_on_read_naming_the_shard(dataset, tiny_tokenizer):
    out, index = dataset
    path = shard_path(out, index, 0)
    path.write_bytes(b'\xff' * path.stat().st_size)  # right size, garbage offsets
    ds = StreamingTextDataset(local=str(out), max_seq_len=16, shuffle=False, batch_size=1,
                              tokenizer=tiny_tokenizer)
    with pytest.raises(DataError, match=rf'could not read sample 0 of shard {path} .*corrupt'):
        ds[0]


def test_token_dtype_too_narrow_for_the_tokenizer(tmp_path, tiny_tokenizer, write_mds):
    write_mds(tmp_path / 'u8', {'tokens': 'ndarray:uint8'},
              [{'tokens': np.arange(16, dtype=np.uint8)} for _ in range(8)])
    with pytest.raises(DataError, match=r"stores tokens as uint8 \(max id 255\) but the "
                                        r"tokenizer has 382 tokens: the data was converted with "
                                        'a different tokenizer'):
        build_text_dataloader(loader(tmp_path / 'u8'), tiny_tokenizer, 4)


def test_empty_dataset(tmp_path, tiny_tokenizer):
    (tmp_path / 'e').mkdir()
    (tmp_path / 'e' / 'index.json').write_text('{"version": 2, "shards": []}')
    with pytest.raises(DataError, match='lists no shards: the dataset is empty'):
        build_text_dataloader(loader(tmp_path / 'e'), tiny_tokenizer, 4)


def test_short_samples_warn_once(tmp_path, tiny_tokenizer, caplog):
    convert_documents(DOCS, str(tmp_path / 'd'), tiny_tokenizer, 8, progress=False,
                      verbose=False)
    ds = StreamingTextDataset(local=str(tmp_path / 'd'), max_seq_len=16, shuffle=False,
                              batch_size=1)
    with caplog.at_level('WARNING'):
        ds[0], ds[1]
    assert sum('holds 8 tokens but max_seq_len is 16' in r.message for r in caplog.records) == 1


def test_token_counts_from_the_index(dataset, tmp_path, tiny_tokenizer, write_mds):
    out, index = dataset
    stats = dataset_stats(str(out))
    manifest = json.loads((out / 'conversion.json').read_text())['summary']
    assert stats.exact and stats.tokens == manifest['tokens'] and stats.samples == \
        manifest['samples']
    estimated = index_stats(index)  # what an index without our manifest tells
    assert not estimated.exact and estimated.tokens == manifest['tokens']
    # llm-foundry's layout: int32 ndarrays of 2048 tokens.
    write_mds(tmp_path / 'lf', {'tokens': 'ndarray:int32'},
              [{'tokens': np.arange(2048, dtype=np.int32)} for _ in range(12)])
    lf = dataset_stats(str(tmp_path / 'lf'))
    assert (lf.samples, lf.tokens, lf.token_dtype, lf.exact) == (12, 12 * 2048, 'int32', False)
