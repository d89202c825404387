"""Config sections for long runs: `preemption`, `loss_guard` and `watchdog` (checked like every other key).

The behaviour lives in foundry/callbacks/{preemption,loss_guard,watchdog}.py; this module stays free of
torch and Composer imports so that validation runs before the heavy imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional

from foundry.config.errors import ConfigError


def _exit_code(value: int, path: str) -> None:
    # 130 is what a Ctrl-C stop exits with; 0 would tell the scheduler the run finished.
    if not 1 <= value <= 255 or value == 130:
        raise ConfigError(f'`{path}` is {value}; expected an exit status from 1 to 255 other than 130 (Ctrl-C)')


@dataclass
class PreemptionConfig:
    """SIGTERM / SIGUSR1 (SLURM, Kubernetes, spot instances) and Ctrl-C: finish the batch, checkpoint, exit."""

    enabled: bool = True
    # From the signal to the exit, checkpoint included. SLURM's KillWait and Kubernetes'
    # terminationGracePeriodSeconds default to 30 s; Composer's launcher waits 30 s after a Ctrl-C.
    deadline_s: float = 25.0
    # 75 = EX_TEMPFAIL ("try again later"): launch/slurm/train.sbatch requeues the job on it and
    # launch/k8s/train-job.yaml's podFailurePolicy restarts the pod.
    exit_code: int = 75

    def check(self, path: str) -> None:
        if self.deadline_s <= 0:
            raise ConfigError(f'`{path}.deadline_s` is {self.deadline_s:g}; expected a number of seconds above 0')
        _exit_code(self.exit_code, f'{path}.exit_code')


@dataclass
class LossGuardConfig:
    """What to do about a non-finite loss or gradient norm, or a loss spike."""

    # off: nothing checked; warn: log it; skip: drop that batch's update;
    # rollback: drop it, restore the model and optimizer from the last checkpoint and skip the next
    # `skip_batches` batches of data (PaLM's remedy for spikes).
    # (YAML reads a bare `off` as false, which means 'off' too.)
    action: Literal['off', 'warn', 'skip', 'rollback', False] = 'off'
    # A spike is a loss above the running mean of the last `window` batches by this many standard
    # deviations; null checks for non-finite values only.
    spike_sigmas: Optional[float] = None
    window: int = 100
    skip_batches: int = 100

    def check(self, path: str) -> None:
        if self.action is False:
            self.action = 'off'
        if self.spike_sigmas is not None and self.spike_sigmas <= 0:
            raise ConfigError(f'`{path}.spike_sigmas` is {self.spike_sigmas:g}; expected a positive number of '
                              f'standard deviations, or null for non-finite values only')
        if self.window < 2:
            raise ConfigError(f'`{path}.window` is {self.window}; expected at least 2 batches')
        if self.skip_batches < 0:
            raise ConfigError(f'`{path}.skip_batches` is {self.skip_batches}; expected 0 or more batches')


@dataclass
class WatchdogConfig:
    """Notice a rank that makes no progress, dump every rank's Python stacks, end the job."""

    timeout_s: Optional[float] = None  # null: no watchdog
    exit_code: int = 1

    def check(self, path: str) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ConfigError(f'`{path}.timeout_s` is {self.timeout_s:g}; expected seconds above 0, or null for no '
                              f'watchdog')
        _exit_code(self.exit_code, f'{path}.exit_code')


def check_long_run_config(cfg) -> None:
    """Rules across sections (called from TrainConfig.check)."""
    guard = cfg.loss_guard
    if guard.action == 'rollback':
        if not cfg.save_folder:
            raise ConfigError('`loss_guard.action: rollback` restores the last checkpoint, and this run saves none: set '
                              '`save_folder` (and `save_interval`), or use `loss_guard.action: skip`')
        if '://' in cfg.save_folder:
            raise ConfigError(f'`loss_guard.action: rollback` reads the last checkpoint from a local `save_folder`; '
                              f'{cfg.save_folder!r} is remote: use `loss_guard.action: skip` there')
        if cfg.fsdp_config is None or cfg.fsdp_config.state_dict_type != 'sharded':
            raise ConfigError('`loss_guard.action: rollback` needs sharded checkpoints: set '
                              '`fsdp_config.state_dict_type: sharded`, or use `loss_guard.action: skip`')
