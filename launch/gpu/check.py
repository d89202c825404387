"""The real training path on one GPU, start to finish: `bash launch/gpu/check.sh` (see check.sh).

On a machine with one CUDA GPU, Python 3.12, torch and transformers preinstalled and no internet:

  (a) install  the wheelhouse (`make gpu-wheels` -> .whl/gpu) with `pip install --no-index --no-deps
               --target .gpu-site`, skipping every distribution the machine already has (its torch,
               transformers, numpy are never replaced), then import Composer, streaming and foundry;
  (b) data     build a real MDS dataset here (foundry.data.demo_corpus: English docstrings and Python
               code of this Python's standard library, its own byte-level BPE, samples of 2048 tokens),
               then validate every run's command line with foundry's load_config before any launch;
  (c) speed    `composer -n 1 launch/train.py yamls/pretrain/mpt-125m.yaml ...` and then mpt-1b.yaml,
               overrides only: amp_bf16, FSDP2, attn_impl flex, compile_config {} (torch.compile of
               every block), the local MDS streams and tokenizer, gpu_bench.py's batches (16 and 8) and
               30-40 batches, no checkpoints or evaluation; tokens/s and MFU are the median of the
               5-batch rates after 10 warm-up batches in each run's metrics.jsonl (throughput_monitor);
  (d) resume   mpt-125m uninterrupted with sharded checkpoints every 10 batches and evaluation at the
               end; then the same command SIGKILLed while rank 0 is inside its batch-20 save (data
               written, no .metadata), and the same command again: it must resume from batch 10 and give
               the uninterrupted run's per-batch losses, data (token sums) and eval loss; bit-identical
               is expected, 1e-3 is tolerated on a GPU (see resume_check);
  (e) export   `foundry export hf` of the resumed run's last checkpoint, loaded with transformers'
               AutoModelForCausalLM on the GPU; its logits against foundry's model read straight from the
               checkpoint (fp32), max |difference| printed and bounded; a short greedy generation.

Figures and logs go to --out (default $OUT, else ./gpu_check_out): summary.txt, summary.json, check.log,
logs/<run>.log, runs/<run>/metrics.jsonl, resume_losses.txt, export.json. Data, checkpoints and the
exported folder (gigabytes) go to --work (default /tmp/foundry-gpu-check), replaced at each start.

`--cpu-smoke` runs every step on a CPU with tiny model overrides (d_model 64, 2 layers, seq 128, a
512-token BPE) and a few batches (8 for mpt-125m, checkpoints every 2, killed in the batch-4 save):
torch.compile is off there (compiling on a 2-core machine costs more than the whole smoke run;
--cpu-compile turns it on), flex trains through its SDPA fallback on CPU, amp_bf16 is foundry's CPU
autocast, and the uninterrupted mpt-125m run is the speed run itself (one launch fewer); losses must be
bit-identical. The install step runs only when --wheelhouse is given. tests/e2e/test_gpu_check.py runs it.

Exit status 0 when every step passed, 1 otherwise; summary.txt says which step failed and why.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from typing import Any, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_WHEELHOUSE = os.path.join(REPO, '.whl', 'gpu')
DEFAULT_SITE = os.path.join(REPO, '.gpu-site')
DEFAULT_WORK = os.path.join('/tmp', 'foundry-gpu-check')

# launch/bench/gpu_bench.py on one H200 (README, Speed): pure-torch loop, flex + compile, same batch.
BENCH_H200 = {'mpt-125m': (341_108, 0.334), 'mpt-1b': (55_115, 0.506)}
DEVICE_NAME = ''  # torch.cuda.get_device_name(), once the imports step has run


@dataclass
class ModelRun:
    """One model's speed run. The first model is also the one of the resume and export steps."""
    name: str  # mpt-125m
    yaml: str
    batch: int  # global = per device (one process)
    batches: int
    warmup: int  # batches left out of the steady-state median (compilation, allocator warm-up)


@dataclass
class Profile:
    device: str
    seq: int
    vocab: int  # of the trained BPE
    corpus_bytes: int  # per stream
    models: list[ModelRun]
    save_interval: int  # of the reference / resume runs
    common: list[str]
    # Rates over this many batches (throughput_monitor's window); the median of the windows after warm-up.
    window: int
    # GPU: the speed runs are the plain path (no checkpoints, no evaluation, no data fingerprint and its
    # per-batch host sync), and the uninterrupted run the resume step compares with is a run of its own.
    # CPU smoke: the first speed run is that reference (one launch fewer on a 2-core machine).
    separate_reference: bool
    budget_s: float
    run_timeout_s: float
    logits_tokens: int
    logits_bound: float


def gpu_profile() -> Profile:
    return Profile(
        device='gpu', seq=2048, vocab=8192, corpus_bytes=6_000_000,
        models=[
            # gpu_bench.py's batches (16 and 8 sequences of 2048), so the figures compare with its table.
            ModelRun('mpt-125m', 'yamls/pretrain/mpt-125m.yaml', batch=16, batches=40, warmup=10),
            ModelRun('mpt-1b', 'yamls/pretrain/mpt-1b.yaml', batch=8, batches=30, warmup=10),
        ],
        save_interval=10,
        common=['precision=amp_bf16', 'model.attn_config.attn_impl=flex', 'compile_config={}'],
        # No host sync per batch on this path: a batch's end on the host can run ahead of the GPU by a batch,
        # so single-batch rates jitter; 5-batch windows do not.
        window=5, separate_reference=True,
        budget_s=470, run_timeout_s=240, logits_tokens=512,
        # fp32 on both sides; transformers' eager attention vs foundry's compiled flex kernel sum in different
        # orders over 12 layers: differences of ~1e-5 relative to logits of magnitude ~10.
        logits_bound=1e-3)


def cpu_profile(compile_on: bool) -> Profile:
    tiny = ['model.d_model=64', 'model.n_heads=4', 'model.n_layers=2', 'model.vocab_size=512',
            'train_loader.num_workers=0', 'eval_loader.num_workers=0', 'device_eval_batch_size=8',
            'eval_subset_num_batches=2',
            'callbacks.throughput_monitor.cpu_peak_seconds=0.2']
    return Profile(
        device='cpu', seq=128, vocab=512, corpus_bytes=150_000,
        models=[ModelRun('mpt-125m', 'yamls/pretrain/mpt-125m.yaml', batch=8, batches=8, warmup=2),
                ModelRun('mpt-1b', 'yamls/pretrain/mpt-1b.yaml', batch=8, batches=4, warmup=1)],
        save_interval=2,
        common=['precision=amp_bf16', 'model.attn_config.attn_impl=flex',
                *(['compile_config={}'] if compile_on else []), *tiny],
        window=1, separate_reference=False,
        budget_s=600, run_timeout_s=300, logits_tokens=64, logits_bound=1e-4)


