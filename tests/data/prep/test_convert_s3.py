"""Conversion straight to and from s3:// on a real (moto) S3 endpoint, including a resume."""

from __future__ import annotations

import gzip
import io
import json

import boto3
import pytest

from foundry.data.errors import DataError
from foundry.data.prep.convert import convert
from foundry.data.prep.sources import JsonSource, TextSource
from foundry.data.stream.text_dataset import StreamingTextDataset
from tests.data.prep.test_convert import load_script
from tests.data.prep.test_convert_restart import shard_files
from tests.data.prep.test_convert_sources import DOCS, stream_of


def keys(endpoint, bucket, prefix=''):
    client = boto3.client('s3', endpoint_url=endpoint)
    return sorted(o['Key'] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix)
                  .get('Contents', []))


def put(endpoint, bucket, key, data: bytes):
    boto3.client('s3', endpoint_url=endpoint).put_object(Bucket=bucket, Key=key, Body=data)


def jsonl_bytes(docs):
    return ''.join(json.dumps({'text': d}) + '\n' for d in docs).encode()


def read_remote(remote, split, local, seq=16):
    ds = StreamingTextDataset(remote=remote, split=split, local=str(local), max_seq_len=seq,
                              shuffle=False, batch_size=1)
    return sum((ds[i]['input_ids'].tolist() for i in range(len(ds))), [])


def test_cli_writes_straight_to_s3(s3_endpoint, make_bucket, tmp_path, tiny_tokenizer_path):
    make_bucket('conv-out')
    (tmp_path / 'in.jsonl').write_bytes(jsonl_bytes(DOCS))
    main = load_script('convert_dataset_json.py').main
    common = ['--path', str(tmp_path / 'in.jsonl'), '--concat_tokens', '16', '--tokenizer',
              tiny_tokenizer_path, '--no_progress', '--compression', 'zstd']
    assert main([*common, '--out_root', 's3://conv-out/corpus']) == 0
    assert main([*common, '--out_root', str(tmp_path / 'local')]) == 0
    got = keys(s3_endpoint, 'conv-out')
    assert 'corpus/train/index.json' in got and 'corpus/train/conversion.json' in got
    assert 'corpus/train/part-00000/done.json' in got
    assert any(k.startswith('corpus/train/part-00000/shard.') and k.endswith('.mds.zstd')
               for k in got)
    assert read_remote('s3://conv-out/corpus', 'train', tmp_path / 'cache') == \
        stream_of(tmp_path / 'local' / 'train')


def test_text_and_gzipped_jsonl_inputs_from_s3(s3_endpoint, make_bucket, tmp_path,
                                               tiny_tokenizer):
    make_bucket('conv-in')
    for i in range(5):
        put(s3_endpoint, 'conv-in', f'texts/{i:02d}.txt', DOCS[i].encode())
    put(s3_endpoint, 'conv-in', 'texts/skip.md', b'not a .txt file')
    put(s3_endpoint, 'conv-in', 'texts/bad.txt', b'invalid \xff byte')
    with pytest.warns(UserWarning, match='invalid UTF-8 in 1 input file'):
        summary = convert(TextSource('s3://conv-in/texts'), str(tmp_path / 'a'), tiny_tokenizer,
                          8, progress=False, verbose=False)
    assert summary.documents == 6
    assert summary.invalid_utf8 == {'s3://conv-in/texts/bad.txt': [1, 8]}

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode='wb') as f:
        f.write(jsonl_bytes(DOCS))
    put(s3_endpoint, 'conv-in', 'json/data.jsonl.gz', buf.getvalue())
    convert(JsonSource('s3://conv-in/json/'), str(tmp_path / 'b'), tiny_tokenizer, 16,
            progress=False, verbose=False)
    (tmp_path / 'plain.jsonl').write_bytes(jsonl_bytes(DOCS))
    convert(JsonSource(str(tmp_path / 'plain.jsonl')), str(tmp_path / 'c'), tiny_tokenizer, 16,
            progress=False, verbose=False)
    assert stream_of(tmp_path / 'b') == stream_of(tmp_path / 'c')

    with pytest.raises(DataError, match=r"no JSON / JSON Lines files .* under 's3://conv-in/none'"):
        JsonSource('s3://conv-in/none').parts()
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        JsonSource('s3://no-such-bucket/x').parts()


def test_interrupted_s3_conversion_resumes(s3_endpoint, make_bucket, tmp_path, tiny_tokenizer):
    make_bucket('conv-resume')
    files = {name: DOCS[i::4] for i, name in enumerate('abcd')}
    for name, docs in files.items():
        extra = b'{"oops": 1}\n' if name == 'c' else b''
        put(s3_endpoint, 'conv-resume', f'in/{name}.jsonl', jsonl_bytes(docs) + extra)
    out = 's3://conv-resume/out'
    with pytest.raises(DataError, match='2 of 4 parts are complete and kept'):
        convert(JsonSource('s3://conv-resume/in', part_bytes=1), out, tiny_tokenizer, 16,
                progress=False, verbose=False)
    assert 'out/part-00001/done.json' in keys(s3_endpoint, 'conv-resume', 'out/')
    assert 'out/index.json' not in keys(s3_endpoint, 'conv-resume', 'out/')

    put(s3_endpoint, 'conv-resume', 'in/c.jsonl', jsonl_bytes(files['c']))
    summary = convert(JsonSource('s3://conv-resume/in', part_bytes=1), out, tiny_tokenizer, 16,
                      progress=False, verbose=False)
    assert summary.parts_reused == 2 and summary.documents == len(DOCS)

    local = tmp_path / 'in'
    local.mkdir()
    for name, docs in files.items():
        (local / f'{name}.jsonl').write_bytes(jsonl_bytes(docs))
    convert(JsonSource(str(local), part_bytes=1), str(tmp_path / 'ref'), tiny_tokenizer, 16,
            progress=False, verbose=False)
    assert read_remote(out, None, tmp_path / 'cache') == stream_of(tmp_path / 'ref')
    assert len(shard_files(tmp_path / 'ref')) > 0
