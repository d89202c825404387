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