# ------------------------------------------------------------------------------------------- output
class Report:
    """Prints each line and keeps it in check.log; collects the summary."""

    def __init__(self, out: str):
        self.out = out
        os.makedirs(os.path.join(out, 'logs'), exist_ok=True)
        self._log = open(os.path.join(out, 'check.log'), 'w', encoding='utf-8')
        self.steps: dict[str, dict[str, Any]] = {}
        self.lines: list[str] = []
        self.started = time.time()

    def say(self, text: str) -> None:
        stamp = f'[gpu-check {time.time() - self.started:6.1f}s] '
        for line in text.splitlines() or ['']:
            print(stamp + line, flush=True)
            self._log.write(stamp + line + '\n')
        self._log.flush()

    def step(self, name: str, ok: bool, line: str, **data: Any) -> None:
        self.steps[name] = {'ok': ok, 'line': line, **data}
        self.lines.append(f'{name:<9}: {"" if ok else "FAILED: "}{line}')
        self.say(f'{name}: {"ok" if ok else "FAILED"}: {line}')


class StepFailed(Exception):
    pass


# ------------------------------------------------------------------------------------------- (a) install
def dist_key(name: str) -> str:
    return re.sub(r'[-_.]+', '-', name).lower()


def installed_distributions() -> dict[str, str]:
    from importlib import metadata

    found = {}
    for dist in metadata.distributions():
        name = dist.metadata.get('Name')
        if name:
            found.setdefault(dist_key(name), dist.version)
    return found


def install_wheelhouse(report: Report, wheelhouse: str, site: str) -> dict[str, Any]:
    wheels = sorted(f for f in os.listdir(wheelhouse) if f.endswith('.whl')) if os.path.isdir(wheelhouse) else []
    if not wheels:
        raise StepFailed(f'no wheels in {wheelhouse}: run `make gpu-wheels` where there is internet and carry .whl/gpu')
    shutil.rmtree(site, ignore_errors=True)  # ours: always a fresh install of this wheelhouse
    machine = installed_distributions()
    install, kept = [], []
    for wheel in wheels:
        name, version = wheel.split('-')[:2]
        key = dist_key(name)
        if key in machine:
            kept.append(f'{key} {machine[key]}' + ('' if machine[key] == version else f' (wheelhouse {version})'))
        else:
            install.append(wheel)
    report.say(f'install: {len(wheels)} wheels in {wheelhouse}; {len(kept)} already on this machine, kept as they are: '
               + ', '.join(kept))
    if install:
        cmd = [sys.executable, '-m', 'pip', 'install', '--isolated', '--no-index', '--no-deps', '--no-warn-script-location',
               '--disable-pip-version-check', '--target', site, *[os.path.join(wheelhouse, w) for w in install]]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        with open(os.path.join(report.out, 'logs', 'install.log'), 'w') as f:
            f.write(' '.join(cmd) + '\n' + proc.stdout + proc.stderr)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr).strip()[-2000:]
            if 'No module named pip' in tail:
                tail += '\n(this Python has no pip: `python -m ensurepip` installs it from the standard library)'
            raise StepFailed(f'pip install failed ({proc.returncode}):\n{tail}')
    stale = stale_foundry_files(wheelhouse, wheels)
    return {'wheels': len(wheels), 'installed': [w.split('-')[0] for w in install], 'kept': kept, 'site': site,
            'stale_foundry_files': stale}


def stale_foundry_files(wheelhouse: str, wheels: list[str]) -> list[str]:
    """foundry/ files whose wheel copy differs from the working tree (the wheel predates an edit)."""
    ours = [w for w in wheels if dist_key(w.split('-')[0]) == 'foundry']
    if not ours:
        return []
    differ = []
    with zipfile.ZipFile(os.path.join(wheelhouse, ours[0])) as z:
        in_wheel = {n for n in z.namelist() if n.startswith('foundry/') and n.endswith('.py')}
        for name in sorted(in_wheel):
            path = os.path.join(REPO, name)
            if not os.path.isfile(path) or open(path, 'rb').read() != z.read(name):
                differ.append(name)
    for root, _, files in os.walk(os.path.join(REPO, 'foundry')):
        for f in files:
            rel = os.path.relpath(os.path.join(root, f), REPO)
            if f.endswith('.py') and rel not in in_wheel:
                differ.append(rel)
    return differ


IMPORT_CHECK = r'''
import json, sys, importlib, importlib.metadata as md
mods = ['composer', 'streaming', 'mcli', 'omegaconf', 'lion_pytorch', 'torchvision', 'torchmetrics',
        'foundry.train', 'foundry.cli', 'foundry.export.hf', 'foundry.data.text_dataset', 'foundry.data.demo_corpus',
        'foundry.callbacks', 'foundry.loggers', 'foundry.checkpoint.resume', 'foundry.distributed.fsdp',
        'foundry.distributed.compile', 'foundry.models']
where = {m: importlib.import_module(m).__file__ for m in mods}
import torch
versions = {d: md.version(d) for d in ('torch', 'transformers', 'mosaicml', 'mosaicml-streaming', 'numpy', 'foundry')}
versions['python'] = sys.version.split()[0]
versions['cuda'] = torch.version.cuda
versions['device'] = torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu'
print(json.dumps({'versions': versions, 'where': where}))
'''


