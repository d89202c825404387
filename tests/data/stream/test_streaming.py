"""Streaming from a real (moto) S3 endpoint: retries, clear failures, bounded and stale caches,
shared memory of killed and live runs, and a sample order that survives a change of node count."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import boto3
import numpy as np
import pytest

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert_documents
from foundry.data.stream import shm_guard
from foundry.data.stream.text_dataset import (CANONICAL_NODES, StreamingTextDataset,
                                              default_canonical_nodes)
from tests.data.prep.test_convert import REPO, expected_stream

DOCS = [f'streamed document {i} ' * (4 + i % 9) for i in range(300)]


@pytest.fixture
def remote(s3_endpoint, make_bucket, tiny_tokenizer, request):
    """A converted dataset on the S3 endpoint with a dozen shards; yields its s3:// URL."""
    bucket = 'stream-' + request.node.name.replace('_', '-')[:40].lower().strip('-')
    make_bucket(bucket)
    url = f's3://{bucket}/ds'
    convert_documents(DOCS, url, tiny_tokenizer, 16, size_limit=3000, progress=False,
                      verbose=False)
    return url


def client(endpoint):
    return boto3.client('s3', endpoint_url=endpoint)


def first_shard_key(url, endpoint):
    bucket, prefix = url[len('s3://'):].split('/', 1)
    keys = [o['Key'] for o in client(endpoint).list_objects_v2(Bucket=bucket, Prefix=prefix)
            ['Contents'] if o['Key'].endswith('shard.00000.mds')]
    return bucket, keys[0]


def dataset(url, local, **kwargs):
    kwargs.setdefault('shuffle', False)
    return StreamingTextDataset(remote=url, local=str(local), max_seq_len=16, batch_size=1,
                                **kwargs)


def all_ids(ds):
    return sum((ds[i]['input_ids'].tolist() for i in range(len(ds))), [])


