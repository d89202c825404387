"""(c) runs: launching `composer -n 1 launch/train.py`, reading its metrics.jsonl, the speed figures."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Optional

from profiles import REPO, ModelRun, Profile
from report import Report, StepFailed

# launch/bench/gpu_bench.py on one H200 (README, Speed): pure-torch loop, flex + compile, same batch.
BENCH_H200 = {'mpt-125m': (341_108, 0.334), 'mpt-1b': (55_115, 0.506)}
DEVICE_NAME = ''  # torch.cuda.get_device_name(), set by check.py once the imports step has run


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


def describe_reference(run: ModelRun, profile: Profile, r: dict[str, Any]) -> str:
    return (f'{run.name} uninterrupted, {run.batches} batches, sharded checkpoints every {profile.save_interval}: '
            f'loss {r["loss_first"]:.4f} -> {r["loss_last"]:.4f}, eval loss {r["eval_loss"]:.4f}; '
            f'{r["seconds"]:.0f}s launch to exit')