def import_check(env: dict[str, str]) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, '-c', IMPORT_CHECK], capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise StepFailed('importing Composer / streaming / foundry failed:\n' + proc.stderr.strip()[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- (b) data
PREPARE = r'''
import json, sys, time
job = json.load(sys.stdin)
from foundry.data.demo_corpus import build_demo_data
started = time.time()
d = build_demo_data(job['data_root'], seq_len=job['seq'], max_bytes_per_stream=job['corpus_bytes'],
                    vocab_size=job['vocab'])
print('DATA ' + json.dumps({'tokenizer': d.tokenizer, 'streams': d.streams, 'seconds': time.time() - started}),
      flush=True)
started = time.time()
from foundry.config.load import load_config
for label, yaml, overrides in job['configs']:
    try:
        load_config(yaml, overrides)
    except Exception as e:
        print('CONFIG_ERROR ' + json.dumps({'label': label, 'error': f'{type(e).__name__}: {e}'}), flush=True)
        sys.exit(3)
print('CONFIGS ' + json.dumps({'seconds': time.time() - started}), flush=True)
'''


def planned_data(data_root: str) -> dict[str, Any]:
    """Where foundry.data.demo_corpus.build_demo_data puts the tokenizer and the MDS splits."""
    return {'tokenizer': os.path.join(data_root, 'tokenizer.json'), 'out_root': data_root,
            'streams': {s: {split: os.path.join(data_root, s, split) for split in ('train', 'val')}
                        for s in ('english', 'code')}}


def all_command_lines(profile: Profile, data: dict[str, Any], out: str, work: str) -> list[tuple[str, str, list[str]]]:
    """(label, YAML, overrides) of every run of this mode and, in --cpu-smoke mode, of the GPU check too."""
    runs = []
    for prof in ([profile] if profile.device == 'gpu' else [profile, gpu_profile()]):
        for run in prof.models:
            runs.append((f'{prof.device} {run.name}', os.path.join(REPO, run.yaml),
                         run_overrides(prof, run, data, os.path.join(out, 'runs', run.name), None,
                                       f'check-{run.name}', evaluate=not prof.separate_reference)))
        first = prof.models[0]
        runs.append((f'{prof.device} {first.name} with checkpoints', os.path.join(REPO, first.yaml),
                     run_overrides(prof, first, data, os.path.join(out, 'runs', first.name),
                                   os.path.join(work, 'checkpoints', first.name), f'check-{first.name}',
                                   evaluate=True)))
    return runs


def prepare(report: Report, profile: Profile, data_root: str, work: str, env: dict[str, str]) -> dict[str, Any]:
    """(b) Build the MDS data (foundry.data.demo_corpus), then validate with foundry's load_config (every key,
    type and registry name) the command line of every run before any launch: in --cpu-smoke mode that is
    the only check the GPU command lines (seq 2048, flex, compile, full-size models) get. One process."""
    data = planned_data(data_root)
    configs = all_command_lines(profile, data, report.out, work)
    job = {'data_root': data_root, 'seq': profile.seq, 'corpus_bytes': profile.corpus_bytes, 'vocab': profile.vocab,
           'configs': configs}
    log = os.path.join(report.out, 'logs', 'data.log')
    proc = subprocess.run([sys.executable, '-c', PREPARE], input=json.dumps(job), capture_output=True, text=True,
                          env=env, cwd=REPO)
    with open(log, 'w') as f:
        f.write(proc.stdout + proc.stderr)
    lines = {line.split(' ', 1)[0]: json.loads(line.split(' ', 1)[1]) for line in proc.stdout.splitlines()
             if line.split(' ', 1)[0] in ('DATA', 'CONFIGS', 'CONFIG_ERROR')}
    if 'DATA' not in lines:
        raise StepFailed(f'building the MDS data failed; see {log}:\n' + proc.stderr.strip()[-2000:])
    built = lines['DATA']
    if built['tokenizer'] != data['tokenizer'] or built['streams'] != data['streams']:
        raise StepFailed(f'build_demo_data put its output elsewhere than this script expects: {built}')
    samples = {}
    for stream, splits in data['streams'].items():
        for split, folder in splits.items():
            with open(os.path.join(folder, 'index.json')) as f:
                samples[f'{stream}/{split}'] = sum(shard['samples'] for shard in json.load(f)['shards'])
    data.update(samples=samples, seconds=built['seconds'])
    if 'CONFIGS' in lines:
        data['configs'] = {'validated': [label for label, _, _ in configs], 'seconds': lines['CONFIGS']['seconds']}
    else:
        error = lines.get('CONFIG_ERROR') or {'label': '?', 'error': proc.stderr.strip()[-2000:]}
        data['configs'] = {'error': f'the {error["label"]} command line does not validate: {error["error"]}'}
    return data


# ------------------------------------------------------------------------------------------- runs
def console_script(name: str, site: Optional[str]) -> Optional[str]:
    """The wheelhouse's console script, else this Python's (never another `composer` on PATH, e.g. PHP's)."""
    for folder in ([os.path.join(site, 'bin')] if site else []) + [os.path.dirname(sys.executable)]:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def composer_command(site: Optional[str]) -> str:
    found = console_script('composer', site)
    if not found:
        raise StepFailed("no `composer` launcher (Composer's console script) beside this Python or in the site folder")
    return found


def foundry_command(site: Optional[str]) -> list[str]:
    found = console_script('foundry', site)
    return [found] if found else [sys.executable, '-c', 'import sys; from foundry.cli import main; sys.exit(main())']


class Launch:
    """`composer -n 1 launch/train.py YAML overrides` in its own process group, output to a log file."""

    live: set['Launch'] = set()  # killed if this script is interrupted or ends while they run

    def __init__(self, composer: str, yaml: str, overrides: list[str], log: str, env: dict[str, str]):
        self.cmd = [composer, '-n', '1', os.path.join(REPO, 'launch', 'train.py'), os.path.join(REPO, yaml), *overrides]
        self.log_path = log
        self._log = open(log, 'a')
        self._start_offset = self._log.tell()
        self._log.write('$ ' + ' '.join(self.cmd) + '\n')
        self._log.flush()
        self.started = time.time()
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO, env=env,
                                     start_new_session=True)
        Launch.live.add(self)

    # Lines after which the run is over even if a process lingers (a rank that reported a user error but
    # does not exit keeps the launcher waiting): the run gets a grace period, then it is killed.
    FATAL = ('foundry: config error', 'foundry: data error', 'crashed with exit code')

    def wait(self, timeout: float, grace: float = 15.0) -> int:
        deadline = time.time() + max(1.0, timeout)
        fatal_at = None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self._log.close()
                Launch.live.discard(self)
                return rc
            if fatal_at is None and any(line in self.tail(20000) for line in self.FATAL):
                fatal_at = time.time()
            if fatal_at is not None and time.time() - fatal_at > grace:
                self.kill()
                return 1
            if time.time() > deadline:
                self.kill()
                raise StepFailed(f'{os.path.basename(self.log_path)}: no exit after {timeout:.0f}s (killed); '
                                 f'log tail:\n{self.tail()}')
            time.sleep(0.5)

    def kill(self) -> None:
        """SIGKILL the launcher and its training process (one process group), as a preemption would."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self._log.close()
        Launch.live.discard(self)

    @classmethod
    def kill_all(cls) -> None:
        for job in list(cls.live):
            job.kill()

    def tail(self, chars: int = 3000) -> str:
        """The end of this launch's part of the log (the log file may hold earlier launches before it)."""
        with open(self.log_path, 'rb') as f:
            f.seek(max(self._start_offset, os.path.getsize(self.log_path) - chars))
            return f.read().decode(errors='replace')

    @property
    def seconds(self) -> float:
        return time.time() - self.started


def read_metrics(path: str) -> dict[int, dict[str, Any]]:
    from foundry.loggers.jsonl import read_metrics as read

    return read(path) if os.path.exists(path) else {}


def losses(metrics: dict[int, dict[str, Any]]) -> dict[int, float]:
    return {b: m['loss/train/total'] for b, m in metrics.items() if 'loss/train/total' in m}


def token_sums(metrics: dict[int, dict[str, Any]]) -> dict[int, int]:
    return {b: m['data/token_sum'] for b, m in metrics.items() if 'data/token_sum' in m}


def run_overrides(profile: Profile, run: ModelRun, data: dict[str, Any], run_folder: str,
                  save_folder: Optional[str], run_name: str, evaluate: bool) -> list[str]:
    """The command line after the YAML: the same for every run but for folders, checkpoints and evaluation."""
    streams = data['streams']
    out = [
        f'variables.max_seq_len={profile.seq}', f'variables.run_name={run_name}',
        'variables.data_local=null', 'variables.data_remote=null',
        f'tokenizer.name={data["tokenizer"]}',
        *[f'train_loader.dataset.streams.{s}.local={os.path.dirname(streams[s]["train"])}' for s in sorted(streams)],
        *[f'eval_loader.dataset.streams.{s}.local={os.path.dirname(streams[s]["val"])}' for s in sorted(streams)],
        f'global_train_batch_size={run.batch}', f'device_train_microbatch_size={run.batch}',
        f'max_duration={run.batches}ba', 'eval_interval=1000000ba',  # evaluation once, at the end of the fit
        f'run_folder={run_folder}', 'fsdp_config.state_dict_type=sharded',
        # foundry's throughput_monitor (tokens/s, MFU against the GPU's peak) after the YAML's speed_monitor:
        # both log throughput/tokens_per_sec at the same step and the later one is what metrics.jsonl keeps;
        # the same window makes the two agree anyway. MFU is read only where throughput/device/hfu (ours) is.
        f'callbacks.throughput_monitor.window_size={profile.window}',
        f'callbacks.speed_monitor.window_size={profile.window}', 'console_log_interval=5ba',
        *profile.common,
    ]
    if not evaluate:
        out.append('eval_loader=null')
    if save_folder:
        out += [f'save_folder={save_folder}', f'save_interval={profile.save_interval}ba']
    else:
        out += ['save_folder=null']
    return out


def eval_loss(metrics: dict[int, dict[str, Any]]) -> Optional[float]:
    return next((m['metrics/eval/LanguageCrossEntropy'] for m in reversed(metrics.values())
                 if 'metrics/eval/LanguageCrossEntropy' in m), None)


def speed_figures(metrics: dict[int, dict[str, Any]], run: ModelRun, window: int) -> dict[str, Any]:
    """Steady state: the median of the `window`-batch rates whose batches all come after `warmup`.

    The line with step b holds the rate over batches b-window .. b-1 (logged at batch b-1's end).
    """
    steady = [m for b, m in metrics.items() if b - window >= run.warmup and 'throughput/tokens_per_sec' in m]
    if not steady:
        raise StepFailed(f'{run.name}: no throughput/tokens_per_sec after batch {run.warmup} in metrics.jsonl')
    tps = [m['throughput/tokens_per_sec'] for m in steady]
    mfu = [m['throughput/device/mfu'] for m in steady if 'throughput/device/hfu' in m and 'throughput/device/mfu' in m]
    first = next((m['time/first_batch_sec'] for m in metrics.values() if 'time/first_batch_sec' in m), None)
    peak = next((m['throughput/device/peak_flops'] for m in metrics.values() if 'throughput/device/peak_flops' in m), None)
    memory = [v for m in metrics.values() for k, v in m.items() if k == 'memory/peak_allocated_mem']
    loss = losses(metrics)
    return {
        'tokens_per_s': statistics.median(tps), 'tokens_per_s_min': min(tps), 'tokens_per_s_max': max(tps),
        'mfu': statistics.median(mfu) if mfu else None, 'peak_flops': peak, 'window': window,
        'windows_measured': len(tps), 'first_batch_s': first,
        'peak_allocated_gb': max(memory) if memory else None,
        'loss_first': loss.get(min(loss)) if loss else None, 'loss_last': loss.get(max(loss)) if loss else None,
        'eval_loss': eval_loss(metrics),
    }


def deterministic_env(profile: Profile) -> dict[str, str]:
    """For the runs the resume step compares: the per-batch data fingerprint (data/token_sum), and on a GPU
    cuBLAS workspaces that make its results independent of stream scheduling (not set for the speed runs)."""
    env = {'FOUNDRY_DATA_FINGERPRINT': '1'}
    if profile.device == 'gpu':
        env['CUBLAS_WORKSPACE_CONFIG'] = os.environ.get('CUBLAS_WORKSPACE_CONFIG', ':4096:8')
    return env


def train_run(report: Report, profile: Profile, run: ModelRun, data: dict[str, Any], composer: str,
              env: dict[str, str], work: str, deadline: float, label: str, reference: bool) -> dict[str, Any]:
    """One launch to the end. `reference`: as the resume step's runs are (sharded checkpoints every
    save_interval, evaluation at the end, FOUNDRY_DATA_FINGERPRINT), so they can be compared with it."""
    run_folder = os.path.join(report.out, 'runs', label)
    save_folder = os.path.join(work, 'checkpoints', label) if reference else None
    shutil.rmtree(run_folder, ignore_errors=True)
    overrides = run_overrides(profile, run, data, run_folder, save_folder, f'check-{label}', evaluate=reference)
    log = os.path.join(report.out, 'logs', f'{label}.log')
    report.say(f'{label}: composer -n 1 launch/train.py {run.yaml} ({run.batches} batches of {run.batch} x '
               f'{profile.seq}{", checkpoints every %d" % profile.save_interval if reference else ""}; log {log})')
    run_env = {**env, **(deterministic_env(profile) if reference else {})}
    job = Launch(composer, run.yaml, overrides, log, run_env)
    rc = job.wait(min(profile.run_timeout_s, deadline - time.time()))
    if rc != 0:
        raise StepFailed(f'{label}: training exited with {rc}; log tail:\n{job.tail()}')
    metrics = read_metrics(os.path.join(run_folder, 'metrics.jsonl'))
    if sorted(losses(metrics)) != list(range(run.batches)):
        raise StepFailed(f'{label}: metrics.jsonl has the train loss of batches {sorted(losses(metrics))}, '
                         f'expected 0-{run.batches - 1}')
    figures = speed_figures(metrics, run, profile.window)
    figures.update(seconds=job.seconds, overrides=overrides, losses=losses(metrics), token_sums=token_sums(metrics),
                   save_folder=save_folder, reference=reference)
    return figures


def describe_speed(name: str, run: ModelRun, profile: Profile, f: dict[str, Any]) -> str:
    mfu = f'MFU {f["mfu"] * 100:.1f}%' if f['mfu'] is not None else 'MFU n/a (no peak FLOP/s known for this device)'
    windows = f'{f["window"]}-batch windows' if f['window'] > 1 else 'batches'
    text = (f'{f["tokens_per_s"]:,.0f} tokens/s, {mfu} (median of {f["windows_measured"]} {windows} after batch '
            f'{run.warmup}: {f["tokens_per_s_min"]:,.0f}-{f["tokens_per_s_max"]:,.0f}); batch {run.batch} x '
            f'{profile.seq}; first batch {f["first_batch_s"]:.1f}s; loss {f["loss_first"]:.3f} -> {f["loss_last"]:.3f}')
    if f.get('peak_allocated_gb'):
        text += f'; peak memory {f["peak_allocated_gb"]:.1f} GB'
    text += f'; {f["seconds"]:.0f}s launch to exit'
    if 'H200' in DEVICE_NAME and name in BENCH_H200:
        tps, mfu_b = BENCH_H200[name]
        text += f' [H200 gpu_bench.py, pure-torch loop: {tps:,} tokens/s, {mfu_b * 100:.1f}%]'
    return text


# ------------------------------------------------------------------------------------------- (d) resume
def resume_check(report: Report, profile: Profile, run: ModelRun, data: dict[str, Any], composer: str,
                 env: dict[str, str], work: str, deadline: float, reference: dict[str, Any]) -> dict[str, Any]:
    interval = profile.save_interval
    hang_at = 2 * interval
    run_folder = os.path.join(report.out, 'runs', f'{run.name}-resume')
    save_folder = os.path.join(work, 'checkpoints', f'{run.name}-resume')
    shutil.rmtree(run_folder, ignore_errors=True)
    overrides = run_overrides(profile, run, data, run_folder, save_folder, f'check-{run.name}-resume', evaluate=True)
    log = os.path.join(report.out, 'logs', f'{run.name}-resume.log')
    env = {**env, **deterministic_env(profile)}
    metrics_path = os.path.join(run_folder, 'metrics.jsonl')
    marker = os.path.join(work, 'hanging-in-save')
    if os.path.exists(marker):
        os.remove(marker)

    # 1. Killed: rank 0 hangs inside the save at batch 2*interval (every .distcp written, no .metadata yet).
    report.say(f'resume: the same mpt-125m command, SIGKILLed inside its batch-{hang_at} checkpoint save')
    first = Launch(composer, run.yaml, overrides, log,
                   {**env, 'FOUNDRY_FAULT': f'hang_in_save:{hang_at}', 'FOUNDRY_FAULT_MARKER': marker})
    limit = min(profile.run_timeout_s, deadline - time.time())
    while not os.path.exists(marker):
        if first.proc.poll() is not None:
            raise StepFailed(f'resume: the run exited ({first.proc.returncode}) before its batch-{hang_at} save; '
                             f'log tail:\n{first.tail()}')
        if first.seconds > limit:
            first.kill()
            raise StepFailed(f'resume: no hang in the batch-{hang_at} save after {limit:.0f}s')
        time.sleep(0.05)
    time.sleep(0.5)  # let the hang settle: the save's data files are all on disk
    first.kill()
    killed_seconds = first.seconds
    before_kill = losses(read_metrics(metrics_path))
    partial = os.path.join(save_folder, f'ep0-ba{hang_at}')
    partial_files = sorted(os.listdir(partial)) if os.path.isdir(partial) else []
    logged = f'batches 0-{max(before_kill)}' if before_kill else 'no batch yet (metrics lines are written in groups)'
    report.say(f'resume: killed after {killed_seconds:.0f}s with {logged} in metrics.jsonl; {partial}: '
               f'{partial_files} (no .metadata)')
    if '.metadata' in partial_files:
        raise StepFailed(f'resume: {partial} has .metadata although its save hung')

    # 2. The same command again (no fault), to the end.
    second = Launch(composer, run.yaml, overrides, log, env)
    rc = second.wait(min(profile.run_timeout_s, deadline - time.time()))
    if rc != 0:
        raise StepFailed(f'resume: the restarted run exited with {rc}; log tail:\n{second.tail()}')
    text = second.tail(10**9)  # the restarted run's part of the log
    match = re.search(r'autoresume: on; resuming from (\S+) \(batch (\d+)\)', text)
    if not match:
        raise StepFailed('resume: the restarted run did not log "autoresume: on; resuming from ..."; log tail:\n'
                         + second.tail())
    resumed_from, start = match.group(1), int(match.group(2))
    metrics = read_metrics(metrics_path)
    after = {b: v for b, v in losses(metrics).items() if b >= start}
    ref = reference['losses']
    ref_sums, sums = reference['token_sums'], token_sums(metrics)
    expected = list(range(start, run.batches))
    problems = []
    if start != interval:
        problems.append(f'resumed at batch {start}, expected {interval} (the newest whole checkpoint)')
    if sorted(after) != expected:
        problems.append(f'resumed run logged batches {sorted(after)}, expected {expected[0]}-{expected[-1]}')
    if f'ep0-ba{hang_at} is incomplete' not in text:
        problems.append(f'no "ep0-ba{hang_at} is incomplete" line in the restarted run\'s log')
    data_equal = all(sums.get(b) is not None and sums.get(b) == ref_sums.get(b) for b in expected)
    if not data_equal:
        problems.append('data/token_sum differs from the uninterrupted run: not the same samples')
    evals = (reference['eval_loss'], eval_loss(metrics))
    diffs = {b: abs(after[b] - ref[b]) for b in expected if b in after and b in ref}
    pre = {b: abs(before_kill[b] - ref[b]) for b in before_kill if b in ref}
    exact = bool(diffs) and all(d == 0.0 for d in diffs.values())
    # CPU: bit-identical or fail. GPU: bit-identical is expected (same kernels, same autotuned configs from the
    # inductor cache, CUBLAS_WORKSPACE_CONFIG set); if the GPU is not deterministic across processes (pre-kill
    # batches, which involve no resume, differ too) up to 1e-3 per batch is accepted: at the warm-up learning
    # rates of 40 batches, run-to-run rounding noise stays far below it, while a resume that lost the data
    # position (checked exactly above), optimizer moments or scheduler step shifts a loss by more.
    tolerance = 0.0 if profile.device == 'cpu' else 1e-3
    worst = max(diffs.values()) if diffs else float('inf')
    if worst > tolerance:
        problems.append(f'max |loss difference| {worst:.3g} > {tolerance:g}')
    if None in evals or abs(evals[0] - evals[1]) > tolerance:
        problems.append(f'eval loss at the end {evals[1]} vs {evals[0]} uninterrupted')

    lines = [f'per-batch loss: uninterrupted ({reference["overrides_note"]}) vs killed in the batch-{hang_at} save '
             f'and resumed from {resumed_from}',
             f'{"batch":>5}  {"uninterrupted":>18}  {"killed+resumed":>18}  {"|diff|":>10}  phase']
    for b in range(run.batches):
        got = after.get(b, before_kill.get(b))
        phase = 'resumed' if b in after else ('before kill' if b in before_kill else '')
        d = abs(got - ref[b]) if got is not None and b in ref else None
        lines.append(f'{b:>5}  {ref.get(b, float("nan")):>18.10f}  '
                     f'{(got if got is not None else float("nan")):>18.10f}  '
                     f'{(f"{d:.3g}" if d is not None else "-"):>10}  {phase}')
    with open(os.path.join(report.out, 'resume_losses.txt'), 'w') as f:
        f.write('\n'.join(lines) + '\n')
    result = {
        'killed_in_save_of_batch': hang_at, 'killed_after_s': killed_seconds, 'resumed_from': resumed_from,
        'resumed_at_batch': start, 'batches_compared': len(diffs), 'exact': exact, 'max_abs_diff': worst,
        'tolerance': tolerance, 'pre_kill_max_abs_diff': max(pre.values()) if pre else None,
        'pre_kill_exact': bool(pre) and all(d == 0.0 for d in pre.values()), 'data_equal': data_equal,
        'eval_loss': evals[1], 'eval_loss_uninterrupted': evals[0], 'eval_exact': evals[0] == evals[1],
        'problems': problems, 'checkpoint': os.path.join(save_folder, 'latest-rank0.pt'),
        'restart_seconds': second.seconds,
    }
    return result


# ------------------------------------------------------------------------------------------- (e) export
COMPARE = r'''
import json, sys, warnings
import torch
hf_dir, checkpoint, data_root, device, n_tokens = sys.argv[1:6]
n_tokens = int(n_tokens)
from transformers import AutoModelForCausalLM
from foundry.data.demo_corpus import STREAMS
from foundry.data.tokenizer import build_tokenizer
from foundry.export.checkpoint import iter_model_tensors
from foundry.export.hf import find_run_meta
from foundry.models.mpt.configuration import MPTConfig
from foundry.models.mpt.modeling import MPTForCausalLM

# Input: the start of one held-out (val) document per stream, in the run's tokenizer.
tokenizer = build_tokenizer(data_root + '/tokenizer.json')
rows = []
for stream in STREAMS:
    with open(f'{data_root}/corpus/{stream}.jsonl') as f:
        texts = [json.loads(line)['text'] for line in f]
    text = texts[-1]  # the last documents of each stream are its val split
    ids = tokenizer(text)['input_ids']
    while len(ids) < n_tokens:
        ids = ids + ids
    rows.append(ids[:n_tokens])
ids = torch.tensor(rows, device=device)
torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides, whatever imported modules set
torch.backends.cudnn.allow_tf32 = False

config = MPTConfig.from_pretrained(find_run_meta(checkpoint))
config.init_device = 'cpu'
ours = MPTForCausalLM(config)
state = {}
for group in iter_model_tensors(checkpoint):
    state.update(group)
missing, unexpected = ours.load_state_dict(state, strict=False)
assert not unexpected and set(missing) <= {'lm_head.weight'}, (missing, unexpected)
ours = ours.to(device).float().eval()
theirs = AutoModelForCausalLM.from_pretrained(hf_dir).to(device).float().eval()
with torch.no_grad(), warnings.catch_warnings():
    warnings.simplefilter('ignore')
    a = theirs(ids).logits.float()
    b = ours(input_ids=ids).logits.float()
    diff = (a - b).abs().max().item()
    generated = theirs.generate(ids[:1, :16], max_new_tokens=8, do_sample=False, pad_token_id=0)
print('COMPARE ' + json.dumps({
    'max_abs_diff': diff, 'max_abs_logit': b.abs().max().item(), 'shape': list(a.shape),
    'theirs_class': type(theirs).__name__, 'attn_impl': config.attn_config['attn_impl'],
    'argmax_agree': (a.argmax(-1) == b.argmax(-1)).float().mean().item(),
    'generated': tokenizer.decode(generated[0, 16:].tolist()), 'generated_len': int(generated.shape[1])}))
'''


def export_check(report: Report, profile: Profile, checkpoint: str, data: dict[str, Any], env: dict[str, str],
                 site: Optional[str], work: str, deadline: float) -> dict[str, Any]:
    hf_dir = os.path.join(work, 'hf')
    shutil.rmtree(hf_dir, ignore_errors=True)
    log = os.path.join(report.out, 'logs', 'export.log')
    cmd = [*foundry_command(site), 'export', 'hf', checkpoint, hf_dir]
    report.say('export: ' + ' '.join(cmd))
    started = time.time()
    with open(log, 'w') as f:
        f.write('$ ' + ' '.join(cmd) + '\n')
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                              timeout=max(10, deadline - time.time()))
    if proc.returncode != 0:
        raise StepFailed(f'`foundry export hf` exited with {proc.returncode}; log tail:\n{_tail(log)}')
    export_s = time.time() - started
    device = 'cuda' if profile.device == 'gpu' else 'cpu'
    cmd = [sys.executable, '-c', COMPARE, hf_dir, checkpoint, data['out_root'], device, str(profile.logits_tokens)]
    with open(log, 'a') as f:
        f.write('$ python -c COMPARE ' + ' '.join(cmd[3:]) + '\n')
        f.flush()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=f, text=True, env=env, cwd=REPO,
                              timeout=max(10, deadline - time.time()))
        f.write(proc.stdout)
    if proc.returncode != 0:
        raise StepFailed(f'loading the export with transformers / comparing logits failed; log tail:\n{_tail(log)}')
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith('COMPARE '))[8:])
    result.update(hf_dir=hf_dir, checkpoint=checkpoint, bound=profile.logits_bound, export_s=export_s,
                  seconds=time.time() - started, device=device)
    with open(os.path.join(report.out, 'export.json'), 'w') as f:
        json.dump(result, f, indent=2)
    return result


