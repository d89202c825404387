"""Stop cleanly on SIGTERM / SIGUSR1 (preemption) and on Ctrl-C: finish the batch, checkpoint, exit.

SLURM (time limit, preemption, `--signal=USR1@120`), Kubernetes (pod deletion) and spot-instance
shutdowns send SIGTERM or SIGUSR1 and kill the job a grace period later (SLURM's KillWait and
Kubernetes' terminationGracePeriodSeconds are 30 s by default). On the first such signal every rank
finishes the batch it is in. At the end of each batch the ranks agree on whether any of them got a
signal (one all-reduce of a flag on a CPU process group: a signal that reaches only some ranks, or
reaches them during different batches, still stops all of them after the same batch), and then call
Composer's `stop_training()`, so Composer's checkpoint saver writes that batch's checkpoint as the
end of training, through its usual path (latest pointer, upload, rotation). The run then exits with
`preemption.exit_code` (75, EX_TEMPFAIL); Composer's launcher passes it on, launch/slurm/train.sbatch
requeues the job on it and launch/k8s/train-job.yaml's podFailurePolicy restarts the pod, and the same
command resumes from that checkpoint, bit-identically (autoresume; foundry/checkpoint/resume.py).

`preemption.deadline_s` bounds the whole stop: a rank still running then (a slow batch, a stuck save)
exits at once with the same status, naming what it was doing; autoresume then takes the previous
whole checkpoint and sets a half-written one aside.

Ctrl-C (SIGINT) stops the same way with exit status 130; a second Ctrl-C exits at once. Before
training starts (building the model, loading data) a signal stops the rank right away: there is
nothing to save yet.

Composer's own launcher dies on SIGTERM and SIGUSR1 (it handles Ctrl-C only); `python -m
foundry.launch` is that launcher with both forwarded to the ranks (launch/env/train.sh uses it).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Optional

from composer.core import Callback, State
from composer.loggers import Logger

from foundry.stopping import INTERRUPT_EXIT_CODE, SIGNALS, RunStopped

log = logging.getLogger(__name__)

_KINDS = ('SIGTERM', 'SIGUSR1', 'SIGINT')


class Preemption(Callback):
    """Installs the signal handlers (`install()`, main thread) and stops training at a batch boundary."""

    def __init__(self, deadline_s: float = 25.0, exit_code: int = 75, save_folder: Optional[str] = None,
                 autoresume: bool = True) -> None:
        self.deadline_s = deadline_s
        self.exit_code = exit_code
        self.save_folder = save_folder
        self.autoresume = autoresume
        self.signal_name: Optional[str] = None
        self.phase = 'startup'  # 'startup' -> 'fit' -> 'done'
        self.stopped_after: Optional[int] = None  # batches finished when training stopped
        self._group = None
        self._previous: dict[int, object] = {}
        self._exiting = threading.Event()

    # -- signals -------------------------------------------------------------------------------
    def install(self) -> None:
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._on_signal)

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _on_signal(self, signum: int, frame) -> None:
        del frame  # unused
        name = signal.Signals(signum).name
        if self.signal_name is not None:
            if signum == signal.SIGINT and self.signal_name == 'SIGINT':
                _exit_now(f'foundry: second Ctrl-C: stopping now, without a checkpoint; {self._resume_hint()}',
                          INTERRUPT_EXIT_CODE)
            if signum == signal.SIGINT:
                # A Ctrl-C reaches the launcher too, whose SIGTERM to the ranks can be handled first: the
                # stop under way is the Ctrl-C's (exit status 130).
                self.signal_name = 'SIGINT'
            return  # one stop at a time (Composer's launcher follows a Ctrl-C with SIGTERM)
        self.signal_name = name
        if self.phase == 'done':
            return
        threading.Thread(target=self._enforce_deadline, name='foundry-preemption-deadline', daemon=True).start()
        if self.phase == 'startup':
            raise RunStopped(f'{self._what()} before training started: nothing to save; {self._resume_hint()}',
                             self._code())
        log.warning('%s received: every rank finishes its current batch, then %s (deadline %gs)', name,
                    'the run saves a checkpoint and exits' if self.save_folder else 'the run exits (no save_folder)',
                    self.deadline_s)

    def _enforce_deadline(self) -> None:
        if self._exiting.wait(self.deadline_s):
            return
        from foundry.callbacks.watchdog import main_thread_where

        _exit_now(f'foundry: {self._what()}: not stopped within preemption.deadline_s={self.deadline_s:g}s (this rank '
                  f'was in {main_thread_where()}); exiting without a new checkpoint; {self._resume_hint()}',
                  self._code())

    # -- Composer events -----------------------------------------------------------------------
    def fit_start(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            # The flag is a CPU tensor: on NCCL jobs it travels on a gloo group (no device sync per batch).
            self._group = None if 'gloo' in str(tdist.get_backend()) else tdist.new_group(backend='gloo')
        self.phase = 'fit'

    def batch_end(self, state: State, logger: Logger) -> None:
        del logger  # unused
        if not self._any_rank_signalled():
            return
        if state.get_elapsed_duration() >= 1:
            return  # the last batch: the run finishes as usual
        self.stopped_after = int(state.timestamp.batch)
        # The checkpoint saver (BATCH_CHECKPOINT, next) saves at the end of training: this batch.
        state.stop_training()

    def fit_end(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self.phase = 'done'

    def _any_rank_signalled(self) -> bool:
        import torch
        import torch.distributed as tdist

        # 0: none; else 1 + the signal's place in _KINDS (the max wins: a Ctrl-C anywhere is a Ctrl-C).
        code = 0 if self.signal_name is None else 1 + _KINDS.index(self.signal_name)
        flag = torch.tensor([code], dtype=torch.int32)
        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            tdist.all_reduce(flag, op=tdist.ReduceOp.MAX, group=self._group)
        agreed = int(flag.item())
        if agreed > code:  # the signal (or the Ctrl-C) reached other ranks only
            if self.signal_name is None:
                threading.Thread(target=self._enforce_deadline, name='foundry-preemption-deadline',
                                 daemon=True).start()
            self.signal_name = _KINDS[agreed - 1]
        return agreed > 0

    # -- after fit -----------------------------------------------------------------------------
    def finish(self, trainer) -> None:
        """After `fit()`: raise RunStopped if training stopped on a signal (the checkpoint is written by now)."""
        self.phase = 'done'
        if self.stopped_after is None:
            self._exiting.set()
            return
        saved = _saved_checkpoint(trainer, self.stopped_after)
        # Every rank stopped after the same batch: take the process group down together now. Left to exit
        # time, a rank that outlives rank 0 (which hosts the rendezvous store) waits on the gone store
        # until the launcher kills it.
        trainer.close()
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized():
            tdist.destroy_process_group()
        if saved:
            where = f'saved checkpoint {saved} in {self.save_folder}'
        elif self.save_folder:
            where = 'no checkpoint was written (see the log above)'
        else:
            where = 'nothing saved (no save_folder)'
        self._exiting.set()
        raise RunStopped(f'{self._what()}: stopped after {self.stopped_after} batches; {where}; {self._resume_hint(saved)}',
                         self._code())

    def _code(self) -> int:
        return INTERRUPT_EXIT_CODE if self.signal_name == 'SIGINT' else self.exit_code

    def _what(self) -> str:
        if self.signal_name == 'SIGINT':
            return 'interrupted (Ctrl-C)'
        return f'preempted ({self.signal_name}; exit status {self.exit_code}: requeue)'

    def _resume_hint(self, saved: Optional[str] = None) -> str:
        if not self.save_folder:
            return 'set save_folder to make a run resumable'
        if self.autoresume:
            return f'run the same command to resume{" from it" if saved else " from the last checkpoint"}'
        return f'resume with load_path={saved or "<the last checkpoint in " + self.save_folder + ">"}'


def _saved_checkpoint(trainer, batch: int) -> Optional[str]:
    """The name of the checkpoint Composer saved at `batch` (`ep0-ba3`, `ep0-ba3-rank0.pt`), if any."""
    from composer.callbacks import CheckpointSaver

    for callback in trainer.state.callbacks:
        if isinstance(callback, CheckpointSaver) and callback.saved_checkpoints:
            if int(callback.last_checkpoint_batch) != batch:
                return None
            path = str(callback.saved_checkpoints[-1])
            # sharded: .../ep0-ba3/__0_0.distcp -> ep0-ba3
            return os.path.basename(os.path.dirname(path) if path.endswith('.distcp') else path)
    return None


def _exit_now(message: str, code: int) -> None:
    """Print one line and leave without unwinding (the main thread may be stuck in a collective)."""
    print(message, file=sys.stderr, flush=True)
    for handler in logging.getLogger().handlers + logging.getLogger('foundry').handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
    sys.stdout.flush()
    os._exit(code)
