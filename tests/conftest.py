"""Fixtures shared across the suite: a real S3 endpoint (moto's HTTP server) on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def pytest_report_header(config):
    """The stack's versions at the top of every run, so a log says what it ran on."""
    from foundry.stack_report import stack_line

    return stack_line(os.environ.get('FOUNDRY_STACK'))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def s3_endpoint():
    """Start `python -m moto.server` and point boto3 (and child processes) at it.

    Yields the endpoint URL. Tests create their own buckets (names need 3+ characters)
    with `make_bucket`. Environment variables are set for the whole session so that the
    composer launcher's child processes inherit them.
    """
    port = _free_port()
    url = f'http://127.0.0.1:{port}'
    server = subprocess.Popen([sys.executable, '-m', 'moto.server', '-H', '127.0.0.1', '-p', str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except Exception:
            if time.time() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError('moto S3 server did not start')
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in ('S3_ENDPOINT_URL', 'AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY', 'AWS_DEFAULT_REGION')}
    os.environ.update({'S3_ENDPOINT_URL': url, 'AWS_ACCESS_KEY_ID': 'testing', 'AWS_SECRET_ACCESS_KEY': 'testing',
                       'AWS_DEFAULT_REGION': 'us-east-1'})
    try:
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def make_bucket(s3_endpoint):
    """make_bucket(name) -> 's3://name', creating it on the test endpoint."""
    import boto3

    client = boto3.client('s3', endpoint_url=s3_endpoint)

    def create(name: str) -> str:
        client.create_bucket(Bucket=name)
        return f's3://{name}'

    return create



@pytest.fixture
def no_process_group():
    """Start the test with no torch.distributed group in this process.

    Composer's Trainer, run in-process by earlier tests, leaves its 1-rank group up (it never
    destroys it). Tests that build their own group, or fake RANK, take that one down first
    instead of skipping, so they run in the full suite too. Not autouse: module-scoped fixtures
    elsewhere keep their own groups across tests.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    yield


# mosaicml-streaming registers every SharedMemory it opens with atexit (its cleanup at exit), which keeps
# the object alive, and with it one open file descriptor per segment, until the process ends. In one long
# pytest process with hundreds of datasets that passes the open-files limit (Errno 24). The mapping does
# not need the descriptor once made, so it is closed after each test; streaming's cleanup at exit then
# finds it closed (multiprocessing's SharedMemory.close skips a descriptor of -1).
_STREAMING_SHMS: list = []


def _track_streaming_shared_memory() -> None:
    try:
        from streaming.base.shared import memory
    except ImportError:
        return
    original = memory.SharedMemory.__init__
    if getattr(original, '_foundry_tracked', False):
        return

    def tracked(self, *args, **kwargs):
        original(self, *args, **kwargs)
        _STREAMING_SHMS.append(self)

    tracked._foundry_tracked = True
    memory.SharedMemory.__init__ = tracked


_track_streaming_shared_memory()


@pytest.fixture(autouse=True)
def _close_streaming_shared_memory_descriptors():
    yield
    while _STREAMING_SHMS:
        wrapper = _STREAMING_SHMS.pop()
        for shm in {id(s): s for s in [getattr(wrapper, 'shm', None), *getattr(wrapper, 'created_shms', []),
                                       *getattr(wrapper, 'opened_shms', [])] if s is not None}.values():
            fd = getattr(shm, '_fd', -1)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                shm._fd = -1