def _tail(path: str, chars: int = 3000) -> str:
    with open(path, errors='replace') as f:
        return f.read()[-chars:]


# ------------------------------------------------------------------------------------------- main
def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', default=os.environ.get('OUT') or os.path.join(os.getcwd(), 'gpu_check_out'),
                        help='figures and logs (default: $OUT, else ./gpu_check_out)')
    parser.add_argument('--work', default=DEFAULT_WORK,
                        help=f'data, checkpoints, the exported folder; replaced at start (default {DEFAULT_WORK})')
    parser.add_argument('--cpu-smoke', action='store_true', help='every step on a CPU, tiny model, a few batches')
    parser.add_argument('--cpu-compile', action='store_true', help='with --cpu-smoke: torch.compile on (slow on 2 cores)')
    parser.add_argument('--wheelhouse', default=None,
                        help=f'wheels to install (default on a GPU: {DEFAULT_WHEELHOUSE}; --cpu-smoke: none)')
    parser.add_argument('--site', default=DEFAULT_SITE, help='where missing wheels are installed (pip --target)')
    parser.add_argument('--no-install', action='store_true', help='use the packages already importable')
    parser.add_argument('--models', default=None, help='comma-separated subset, e.g. mpt-125m')
    parser.add_argument('--budget', type=float, default=None, help='seconds for the whole check (GPU default 470)')
    args = parser.parse_args(argv)

    profile = cpu_profile(args.cpu_compile) if args.cpu_smoke else gpu_profile()
    if args.models:
        wanted = [m.strip() for m in args.models.split(',')]
        profile.models = [m for m in profile.models if m.name in wanted]
        if not profile.models or profile.models[0].name != 'mpt-125m':
            parser.error('--models must include mpt-125m (the reference run of the resume and export steps)')
    budget = args.budget or profile.budget_s
    out = os.path.abspath(args.out)
    work = os.path.abspath(args.work)
    os.makedirs(out, exist_ok=True)
    report = Report(out)
    deadline = report.started + budget
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    report.say(f'foundry GPU check ({"CPU smoke" if args.cpu_smoke else "GPU"}): out {out}, work {work}, '
               f'budget {budget:.0f}s, python {sys.executable}')

    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'TOKENIZERS_PARALLELISM': 'false'}
    for name in ('FOUNDRY_FAULT', 'FOUNDRY_FAULT_MARKER', 'FOUNDRY_DATA_FINGERPRINT'):
        env.pop(name, None)
    summary: dict[str, Any] = {'mode': 'cpu-smoke' if args.cpu_smoke else 'gpu', 'out': out, 'work': work}
    failed = None
    ctx: dict[str, Any] = {}

    def step(name: str, fn, describe) -> bool:
        nonlocal failed
        if failed is not None:
            report.step(name, False, f'skipped (after {failed} failed)')
            return False
        if time.time() > deadline:
            failed = name
            report.step(name, False, f'skipped: the {budget:.0f}s budget is spent')
            return False
        started = time.time()
        try:
            result = fn()
        except StepFailed as e:
            failed = name
            summary[name] = {'error': str(e), 'seconds': time.time() - started}
            report.step(name, False, str(e).splitlines()[0], seconds=time.time() - started)
            report.say(str(e))
            return False
        except Exception as e:  # a bug in this script or an unexpected library error: still write the summary
            failed = name
            import traceback

            summary[name] = {'error': traceback.format_exc(), 'seconds': time.time() - started}
            report.step(name, False, f'{type(e).__name__}: {e}', seconds=time.time() - started)
            report.say(traceback.format_exc())
            return False
        result = result or {}
        result.setdefault('seconds', time.time() - started)
        summary[name] = result
        ctx[name] = result
        report.step(name, True, describe(result) + f'  ({time.time() - started:.1f}s)')
        return True

    # (a) install
    wheelhouse = args.wheelhouse or (None if args.cpu_smoke else DEFAULT_WHEELHOUSE)
    site = None
    if wheelhouse and not args.no_install:
        site = os.path.abspath(args.site)

        def do_install():
            result = install_wheelhouse(report, os.path.abspath(wheelhouse), site)
            if result['stale_foundry_files']:
                report.say(f'WARNING: the foundry wheel differs from the working tree in '
                           f'{len(result["stale_foundry_files"])} files ({", ".join(result["stale_foundry_files"][:5])}'
                           f'...): rerun `make gpu-wheels` and carry .whl/gpu again')
            return result

        def describe_install(r):
            stale = (f'; WARNING: the foundry wheel predates edits to {len(r["stale_foundry_files"])} files of the '
                     f'working tree' if r['stale_foundry_files'] else '')
            return (f'{r["wheels"]} wheels: {len(r["installed"])} installed into {r["site"]}, {len(r["kept"])} already '
                    f'on the machine and kept{stale}')

        if not step('install', do_install, describe_install):
            return finish(report, summary, failed)
        env['PYTHONPATH'] = site + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
        env['PATH'] = os.path.join(site, 'bin') + os.pathsep + env.get('PATH', '')
        sys.path.insert(0, site)

    def do_imports():
        if site is None and profile.device == 'cpu':
            # Nothing was installed: what runs is this environment's own packages (no 10-20 s import probe).
            from importlib import metadata

            versions = {d: metadata.version(d) for d in ('torch', 'transformers', 'mosaicml', 'mosaicml-streaming',
                                                        'numpy', 'foundry')}
            versions.update(python=sys.version.split()[0], cuda=None, device='cpu')
            return {'versions': versions, 'where': {}}
        result = import_check(env)
        if profile.device == 'gpu' and result['versions']['device'] == 'cpu':
            raise StepFailed('torch sees no CUDA device; run with --cpu-smoke on a machine without a GPU')
        return result

    if not step('imports', do_imports,
                lambda r: ', '.join(f'{k} {v}' for k, v in r['versions'].items())):
        return finish(report, summary, failed)
    summary['versions'] = ctx['imports']['versions']
    global DEVICE_NAME
    DEVICE_NAME = summary['versions'].get('device') or ''

    # (b) data
    data_root = os.path.join(work, 'data')

    step('data', lambda: prepare(report, profile, data_root, work, env), lambda r: (
        f'english + code MDS, {profile.vocab}-token BPE, samples of {profile.seq} tokens: '
        + ', '.join(f'{k} {v}' for k, v in r['samples'].items()) + f'; under {data_root}'))

    def do_configs():
        result = ctx['data']['configs']
        if 'error' in result:
            raise StepFailed(result['error'])
        return result

    step('configs', do_configs, lambda r: (f'{len(r["validated"])} command lines validated by foundry\'s load_config: '
                                          + ', '.join(r['validated'])))
    composer = None
    if failed is None:
        try:
            composer = composer_command(site)
        except StepFailed as e:
            report.step('launcher', False, str(e))
            failed = 'launcher'

    # (c) speed runs (on the CPU the first is also the uninterrupted reference of the resume step)
    first = profile.models[0]
    for i, run in enumerate(profile.models):
        def do_speed(run=run, reference=(i == 0 and not profile.separate_reference)):
            result = train_run(report, profile, run, ctx['data'], composer, env, work, deadline, run.name, reference)
            result['overrides_note'] = f'the {run.name} speed run'
            return result

        step(run.name, do_speed, lambda r, run=run: describe_speed(run.name, run, profile, r))

    # (d) resume: an uninterrupted run with checkpoints, then the same command killed and restarted
    reference_key = first.name
    if profile.separate_reference:
        reference_key = 'reference'

        def do_reference():
            result = train_run(report, profile, first, ctx['data'], composer, env, work, deadline,
                               f'{first.name}-uninterrupted', reference=True)
            result['overrides_note'] = f'{first.name}-uninterrupted'
            return result

        step('reference', do_reference, lambda r: (
            f'{first.name} uninterrupted, {first.batches} batches, sharded checkpoints every {profile.save_interval}: '
            f'loss {r["loss_first"]:.4f} -> {r["loss_last"]:.4f}, eval loss {r["eval_loss"]:.4f}; '
            f'{r["seconds"]:.0f}s launch to exit'))

    def do_resume():
        if reference_key not in ctx:
            raise StepFailed(f'no uninterrupted {first.name} run to compare with')
        result = resume_check(report, profile, first, ctx['data'], composer, env, work, deadline, ctx[reference_key])
        if result['problems']:
            raise StepFailed('resume: ' + '; '.join(result['problems'])
                             + f' (per-batch table: {os.path.join(out, "resume_losses.txt")})')
        return result

    def describe_resume(r):
        pre = ('exact' if r['pre_kill_exact'] else 'not logged' if r['pre_kill_max_abs_diff'] is None
               else f'max {r["pre_kill_max_abs_diff"]:.3g}')
        how = ('bit-identical' if r['exact'] else
               f'within {r["tolerance"]:g} (max |diff| {r["max_abs_diff"]:.3g}; before the kill: {pre})')
        return (f'SIGKILLed inside the batch-{r["killed_in_save_of_batch"]} save, resumed from '
                f'{os.path.basename(r["resumed_from"])}: losses of batches {r["resumed_at_batch"]}-{first.batches - 1} '
                f'{how} to the uninterrupted run ({r["batches_compared"]} batches), same data (token sums), eval loss '
                f'{"equal" if r["eval_exact"] else "within tolerance"} ({r["eval_loss"]:.6f})')

    step('resume', do_resume, describe_resume)

    # (e) export
    def do_export():
        checkpoint = ctx['resume']['checkpoint']
        result = export_check(report, profile, checkpoint, ctx['data'], env, site, work, deadline)
        if not result['max_abs_diff'] <= profile.logits_bound:
            raise StepFailed(f'export: max |logit difference| transformers vs foundry {result["max_abs_diff"]:.3g} > '
                             f'{profile.logits_bound:g}')
        return result

    step('export', do_export, lambda r: (
        f'foundry export hf -> transformers {r["theirs_class"]} on {r["device"]}: max |logit diff| vs foundry '
        f'({r["attn_impl"]}) {r["max_abs_diff"]:.3g} (bound {r["bound"]:g}; logits up to {r["max_abs_logit"]:.1f}, '
        f'argmax agrees {r["argmax_agree"] * 100:.1f}%) on {r["shape"][0]} x {r["shape"][1]} held-out tokens; '
        f'greedy generate ok'))
    return finish(report, summary, failed)