def test_object_that_appears_after_the_first_attempt_is_retried(remote, s3_endpoint, tmp_path,
                                                               tiny_tokenizer, caplog):
    bucket, key = first_shard_key(remote, s3_endpoint)
    s3 = client(s3_endpoint)
    body = s3.get_object(Bucket=bucket, Key=key)['Body'].read()
    ds = dataset(remote, tmp_path / 'cache', download_retry=3)
    s3.delete_object(Bucket=bucket, Key=key)  # after the index was read: a shard goes missing
    restore = threading.Timer(0.3, lambda: s3.put_object(Bucket=bucket, Key=key, Body=body))
    restore.start()
    with caplog.at_level(logging.DEBUG, logger='streaming.base.util'):
        got = all_ids(ds)
    restore.join()
    assert any('Attempt 1/3 failed' in r.getMessage() for r in caplog.records)
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert got == stream[:len(stream) // 16 * 16]


def test_persistent_failures_name_bucket_and_key(remote, s3_endpoint, tmp_path):
    bucket, key = first_shard_key(remote, s3_endpoint)
    with pytest.raises(DataError, match=rf"could not download s3://{bucket}/nothing-here/"
                                        r"index.json after 1 attempt\(s\): object not found "
                                        rf"\(bucket '{bucket}', key 'nothing-here/index.json', "
                                        rf"endpoint {s3_endpoint}\)"):
        dataset(f's3://{bucket}/nothing-here', tmp_path / 'a', download_retry=1)
    with pytest.raises(DataError, match=r"bucket 'no-such-bucket-x', key 'ds/index.json'"):
        dataset('s3://no-such-bucket-x/ds', tmp_path / 'b', download_retry=1)

    # A shard that is gone for good: the error surfaces from iteration (streaming's download
    # thread), as the DataError, instead of "Background thread failed".
    ds = dataset(remote, tmp_path / 'c', download_retry=1)
    client(s3_endpoint).delete_object(Bucket=bucket, Key=key)
    with pytest.raises(DataError, match=rf"could not download s3://{bucket}/{key} after 1 "
                                        rf"attempt\(s\): object not found \(bucket '{bucket}', "
                                        rf"key '{key}'"):
        for _ in ds:
            pass


def cached_bytes(local) -> int:
    """Bytes of shards in the cache now; streaming may evict a file between listing and stat."""
    total = 0
    for f in local.rglob('*.mds'):
        try:
            total += f.stat().st_size
        except FileNotFoundError:
            pass
    return total


def test_cache_limit_bounds_the_local_cache(remote, tmp_path, tiny_tokenizer):
    local = tmp_path / 'cache'
    limit = 30_000
    ds = dataset(remote, local, cache_limit=limit, predownload=4)
    assert ds.num_shards >= 10
    seen, peak = [], 0
    for i, sample in enumerate(ds):
        seen.append(sample['input_ids'].tolist())
        if i % 5 == 0:
            peak = max(peak, cached_bytes(local))
    total = sum(s.raw_data.bytes for s in ds.shards)
    assert len(seen) == len(ds)
    assert 0 < peak <= limit < total  # the whole dataset never sat in the cache at once
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert sum(seen, []) == stream[:len(stream) // 16 * 16]
    with pytest.raises(DataError, match='cache_limit is too small'):
        dataset(remote, tmp_path / 'tiny', cache_limit=3000)


def test_stale_local_cache_of_a_reconverted_remote_is_refreshed(remote, s3_endpoint, tmp_path,
                                                                tiny_tokenizer):
    local = tmp_path / 'cache'
    first = all_ids(dataset(remote, local))
    new_docs = [f'reconverted text {i} ' * 6 for i in range(120)]
    bucket, prefix = remote[len('s3://'):].split('/', 1)
    s3 = client(s3_endpoint)
    for obj in s3.list_objects_v2(Bucket=bucket, Prefix=prefix)['Contents']:
        s3.delete_object(Bucket=bucket, Key=obj['Key'])
    convert_documents(new_docs, remote, tiny_tokenizer, 16, size_limit=3000, progress=False,
                      verbose=False)
    second = all_ids(dataset(remote, local))
    stream = expected_stream(tiny_tokenizer, new_docs)
    assert second == stream[:len(stream) // 16 * 16] and second != first


HOLD = r'''
import os, sys, time, signal
from foundry.data.stream.text_dataset import StreamingTextDataset
ds = StreamingTextDataset(remote=sys.argv[1], local=sys.argv[2], max_seq_len=16, batch_size=1)
print(ds._shm_prefix_int, flush=True)
if sys.argv[3] == 'die':
    # The whole process group, so Python's resource tracker cannot unlink anything either:
    # no cleanup of any kind, as when a job's cgroup is OOM-killed or a node is preempted.
    os.killpg(os.getpgid(0), signal.SIGKILL)
time.sleep(120)
'''


def hold(url, local, mode):
    return subprocess.Popen([sys.executable, '-c', HOLD, url, str(local), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, 'PYTHONPATH': REPO, 'TMPDIR': tempfile.gettempdir()})


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Owner locks and streaming filelocks in a private temp dir, so that foundry processes
    of other users of this machine (which clean dead prefixes they own locks for) leave the
    test's killed run alone."""
    folder = tmp_path / 'tmp'
    folder.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(folder))
    return folder


def test_shared_memory_left_by_a_killed_run_does_not_block_the_next(remote, tmp_path,
                                                                    tiny_tokenizer, private_tmp):
    local = tmp_path / 'cache'
    proc = hold(remote, local, 'die')
    prefix = int(proc.stdout.readline())
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert os.path.exists(f'/dev/shm/{prefix:06d}_locals')  # left behind by the killed run
    assert shm_guard.prefix_in_use(prefix) is False
    ds = dataset(remote, local)  # same remote, same local: streaming alone would refuse it
    stream = expected_stream(tiny_tokenizer, DOCS)
    assert all_ids(ds) == stream[:len(stream) // 16 * 16]


def test_local_folder_of_a_live_run_is_a_clear_error(remote, tmp_path, private_tmp):
    local = tmp_path / 'cache'
    proc = hold(remote, local, 'live')
    try:
        prefix = int(proc.stdout.readline())
        with pytest.raises(DataError, match=rf'another job on this machine is using the same '
                                            rf'`local` folder \({local}; shared-memory prefix '
                                            rf'{prefix:06d} held by a live foundry run\)'):
            dataset(remote, local)
        # A different local (or none) is fine while the other run is alive.
        assert len(dataset(remote, tmp_path / 'mine')) > 0
    finally:
        proc.kill()
        proc.wait()


def test_default_canonical_nodes_depend_on_data_not_on_nodes(caplog):
    assert CANONICAL_NODES == 128
    for nodes in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
        assert default_canonical_nodes([10**7, 10**6], nodes) == 128
    assert default_canonical_nodes([1000], 1) == 8 == default_canonical_nodes([1000], 4)
    assert default_canonical_nodes([40], 1) == 1
    with caplog.at_level(logging.WARNING):
        assert default_canonical_nodes([10**7], 55) == 110  # 440 GPUs: a multiple of 55
    assert 'sample order differs from runs on other node counts' in caplog.text


def global_batches(ncn, nodes, ranks_per_node, global_batch, shard_sizes, seed=9176):
    """Per training step, the set of sample ids the whole cluster reads (streaming's own
    partition and py1e shuffle, exactly as StreamingDataset composes them)."""
    from streaming.base.partition import get_partitions
    from streaming.base.shuffle import get_shuffle

    num_samples = int(sum(shard_sizes))
    per_device = global_batch // (nodes * ranks_per_node)
    ids = get_partitions('relaxed', num_samples, ncn, nodes, ranks_per_node, 1, per_device)
    block = max(4_000_000 // ncn, 1 << 18)
    shuffle = get_shuffle('py1e', np.array(shard_sizes), ncn, seed, 0, block)
    ids = np.where(ids != -1, shuffle[ids], -1)
    steps = ids.shape[3]
    return [frozenset(ids[:, :, 0, step, :].reshape(-1).tolist()) - {-1} for step in range(steps)]


def test_sample_order_is_identical_for_16_to_256_ranks_with_the_default():
    shard_sizes = [2048] * 150  # ~300k samples
    gbs = 512
    ncn = default_canonical_nodes([sum(shard_sizes)], 1)
    reference = global_batches(ncn, 2, 8, gbs, shard_sizes)
    for nodes in (4, 8, 16, 32):  # 32 to 256 ranks at 8 per node
        assert global_batches(ncn, nodes, 8, gbs, shard_sizes) == reference
    # streaming's own default (num_canonical_nodes = number of nodes) reorders the data.
    assert global_batches(4, 4, 8, gbs, shard_sizes) != global_batches(8, 8, 8, gbs, shard_sizes)
