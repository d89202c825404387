"""Uploads with retries against real endpoints (moto, and a port nobody listens on), and the fault switch."""

from __future__ import annotations

import os
import socket

import boto3
import pytest

from foundry.checkpoint import faults
from foundry.checkpoint.store import UploadError, download_prefix, object_store_for, upload_file, upload_folder


def test_folder_round_trip(tmp_path, make_bucket, s3_endpoint):
    bucket = make_bucket('store-test')
    src = tmp_path / 'src'
    (src / 'sub').mkdir(parents=True)
    (src / 'a.json').write_text('{}')
    (src / 'sub' / 'b.bin').write_bytes(os.urandom(1000))
    written = upload_folder(str(src), f'{bucket}/x/y')
    assert sorted(written) == [f'{bucket}/x/y/a.json', f'{bucket}/x/y/sub/b.bin']
    got = download_prefix(f'{bucket}/x/y', str(tmp_path / 'dst'))
    assert len(got) == 2 and (tmp_path / 'dst' / 'sub' / 'b.bin').read_bytes() == (src / 'sub' / 'b.bin').read_bytes()


def test_upload_retries_then_reports_with_the_local_copy(tmp_path, monkeypatch):
    with socket.socket() as s:  # a port with nothing behind it: connection refused
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    monkeypatch.setenv('S3_ENDPOINT_URL', f'http://127.0.0.1:{port}')
    monkeypatch.setenv('AWS_ACCESS_KEY_ID', 't')
    monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', 't')
    store, key = object_store_for('s3://nowhere/run/file.json')
    sends = []
    store.client.meta.events.register('before-send.s3.*', lambda **kw: sends.append(1))
    local = tmp_path / 'file.json'
    local.write_text('{}')
    waits = []
    with pytest.raises(UploadError) as err:
        upload_file(store, str(local), key, 's3://nowhere/run/file.json', attempts=3, first_wait_s=0.5,
                    sleep=waits.append)
    message = str(err.value)
    assert 'upload of' in message and 'to s3://nowhere/run/file.json failed 3 times' in message
    assert f'The local copy is kept at {local}' in message and local.exists()
    assert waits == [0.5, 1.0]  # exponential backoff between foundry's attempts
    assert len(sends) == 3 * 3  # and boto3 itself tries each request 3 times (adaptive mode)


def test_upload_recovers_from_a_transient_failure(tmp_path, make_bucket, s3_endpoint):
    bucket = make_bucket('store-flaky')
    store, key = object_store_for(f'{bucket}/k')
    calls = []
    real = store.upload_object

    def flaky(name, filename):
        calls.append(name)
        if len(calls) == 1:
            raise ConnectionError('reset by peer')
        return real(name, filename)

    store.upload_object = flaky
    local = tmp_path / 'f'
    local.write_text('x')
    upload_file(store, str(local), key, first_wait_s=0, sleep=lambda s: None)
    assert len(calls) == 2
    assert boto3.client('s3', endpoint_url=s3_endpoint).get_object(Bucket='store-flaky', Key='k')['Body'].read() == b'x'


def test_fault_switch(monkeypatch):
    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.install_from_env() is False
    monkeypatch.setenv(faults.ENV, 'explode:3')
    with pytest.raises(ValueError, match='expected hang_in_save:<batch>'):
        faults.install_from_env()
