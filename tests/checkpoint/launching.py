"""Launch real training jobs (composer -n N launch/train.py tests/fixtures/tiny.yaml), kill them, read them back.

Shared by the kill/resume, S3, elastic and export tests. `reference_run` is the uninterrupted
2-process run every other run is compared with; it is computed once per pytest process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

from foundry.loggers.jsonl import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_YAML = os.path.join(REPO, 'tests', 'fixtures', 'tiny.yaml')
COMPOSER = os.path.join(os.path.dirname(sys.executable), 'composer')

# Every launched run: 8 batches, a checkpoint every 2, dropout on (so the RNG state matters for the
# losses), the per-batch data fingerprint (data/token_sum) in metrics.jsonl, and a 4x MLP (the one
# width transformers' native MPT class can load; tiny.yaml has 2x).
BATCHES = 8
COMMON = [f'max_duration={BATCHES}ba', 'save_interval=2ba', 'model.resid_pdrop=0.1', 'model.expansion_ratio=4']
ENV = {'FOUNDRY_DATA_FINGERPRINT': '1', 'FOUNDRY_UPLOAD_POLL_S': '1', 'PYTHONUNBUFFERED': '1'}


def overrides(data_root: str, run_dir: str, save_folder: Optional[str] = None, *extra: str) -> list[str]:
    """The command line of every launched run. Runs start from the same Hugging Face MPT folder
    (`load_path`, weights only), so the launcher tests also load HF weights into 2-rank FSDP2 shards;
    a run that finds its own checkpoint resumes that instead."""
    return [
        f'variables.data_root={data_root}',
        f'train_loader.dataset.local={data_root}/english',
        f'run_folder={run_dir}/run',
        f'save_folder={save_folder or os.path.join(run_dir, "checkpoints")}',
        f'load_path={hf_init(data_root)}',
        *COMMON,
        *extra,
    ]


_HF_INIT: dict[str, str] = {}


def hf_init(data_root: str) -> str:
    """A Hugging Face folder (mosaicml/mpt-7b layout: config.json with attn_config, weights sharded with an
    index) holding a freshly initialised model of the launched runs' architecture."""
    if data_root not in _HF_INIT:
        import torch

        from foundry.config.load import load_config
        from foundry.models.mpt.configuration import MPTConfig
        from foundry.models.mpt.modeling import MPTForCausalLM

        cfg = load_config(TINY_YAML, [f'variables.data_root={data_root}', *COMMON])
        torch.manual_seed(1234)
        model = MPTForCausalLM(MPTConfig(**{k: v for k, v in cfg.model.items() if k != 'name'}))
        folder = os.path.join(os.path.dirname(os.path.abspath(data_root)), 'hf-init-mpt-tiny')  # pytest's tmp
        model.save_pretrained(folder, max_shard_size='40KB')
        _HF_INIT[data_root] = folder
    return _HF_INIT[data_root]


class Job:
    """One `composer -n N launch/train.py ...` in its own process group, output to a log file."""

    def __init__(self, args: list[str], log_path: str, nproc: int = 2, env: Optional[dict] = None,
                 launcher: Optional[list[str]] = None):
        self.log_path = log_path
        self.started = time.time()
        cmd = [*(launcher or [COMPOSER]), '-n', str(nproc), os.path.join(REPO, 'launch', 'train.py'), TINY_YAML, *args]
        self._log = open(log_path, 'w')
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO,
                                     env={**os.environ, **ENV, **(env or {})}, start_new_session=True)

    def log(self) -> str:
        with open(self.log_path, errors='replace') as f:
            return f.read()

    def wait(self, timeout: float = 400) -> int:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f'job did not finish in {timeout}s; log tail:\n{self.log()[-4000:]}')
        self._log.close()
        return rc

    def kill(self) -> None:
        """SIGKILL the launcher and every rank (one process group), as a preemption would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f'job exited ({self.proc.returncode}) before {what}; log tail:\n{self.log()[-4000:]}')
            if time.time() > deadline:
                self.kill()
                raise AssertionError(f'no {what} after {timeout}s; log tail:\n{self.log()[-4000:]}')
            time.sleep(0.05)  # a tiny run finishes a batch in well under a second


def run(args: list[str], log_path: str, nproc: int = 2, env: Optional[dict] = None, timeout: float = 400) -> Job:
    job = Job(args, log_path, nproc, env)
    rc = job.wait(timeout)
    assert rc == 0, f'job failed ({rc}); log tail:\n{job.log()[-4000:]}'
    return job


def losses(metrics_path: str) -> dict[int, float]:
    return {b: m['loss/train/total'] for b, m in read_metrics(metrics_path).items() if 'loss/train/total' in m}


def token_sums(metrics_path: str) -> dict[int, int]:
    return {b: m['data/token_sum'] for b, m in read_metrics(metrics_path).items() if 'data/token_sum' in m}


def logged_batches(metrics_path: str) -> set[int]:
    """Batches with a train loss line so far (tolerates a half-written last line)."""
    if not os.path.exists(metrics_path):
        return set()
    return set(losses(metrics_path))


def copy_checkpoint(src_folder: str, name: str, dst_folder: str) -> None:
    """Seed a save folder with one checkpoint of another run (and its hf_meta), pointer included."""
    os.makedirs(dst_folder, exist_ok=True)
    shutil.copytree(os.path.join(src_folder, name), os.path.join(dst_folder, name))
    shutil.copytree(os.path.join(src_folder, 'hf_meta'), os.path.join(dst_folder, 'hf_meta'))
    os.symlink(name, os.path.join(dst_folder, 'latest-rank0.pt'))


@dataclass
class ReferenceRun:
    root: str
    save_folder: str
    metrics: str
    hf_folder: str  # hf_checkpointer output
    log: str
    losses: dict[int, float]
    token_sums: dict[int, int]
    seconds: float


_REFERENCE: dict[str, ReferenceRun] = {}


def reference_run(data_root: str, root: str) -> ReferenceRun:
    """The uninterrupted 2-process run (local sharded checkpoints at 2, 4, 6, 8; an HF folder every batch)."""
    if data_root in _REFERENCE:
        return _REFERENCE[data_root]
    os.makedirs(root, exist_ok=True)
    hf_folder = os.path.join(root, 'hf')
    args = overrides(data_root, root, None, f'callbacks.hf_checkpointer.save_folder={hf_folder}',
                     'callbacks.hf_checkpointer.save_interval=1ba')
    started = time.time()
    job = run(args, os.path.join(root, 'log.txt'))
    metrics = os.path.join(root, 'run', 'metrics.jsonl')
    ref = ReferenceRun(root=root, save_folder=os.path.join(root, 'checkpoints'), metrics=metrics, hf_folder=hf_folder,
                       log=job.log(), losses=losses(metrics), token_sums=token_sums(metrics), seconds=time.time() - started)
    assert sorted(ref.losses) == list(range(BATCHES)), ref.losses
    _REFERENCE[data_root] = ref
    return ref


def side_by_side(title: str, columns: dict[str, dict[int, float]]) -> str:
    """A printable table: one row per batch, one column per run."""
    names = list(columns)
    batches = sorted(set().union(*[set(c) for c in columns.values()]))
    lines = [title, 'batch  ' + '  '.join(f'{n:>20}' for n in names)]
    for b in batches:
        cells = [f'{columns[n][b]:>20.10f}' if b in columns[n] else f'{"-":>20}' for n in names]
        lines.append(f'{b:>5}  ' + '  '.join(cells))
    return '\n'.join(lines)
