"""StreamingTextDataset / build_text_dataloader: sample layouts, dtype safety, batches, streams."""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import torch

from foundry.data.errors import DataError
from foundry.data.stream.cache_dir import run_cache_dir
from foundry.data.stream.collator import TextCollator, derive_sequence_id, num_tokens_in_batch
from foundry.data.stream.loader_keys import STREAM_KEYS, TEXT_DATASET_KEYS, TEXT_LOADER_KEYS
from foundry.data.stream.text_dataset import StreamingTextDataset
from foundry.data.stream.text_loader import build_text_dataloader

ROWS = [np.arange(i, i + 12) % 300 for i in range(10)]  # ids valid for the 400-token tokenizer


def dataset(local, **kwargs):
    kwargs.setdefault('max_seq_len', 12)
    return StreamingTextDataset(local=str(local), shuffle=False, batch_size=1, **kwargs)


def ids(ds):
    return [ds[i]['input_ids'].tolist() for i in range(len(ds))]


def loader_cfg(**dataset):
    return {'name': 'text', 'dataset': {'max_seq_len': 12, 'shuffle': False, **dataset},
            'num_workers': 0, 'drop_last': False}


def test_llm_foundry_int32_ndarray_reads_back(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds', {'tokens': 'ndarray:int32'},
              [{'tokens': r.astype(np.int32)} for r in ROWS])
    got = ids(dataset(tmp_path / 'mds', tokenizer=tiny_tokenizer))
    assert got == [r.tolist() for r in ROWS]
    sample = dataset(tmp_path / 'mds')[0]['input_ids']
    assert sample.dtype == torch.long and sample.shape == (12,)


def test_longer_samples_are_truncated(write_mds, tmp_path):
    write_mds(tmp_path / 'mds', {'tokens': 'ndarray:uint16'},
              [{'tokens': r.astype(np.uint16)} for r in ROWS])
    assert ids(dataset(tmp_path / 'mds', max_seq_len=5))[3] == ROWS[3][:5].tolist()


def test_legacy_bytes_need_and_use_token_encoding_type(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds', {'tokens': 'bytes'},
              [{'tokens': r.astype(np.int64).tobytes()} for r in ROWS])
    got = ids(dataset(tmp_path / 'mds', tokenizer=tiny_tokenizer, token_encoding_type='int64'))
    assert got == [r.tolist() for r in ROWS]

    with pytest.raises(DataError, match='token_encoding_type'):
        dataset(tmp_path / 'mds')[0]
    # int64 data read as int32: every other value is 0, caught before it reaches the model.
    with pytest.raises(DataError, match='wider dtype'):
        dataset(tmp_path / 'mds', token_encoding_type='int32')[1]
    with pytest.raises(DataError, match='not an integer dtype'):
        dataset(tmp_path / 'mds', token_encoding_type='float32')


def test_legacy_bytes_narrow_data_read_wide_is_out_of_vocab(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds', {'tokens': 'bytes'},
              [{'tokens': r.astype(np.int32).tobytes()} for r in ROWS])
    with pytest.raises(DataError, match='outside the tokenizer vocabulary.*token_encoding_type'):
        dataset(tmp_path / 'mds', tokenizer=tiny_tokenizer, token_encoding_type='int64')[1]


def test_ids_beyond_the_tokenizer_are_an_error(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds', {'tokens': 'ndarray:uint16'},
              [{'tokens': np.array([1, 2, 5000], np.uint16)}])
    with pytest.raises(DataError, match='not the one the data was converted with'):
        dataset(tmp_path / 'mds', tokenizer=tiny_tokenizer)[0]


