"""Train from object storage: a 70/30 two-stream mixture on a real S3 endpoint (moto), two
processes, through the real launcher; concurrent runs; a run after a killed one."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from foundry.data.stream import shm_guard
from foundry.loggers.jsonl import read_metrics
from tests.e2e.conftest import REPO

pytestmark = pytest.mark.slow

YAML = os.path.join(REPO, 'tests', 'fixtures', 's3_mixture.yaml')
BUCKET = 'e2e-mixture'


def tagged_corpora(tiny_data: str) -> dict[str, list[str]]:
    """alpha: demo text with every digit removed; beta: only digits. A sample's tokens tell
    which stream it came from (decoded, it contains a digit iff it is beta)."""
    alpha = []
    for name in ('english', 'code'):
        with open(os.path.join(tiny_data, 'corpus', f'{name}.jsonl'), encoding='utf-8') as f:
            for line in f:
                text = re.sub(r'\d', '', json.loads(line)['text'])
                alpha.extend(p for p in text.split('\n\n') if p.strip())
    rng = random.Random(5)
    beta = [' '.join(str(rng.randint(0, 999)) for _ in range(rng.randint(5, 30)))
            for _ in range(2500)]
    return {'alpha': alpha, 'beta': beta}


@pytest.fixture(scope='module')
def s3_mixture(s3_endpoint, tiny_data, tmp_path_factory):
    """Both streams converted with the CLI straight to s3://BUCKET/{alpha,beta}/train."""
    import boto3

    boto3.client('s3', endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
    work = tmp_path_factory.mktemp('s3_mixture')
    sizes = {}
    for name, docs in tagged_corpora(tiny_data).items():
        path = work / f'{name}.jsonl'
        path.write_text(''.join(json.dumps({'text': d}) + '\n' for d in docs))
        proc = subprocess.run(
            [sys.executable, os.path.join(REPO, 'data_prep', 'convert_dataset_json.py'),
             '--path', str(path), '--out_root', f's3://{BUCKET}/{name}', '--split', 'train',
             '--concat_tokens', '32', '--tokenizer', os.path.join(tiny_data, 'tokenizer.json'),
             '--no_progress'], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sizes[name] = int(re.search(r'wrote ([\d,]+) samples', proc.stdout).group(1)
                          .replace(',', ''))
    return sizes


def launch_yaml(args: list[str], env: dict, **popen) -> subprocess.Popen:
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', '2', os.path.join(REPO, 'launch', 'train.py'), YAML, *args]
    return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, 'PYTHONUNBUFFERED': '1', **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def overrides(tiny_data: str, run_dir, *extra: str) -> list[str]:
    return [f'variables.data_root={tiny_data}', f'variables.remote_root=s3://{BUCKET}',
            f'run_folder={run_dir}/run', *extra]


def traced(trace_dir) -> dict[int, list[tuple[int, str]]]:
    """rank -> [(sample id, stream name)] in the order the rank's loader read them."""
    out: dict[int, list[tuple[int, str]]] = {}
    if not os.path.isdir(trace_dir):
        return out
    for name in sorted(os.listdir(trace_dir)):
        rank = int(re.match(r'samples\.rank(\d+)\.', name).group(1))
        with open(os.path.join(trace_dir, name)) as f:
            out.setdefault(rank, []).extend((int(a), b) for a, b in
                                            (line.split('\t') for line in f.read().split('\n')
                                             if line))
    return out


def test_two_process_training_from_s3_draws_the_configured_70_30_mixture(
        s3_mixture, tiny_data, tmp_path):
    trace = tmp_path / 'trace'
    proc = launch_yaml(overrides(tiny_data, tmp_path), {'FOUNDRY_SAMPLE_LOG': str(trace),
                                                        'FOUNDRY_DATA_CACHE': str(tmp_path / 'c')})
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:] + err[-4000:]
    metrics = read_metrics(str(tmp_path / 'run' / 'metrics.jsonl'))
    losses = [metrics[b]['loss/train/total'] for b in sorted(metrics)
              if 'loss/train/total' in metrics[b]]
    assert len(losses) == 25 and all(l == l for l in losses)  # 25 batches x 40 = 1,000 samples

    reads = traced(trace)
    assert sorted(reads) == [0, 1]
    first = reads[0][:500] + reads[1][:500]  # each rank's share of the first 25 global batches
    # (A stream whose share of an epoch exceeds its size is upsampled, so ids may repeat.)
    assert len(first) == 1000
    counts = Counter(stream for _, stream in first)
    shares = {name: counts[name] / len(first) for name in ('alpha', 'beta')}
    print(f'\nobserved stream shares over the first {len(first)} training samples (2 ranks): '
          f'alpha {shares["alpha"]:.3f} (configured 0.7), beta {shares["beta"]:.3f} '
          f'(configured 0.3); stream sizes {s3_mixture} samples')
    assert abs(shares['alpha'] - 0.7) < 0.05 and abs(shares['beta'] - 0.3) < 0.05

    # The recorded stream of every sample agrees with its content (read back independently).
    from foundry.data.stream.text_dataset import StreamingTextDataset
    from foundry.data.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(os.path.join(tiny_data, 'tokenizer.json'))
    streams_cfg = {'alpha': 0.7, 'beta': 0.3}
    from foundry.data.stream.text_dataset import FoundryStream
    ds = StreamingTextDataset(
        streams=[FoundryStream(name=n, remote=f's3://{BUCKET}/{n}', local=str(tmp_path / n),
                               split='train', proportion=p) for n, p in streams_cfg.items()],
        max_seq_len=32, batch_size=20, shuffle=False)
    for sample_id, stream in first:
        text = tokenizer.decode(ds[sample_id]['input_ids'], skip_special_tokens=True)
        assert ('beta' if re.search(r'\d', text) else 'alpha') == stream, (sample_id, text)


def test_two_concurrent_runs_on_one_machine_same_remote_no_local(s3_mixture, tiny_data,
                                                                 tmp_path):
    caches = tmp_path / 'caches'
    runs = [launch_yaml(overrides(tiny_data, tmp_path / f'run{i}', 'max_duration=2ba',
                                  'global_train_batch_size=8', 'device_train_microbatch_size=4'),
                        {'FOUNDRY_DATA_CACHE': str(caches)}) for i in range(2)]
    results = [p.communicate(timeout=300) for p in runs]
    for proc, (out, err) in zip(runs, results):
        assert proc.returncode == 0, out[-2000:] + err[-4000:]
        assert 'FileExistsError' not in err and 'Reused local directory' not in err
    for i in range(2):
        metrics = read_metrics(str(tmp_path / f'run{i}' / 'run' / 'metrics.jsonl'))
        assert sum('loss/train/total' in m for m in metrics.values()) == 2
    assert not any(os.scandir(caches))  # each run's private cache was removed at exit


def test_a_run_after_a_killed_run_with_the_same_local_cache(s3_mixture, tiny_data, tmp_path,
                                                            monkeypatch):
    cache = tmp_path / 'cache'
    trace = tmp_path / 'trace'
    # Owner locks in a private temp dir: foundry processes of other users of this machine clean
    # dead runs they can see, and must not clean this one before the test looks at it.
    private = tmp_path / 'tmp'
    private.mkdir()
    monkeypatch.setenv('TMPDIR', str(private))
    monkeypatch.setattr('tempfile.tempdir', str(private))
    args = overrides(tiny_data, tmp_path, f'train_loader.dataset.streams.alpha.local={cache}/a',
                     f'train_loader.dataset.streams.beta.local={cache}/b',
                     'max_duration=3ba', 'global_train_batch_size=8',
                     'device_train_microbatch_size=4')
    first = launch_yaml([*args, 'max_duration=1000ba'], {'FOUNDRY_SAMPLE_LOG': str(trace)},
                        start_new_session=True)
    locals_ = [os.path.abspath(f'{cache}/{s}/train') for s in 'ab']
    deadline = time.time() + 240
    # Reading has started: the run registered its shared memory and filled its cache.
    while not (shm_guard.conflicting_prefixes(locals_) and traced(trace)):
        assert first.poll() is None, first.communicate()[1][-4000:]
        assert time.time() < deadline, 'first run did not start reading data'
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the whole launch, like an OOM kill or a preemption
    first.communicate()
    stale = shm_guard.conflicting_prefixes(locals_)
    assert stale, 'the killed run left no shared memory behind (nothing to test)'

    second = launch_yaml(args, {})
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, out[-2000:] + err[-4000:]
    metrics = read_metrics(str(tmp_path / 'run' / 'metrics.jsonl'))
    assert max(metrics) >= 3
    assert not any(p in shm_guard.conflicting_prefixes(locals_) for p in stale)
