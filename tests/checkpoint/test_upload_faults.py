"""The object store disappears in the middle of a checkpoint upload (real runs in this process, tiny.yaml,
saving to a moto S3 server behind a TCP proxy that the test cuts).

A first run lands checkpoint ba2 in the store and moves the store's pointer to it. The same command then
resumes and trains on; while checkpoint ba4 is being uploaded (one of its files landed, the next one is on
the wire) the endpoint goes away. The upload is retried with backoff, the run stops with one line naming
bucket and key, and the store still holds ba2 whole, byte for byte, as its latest checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from foundry.checkpoint.store import UploadError
from tests.checkpoint.test_runs_inprocess import train_here
from tests.e2e.conftest import tiny_data  # noqa: F401  (the corpus fixture)

BUCKET = 'ckpt-fault'


class CuttingProxy:
    """Forwards a local port to the moto server until `cut_at` requests naming `marker` have been seen: the
    last of them is where the endpoint disappears (every open connection is reset, the port closes)."""

    def __init__(self, upstream: int, marker: bytes, cut_at: int) -> None:
        self.upstream, self.marker, self.cut_at = upstream, marker, cut_at
        self.server = socket.create_server(('127.0.0.1', 0))
        self.port = self.server.getsockname()[1]
        self.seen: list[bytes] = []
        self.cut = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.cut.is_set():
            try:
                client, _ = self.server.accept()
                upstream = socket.create_connection(('127.0.0.1', self.upstream))
            except OSError:
                return
            self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, request: bool) -> None:
        try:
            while not self.cut.is_set():
                data = src.recv(65536)
                if not data:
                    break
                first_line = data.split(b'\r\n', 1)[0]
                if request and self.marker in first_line and first_line.split(b' ', 1)[0] == b'PUT':
                    with self._lock:
                        self.seen.append(first_line)
                        if len(self.seen) >= self.cut_at:
                            self._cut()
                            return
                dst.sendall(data)
        except OSError:
            pass

    def _cut(self) -> None:
        self.cut.set()
        self.server.close()
        for s in self._open:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')  # reset
                s.close()
            except OSError:
                pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _start_moto(port: int) -> subprocess.Popen:
    moto = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(300):
        try:
            socket.create_connection(('127.0.0.1', port), timeout=0.2).close()
            return moto
        except OSError:
            time.sleep(0.2)
    moto.kill()
    raise RuntimeError('moto server did not start')


def test_endpoint_gone_mid_upload_is_retried_then_one_line_and_the_previous_checkpoint_stays_latest(
        tiny_data, tmp_path, monkeypatch):  # noqa: F811
    import boto3

    port = _free_port()
    moto = _start_moto(port)
    try:
        store = boto3.client('s3', endpoint_url=f'http://127.0.0.1:{port}', aws_access_key_id='t',
                             aws_secret_access_key='t', region_name='us-east-1')
        store.create_bucket(Bucket=BUCKET)
        # ba4 has two files (.metadata and one shard): the second PUT is where the endpoint goes.
        proxy = CuttingProxy(port, marker=b'/ep0-ba4/', cut_at=2)
        for k, v in {'S3_ENDPOINT_URL': f'http://127.0.0.1:{proxy.port}', 'AWS_ACCESS_KEY_ID': 't',
                     'AWS_SECRET_ACCESS_KEY': 't', 'AWS_DEFAULT_REGION': 'us-east-1', 'FOUNDRY_UPLOAD_POLL_S': '0.5',
                     'FOUNDRY_UPLOAD_ATTEMPTS': '3', 'FOUNDRY_UPLOAD_FIRST_WAIT_S': '0.2',
                     'AWS_MAX_ATTEMPTS': '1'}.items():  # boto3's own retries (seconds of backoff each) off
            monkeypatch.setenv(k, v)
        save = f'save_folder=s3://{BUCKET}/{{run_name}}/checkpoints'

        train_here(tiny_data, str(tmp_path), save, 'max_duration=2ba')
        pointer_key = 'tiny/checkpoints/latest-rank0.pt.symlink'
        assert store.get_object(Bucket=BUCKET, Key=pointer_key)['Body'].read().decode().endswith('ep0-ba2')
        landed = {o['Key']: o['ETag'] for o in store.list_objects_v2(Bucket=BUCKET,
                                                                       Prefix='tiny/checkpoints/ep0-ba2/')['Contents']}
        assert sorted(k.rsplit('/', 1)[1] for k in landed) == ['.metadata', '__0_0.distcp']
        bodies = {k: store.get_object(Bucket=BUCKET, Key=k)['Body'].read() for k in landed}

        with pytest.raises(UploadError) as err:
            train_here(tiny_data, str(tmp_path), save, 'max_duration=4ba')
        assert proxy.cut.is_set() and len(proxy.seen) == 2, proxy.seen
        message = str(err.value)
        print(f'cut during: {proxy.seen[-1].decode()}\n{message}')

        # One line, naming bucket and key, after the retries.
        assert '\n' not in message
        assert message.startswith(f'checkpoint upload failed: s3://{BUCKET}/tiny/checkpoints/ep0-ba4/')
        assert 'could not be written (3 attempts with backoff; last error: EndpointConnectionError' in message
        assert "latest-rank0.pt still names what it named when this run started" in message
        assert 'run the same command to resume' in message

        # The store, read past the proxy: ba4 is partial, the pointer still names ba2, and ba2 is untouched.
        partial = store.list_objects_v2(Bucket=BUCKET, Prefix='tiny/checkpoints/ep0-ba4/').get('Contents', [])
        assert len(partial) == 1, partial  # one file of ba4 landed before the endpoint went
        assert store.get_object(Bucket=BUCKET, Key=pointer_key)['Body'].read().decode().endswith('ep0-ba2')
        still = {o['Key']: o['ETag'] for o in store.list_objects_v2(Bucket=BUCKET,
                                                                      Prefix='tiny/checkpoints/ep0-ba2/')['Contents']}
        assert still == landed
        assert {k: store.get_object(Bucket=BUCKET, Key=k)['Body'].read() for k in landed} == bodies
        # The run's own checkpoints stay on local disk, whole, and the line says where.
        local = message.split('on local disk in ')[1].split(': ')[0]
        assert 'ep0-ba4' in os.listdir(local)
    finally:
        moto.kill()
        moto.wait()
