"""Per-run cache folders: unique per run, and the caches of killed runs are removed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from foundry.data.stream import cache_dir
from tests.data.prep.test_convert import REPO

OWN_CACHE = r'''
import os, sys, time
from foundry.data.stream.cache_dir import run_cache_dir
path = run_cache_dir('s3://bucket/data', 'train')
os.makedirs(path)
open(os.path.join(path, 'shard.00000.mds'), 'wb').write(b'x' * 1000)
print(path, flush=True)
time.sleep(120)
'''


def start(tmp_path):
    env = {**os.environ, 'PYTHONPATH': REPO, 'FOUNDRY_DATA_CACHE': str(tmp_path / 'caches')}
    env.pop('LOCAL_RANK', None)
    proc = subprocess.Popen([sys.executable, '-c', OWN_CACHE], env=env, stdout=subprocess.PIPE,
                            text=True)
    path = proc.stdout.readline().strip()
    return proc, os.path.dirname(path)  # the run's cache root


def _shards(root):
    return [f for _, _, files in os.walk(root) for f in files if f.endswith('.mds')]


def kill(proc):
    proc.send_signal(signal.SIGKILL)  # no atexit: its cache stays behind
    proc.wait()


def test_cache_of_a_killed_run_is_removed_and_a_live_one_kept(tmp_path, monkeypatch):
    first, first_root = start(tmp_path)
    kill(first)
    assert _shards(first_root)
    live, live_root = start(tmp_path)  # a new run removes the killed run's cache
    try:
        assert not os.path.exists(first_root)
        second, second_root = start(tmp_path)
        kill(second)
        assert os.path.isdir(second_root)
        monkeypatch.setenv('FOUNDRY_DATA_CACHE', str(tmp_path / 'caches'))
        monkeypatch.setattr(cache_dir, '_state', {'root': None, 'count': 0})
        mine = cache_dir.run_cache_dir('s3://bucket/data', 'train')  # and so does this one
        assert not os.path.exists(second_root)
        assert _shards(live_root)  # alive: kept
        assert os.path.dirname(mine) not in (first_root, second_root, live_root)
    finally:
        kill(live)