def test_legacy_text_samples_are_tokenized(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds', {'text': 'str'}, [{'text': 'def add(a, b): return a + b ' * 5}])
    got = dataset(tmp_path / 'mds', tokenizer=tiny_tokenizer, max_seq_len=7)[0]['input_ids']
    assert got.tolist() == tiny_tokenizer('def add(a, b): return a + b ' * 5)['input_ids'][:7]


def test_collator_labels_mask_and_sequence_id():
    eos, pad = 0, 0  # pad == eos, as with GPT-NeoX: padding must come from lengths, not ids
    collate = TextCollator(max_seq_len=8, pad_token_id=pad, eos_token_id=eos)
    batch = collate([{'input_ids': torch.tensor([5, 6, 0, 7, 8, 0, 9, 4])},
                     {'input_ids': torch.tensor([3, 0, 4, 0])}])
    assert batch['input_ids'].tolist() == [[5, 6, 0, 7, 8, 0, 9, 4], [3, 0, 4, 0, 0, 0, 0, 0]]
    assert batch['attention_mask'].tolist() == [[1] * 8, [1, 1, 1, 1, 0, 0, 0, 0]]
    assert batch['labels'].tolist() == [[5, 6, 0, 7, 8, 0, 9, 4],
                                        [3, 0, 4, 0, -100, -100, -100, -100]]
    # An eos belongs to the document it ends; padding is its own segment after the last one.
    assert batch['sequence_id'].tolist() == [[0, 0, 0, 1, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2, 2, 2]]
    assert all(t.dtype == torch.long for t in batch.values())
    assert num_tokens_in_batch(batch) == {'total': 12, 'loss_generating': 10}


def test_sequence_id_from_bos_and_from_nothing():
    x = torch.tensor([[1, 5, 6, 1, 7, 1]])
    mask = torch.ones_like(x)
    assert derive_sequence_id(x, mask, bos_token_id=1).tolist() == [[0, 0, 0, 1, 1, 2]]
    assert derive_sequence_id(x, mask).tolist() == [[0] * 6]


def test_dataloader_batches_and_token_counting(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds' / 'train', {'tokens': 'ndarray:uint16'},
              [{'tokens': r.astype(np.uint16)} for r in ROWS])
    spec = build_text_dataloader(loader_cfg(local=str(tmp_path / 'mds'), split='train'),
                                 tiny_tokenizer, 4)
    batches = list(spec.dataloader)
    assert [b['input_ids'].shape[0] for b in batches] == [4, 4, 2]
    assert torch.cat([b['input_ids'] for b in batches]).tolist() == [r.tolist() for r in ROWS]
    assert set(batches[0]) == {'input_ids', 'labels', 'attention_mask', 'sequence_id'}
    assert spec.get_num_tokens_in_batch(batches[0]) == 48


def test_two_streams_with_proportions(write_mds, tmp_path, tiny_tokenizer):
    for name, value in (('english', 10), ('code', 20)):
        write_mds(tmp_path / name / 'train', {'tokens': 'ndarray:uint16'},
                  [{'tokens': np.full(12, value, np.uint16)} for _ in range(40)])
    cfg = loader_cfg(split='train', shuffle=True, streams={
        'english': {'local': str(tmp_path / 'english'), 'proportion': 0.75},
        'code': {'remote': str(tmp_path / 'code'), 'proportion': 0.25},  # a folder as remote
    })
    spec = build_text_dataloader(cfg, tiny_tokenizer, 4)
    counts = Counter(int(row[0]) for b in spec.dataloader for row in b['input_ids'])
    assert counts == {10: 60, 20: 20}


def test_config_errors_are_clear(write_mds, tmp_path, tiny_tokenizer):
    write_mds(tmp_path / 'mds', {'tokens': 'ndarray:uint16'},
              [{'tokens': ROWS[0].astype(np.uint16)}])
    with pytest.raises(DataError, match='did you mean `loader.dataset.shuffle`'):
        build_text_dataloader(loader_cfg(local=str(tmp_path / 'mds'), shufle=True),
                              tiny_tokenizer, 2)
    with pytest.raises(DataError, match='index.json missing'):
        build_text_dataloader(loader_cfg(local=str(tmp_path / 'nope')), tiny_tokenizer, 2)
    with pytest.raises(DataError, match='names no data'):
        build_text_dataloader(loader_cfg(), tiny_tokenizer, 2)
    with pytest.raises(DataError, match='at most one of proportion'):
        build_text_dataloader(loader_cfg(streams={'a': {'local': str(tmp_path / 'mds'),
                                                        'proportion': 1, 'repeat': 2}}),
                              tiny_tokenizer, 2)
    no_len = loader_cfg(local=str(tmp_path / 'mds'))
    del no_len['dataset']['max_seq_len']
    with pytest.raises(DataError, match='max_seq_len is required'):
        build_text_dataloader(no_len, tiny_tokenizer, 2)


def test_key_tables_cover_llm_foundry_keys():
    for key in ('dataset', 'drop_last', 'num_workers', 'pin_memory', 'prefetch_factor',
                'persistent_workers', 'timeout'):
        assert key in TEXT_LOADER_KEYS
    for key in ('remote', 'local', 'split', 'shuffle', 'max_seq_len', 'shuffle_seed', 'streams',
                'predownload', 'cache_limit', 'num_canonical_nodes', 'shuffle_algo',
                'shuffle_block_size', 'sampling_method', 'download_retry', 'download_timeout',
                'eos_token_id'):
        assert key in TEXT_DATASET_KEYS
    assert {'remote', 'local', 'split', 'proportion', 'repeat', 'choose'} <= set(STREAM_KEYS)


@pytest.fixture
def fresh_cache_root(monkeypatch):
    """Forget this process's run cache root so FOUNDRY_DATA_CACHE set by a test applies."""
    from foundry.data.stream import cache_dir
    monkeypatch.setattr(cache_dir, '_state', {'root': None, 'count': 0})


def test_remote_cache_dirs_are_unique_per_call(monkeypatch, tmp_path, fresh_cache_root):
    monkeypatch.setenv('FOUNDRY_DATA_CACHE', str(tmp_path))
    first = run_cache_dir('s3://bucket/data', 'train')
    second = run_cache_dir('s3://bucket/data', 'train')
    assert first != second
    assert first.startswith(str(tmp_path)) and os.path.dirname(first) == os.path.dirname(second)


def test_s3_round_trip_without_local(monkeypatch, tmp_path, tiny_tokenizer, fresh_cache_root):
    """Convert straight to s3:// and stream it back with no `local` (moto's S3 server)."""
    moto_server = pytest.importorskip('moto.server')
    boto3 = pytest.importorskip('boto3')
    server = moto_server.ThreadedMotoServer(port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f'http://{host}:{port}'
        for key, value in {'AWS_ACCESS_KEY_ID': 'test', 'AWS_SECRET_ACCESS_KEY': 'test',
                           'AWS_DEFAULT_REGION': 'us-east-1', 'S3_ENDPOINT_URL': endpoint,
                           'FOUNDRY_DATA_CACHE': str(tmp_path / 'cache')}.items():
            monkeypatch.setenv(key, value)
        boto3.client('s3', endpoint_url=endpoint).create_bucket(Bucket='bucket')

        from foundry.data.prep.convert import convert_documents
        docs = [f'remote document {i} ' * 3 for i in range(30)]
        convert_documents(docs, 's3://bucket/corpus/train', tiny_tokenizer, 12, progress=False,
                          verbose=False)
        cfg = loader_cfg(remote='s3://bucket/corpus', split='train')
        spec = build_text_dataloader(cfg, tiny_tokenizer, 4)
        got = torch.cat([b['input_ids'] for b in spec.dataloader]).reshape(-1).tolist()
        stream = []
        for doc in docs:
            stream += tiny_tokenizer(doc, add_special_tokens=False)['input_ids'] + [0]
        assert got == stream[:len(got)] and len(got) == len(stream) // 12 * 12
        local = spec.dataloader.dataset.streams[0].local
        assert local.startswith(str(tmp_path / 'cache'))
    finally:
        server.stop()