def finish(report: Report, summary: dict[str, Any], failed: Optional[str]) -> int:
    total = time.time() - report.started
    summary['steps'] = report.steps
    summary['passed'] = failed is None
    summary['failed_step'] = failed
    summary['seconds'] = total
    versions = summary.get('versions', {})
    head = ('foundry GPU check' if summary['mode'] == 'gpu' else 'foundry GPU check, CPU smoke mode') + (
        f' - {versions.get("device", "?")}, torch {versions.get("torch", "?")} (CUDA {versions.get("cuda")}), '
        f'transformers {versions.get("transformers", "?")}, Composer {versions.get("mosaicml", "?")}, '
        f'streaming {versions.get("mosaicml-streaming", "?")}, numpy {versions.get("numpy", "?")}, '
        f'Python {versions.get("python", "?")}' if versions else '')
    lines = [head, *report.lines,
             f'result   : {"PASS" if failed is None else f"FAIL ({failed})"} in {total:.0f}s; figures and logs in {report.out}']
    text = '\n'.join(lines) + '\n'
    with open(os.path.join(report.out, 'summary.txt'), 'w') as f:
        f.write(text)
    with open(os.path.join(report.out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=2, default=str)
    report.say('\n================ summary ================\n' + text.rstrip())
    return 0 if failed is None else 1


def _main() -> int:
    # Ctrl-C or SIGTERM: the training runs are in process groups of their own, so take them down too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return main()
    finally:
        Launch.kill_all()


if __name__ == '__main__':
    sys.exit(_main())
