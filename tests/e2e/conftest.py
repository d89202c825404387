"""Shared pieces for end-to-end runs: a tiny corpus, its tokenizer, and the real launcher."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_YAML = os.path.join(REPO, 'tests', 'fixtures', 'tiny.yaml')


@pytest.fixture(scope='session')
def tiny_data(tmp_path_factory) -> str:
    """A two-stream demo corpus with a 512-token BPE tokenizer, cut into 32-token MDS samples."""
    from foundry.data.prep.demo_corpus import build_demo_data

    root = str(tmp_path_factory.mktemp('tiny_data'))
    build_demo_data(root, seq_len=32, max_bytes_per_stream=150_000, vocab_size=512, verbose=False)
    return root


def launch(args: list[str], nproc: int = 2, timeout: int = 600, env: dict | None = None,
           cwd: str | None = None) -> subprocess.CompletedProcess:
    """`composer -n NPROC launch/train.py tests/fixtures/tiny.yaml ARGS`, the way users run it."""
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', str(nproc), os.path.join(REPO, 'launch', 'train.py'), TINY_YAML, *args]
    full_env = {**os.environ, 'PYTHONUNBUFFERED': '1', **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env, cwd=cwd or REPO)


def tiny_overrides(data_root: str, run_dir: str, *extra: str) -> list[str]:
    return [
        f'variables.data_root={data_root}',
        f'train_loader.dataset.local={data_root}/english',
        f'run_folder={run_dir}/run',
        f'save_folder={run_dir}/checkpoints',
        *extra,
    ]
