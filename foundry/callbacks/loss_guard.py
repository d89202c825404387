"""Loss guard: act on a non-finite loss or gradient norm, or a loss spike, before the optimizer step.

After the backward pass of every batch (Composer's AFTER_TRAIN_BATCH, before `optimizer.step()`), the
guard all-reduces this batch's loss and the squared norm of the rank's local gradients in one
two-element collective, so every rank sees the same values and takes the same decision. That is one
device-to-host read per batch while the guard is on (`loss_guard.action: off`, the default, adds
nothing). A problem is a non-finite loss or gradient norm, or, with `spike_sigmas` set, a loss above
the mean of the last `window` accepted batches by `spike_sigmas` standard deviations. Then:

* `warn`: log it; the update is applied;
* `skip`: the update is dropped (every gradient is removed before the optimizer step, which then
  leaves every parameter and its optimizer state as they were; the learning-rate schedule still moves);
* `rollback`: the update is dropped, the model and optimizer are restored from the last checkpoint
  (`latest-rank0.pt` in the local save folder, sharded), and the next `skip_batches` batches are
  read and run but not applied: their data is skipped, as PaLM did after its spikes. The batch
  counter, the data position and the schedule keep going forward, so checkpoints saved afterwards
  resume exactly like any other.

Every action is logged with the batch number (`loss guard: batch 5: non-finite loss (nan): ...`) and
recorded in metrics.jsonl (`loss_guard/skipped`, `loss_guard/rolled_back_to`). The running window and
pending skips are part of the checkpoint (Composer saves callbacks' state), so a resumed run decides
as the uninterrupted one would.

`FOUNDRY_INJECT_NAN=<batch>` (tests) makes that batch's loss NaN, so its gradients are NaN as well.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from typing import Any, Optional

import torch
from composer.core import Callback, State
from composer.loggers import Logger

log = logging.getLogger(__name__)

INJECT_ENV = 'FOUNDRY_INJECT_NAN'


def _total_loss(loss: Any) -> torch.Tensor:
    if isinstance(loss, dict):
        loss = loss['total'] if 'total' in loss else sum(loss.values())
    elif isinstance(loss, (list, tuple)):
        loss = sum(loss)
    return loss.detach().float().reshape(())


class SpikeDetector:
    """Running mean and standard deviation of the last `window` accepted losses."""

    def __init__(self, window: int, sigmas: Optional[float]) -> None:
        self.sigmas = sigmas
        self.history: deque[float] = deque(maxlen=window)

    def check(self, loss: float) -> Optional[str]:
        """A description of the spike, or None (and the loss joins the window)."""
        if self.sigmas is not None and len(self.history) == self.history.maxlen:
            mean = sum(self.history) / len(self.history)
            std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / (len(self.history) - 1))
            if loss > mean + self.sigmas * std:
                return (f'loss spike: {loss:.4g} is above the mean of the last {len(self.history)} batches ({mean:.4g}) '
                        f'by {(loss - mean) / std if std else math.inf:.1f} standard deviations ({std:.3g}; limit '
                        f'{self.sigmas:g})')
        self.history.append(loss)
        return None


class LossGuard(Callback):
    def __init__(self, action: str, spike_sigmas: Optional[float], window: int, skip_batches: int,
                 save_folder: Optional[str]) -> None:
        self.action = action
        self.skip_batches = skip_batches
        self.save_folder = save_folder
        self.spikes = SpikeDetector(window, spike_sigmas)
        self.skip_remaining = 0
        self.rolled_back_at: Optional[int] = None
        self._loss_sum: Optional[torch.Tensor] = None
        self._microbatches = 0

    # -- checkpointed state ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {'history': list(self.spikes.history), 'skip_remaining': self.skip_remaining,
                'rolled_back_at': self.rolled_back_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spikes.history.clear()
        self.spikes.history.extend(float(x) for x in state.get('history', []))
        self.skip_remaining = int(state.get('skip_remaining', 0))
        self.rolled_back_at = state.get('rolled_back_at')

    # -- per batch ---------------------------------------------------------------------------------
    def before_train_batch(self, state: State, logger: Logger) -> None:
        del state, logger  # unused
        self._loss_sum, self._microbatches = None, 0

    def after_loss(self, state: State, logger: Logger) -> None:
        del logger  # unused
        loss = _total_loss(state.loss)
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._microbatches += 1

    def after_train_batch(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)  # the 0-based index of the batch being trained
        if self.skip_remaining > 0:
            self.skip_remaining -= 1
            self._drop_update(state)
            log.warning('loss guard: batch %d: data skipped after the rollback at batch %s (%d more to skip)', batch,
                        self.rolled_back_at, self.skip_remaining)
            logger.log_metrics({'loss_guard/skipped': 1})
            return
        loss, grad_norm = self._global_values(state)
        problem = None
        if not math.isfinite(loss):
            problem = f'non-finite loss ({loss})'
        elif not math.isfinite(grad_norm):
            problem = f'non-finite gradient norm ({grad_norm})'
        else:
            problem = self.spikes.check(loss)
        if problem is None:
            return
        if self.action == 'warn':
            log.warning('loss guard: batch %d: %s; the update is applied (loss_guard.action: warn)', batch, problem)
            logger.log_metrics({'loss_guard/warned': 1})
            return
        self._drop_update(state)
        if self.action == 'skip':
            log.warning('loss guard: batch %d: %s; the update is dropped (loss_guard.action: skip)', batch, problem)
            logger.log_metrics({'loss_guard/skipped': 1})
            return
        checkpoint = self._latest_checkpoint()
        if checkpoint is None:
            log.warning('loss guard: batch %d: %s; no checkpoint saved yet to roll back to: the update is dropped',
                        batch, problem)
            logger.log_metrics({'loss_guard/skipped': 1})
            return
        restored_batch = _restore(state, logger, checkpoint)
        self.rolled_back_at, self.skip_remaining = batch, self.skip_batches
        log.warning('loss guard: batch %d: %s; the update is dropped, the model and optimizer are restored from %s '
                    '(batch %d) and the next %d batches of data are skipped (loss_guard.action: rollback)', batch,
                    problem, checkpoint, restored_batch, self.skip_batches)
        logger.log_metrics({'loss_guard/skipped': 1, 'loss_guard/rolled_back_to': restored_batch})

    # -- helpers -----------------------------------------------------------------------------------
    def _global_values(self, state: State) -> tuple[float, float]:
        """(mean loss over ranks, gradient norm): one all-reduce; NaN/inf on any rank shows on all."""
        from composer.utils import dist

        grads = []
        for p in state.model.parameters():
            if p.grad is not None:
                g = p.grad
                grads.append(g.to_local() if hasattr(g, 'to_local') else g)
        device = grads[0].device if grads else (self._loss_sum.device if self._loss_sum is not None else 'cpu')
        grad_sq = torch.zeros((), device=device)
        if grads:
            norms = torch._foreach_norm(grads, 2.0)
            grad_sq = torch.stack([n.float() for n in norms]).pow(2).sum()
        loss = (self._loss_sum / max(self._microbatches, 1)).to(device) if self._loss_sum is not None else torch.zeros(
            (), device=device)
        packed = torch.stack([loss, grad_sq])
        dist.all_reduce(packed, reduce_operation='SUM')
        total_loss, total_sq = packed.tolist()
        # Replicated gradients (HSDP, no sharding) count once per replica: exact enough for a finiteness test.
        return total_loss / dist.get_world_size(), math.sqrt(total_sq) if total_sq >= 0 else math.nan

    @staticmethod
    def _drop_update(state: State) -> None:
        # Optimizers leave a parameter without a gradient untouched (no momentum, no weight decay).
        # This runs before `optimizer.step()` updates, also when Composer calls step(closure) and the
        # backward pass (with this event) happens inside it.
        for p in state.model.parameters():
            p.grad = None

    def _latest_checkpoint(self) -> Optional[str]:
        if not self.save_folder:
            return None
        pointer = os.path.join(self.save_folder, 'latest-rank0.pt')
        if not os.path.lexists(pointer):
            return None
        return os.path.realpath(pointer)


def _restore(state: State, logger: Logger, checkpoint: str) -> int:
    """Load model and optimizer (only) from a sharded checkpoint into the live, sharded state; its batch."""
    import re

    import torch.distributed.checkpoint as dcp

    wanted = {'state': {'model': state.get_model_state_dict(), 'optimizers': state.get_optim_state_dict()}}
    dcp.load(wanted, checkpoint_id=checkpoint)
    state.load_model_state(wanted['state'], logger, strict=True)
    state.load_optim_state(wanted['state'], strict=True)
    match = re.search(r'ba(\d+)', os.path.basename(checkpoint.rstrip('/')))
    return int(match.group(1)) if match else -1


class InjectNaN(Callback):
    """Test fault (FOUNDRY_INJECT_NAN=<batch>): that batch's loss becomes NaN on every rank, before backward."""

    def __init__(self, spec: str) -> None:
        if not spec.isdigit():
            raise ValueError(f'{INJECT_ENV}={spec!r}: expected a batch number')
        self.batch = int(spec)

    def after_loss(self, state: State, logger: Logger) -> None:
        del logger  # unused
        if int(state.timestamp.batch) == self.batch:  # every microbatch of it
            log.warning('fault injection (%s): the loss of batch %d is NaN', INJECT_ENV, self.batch)
            state.loss = state.loss * float('nan')


def loss_guard_callbacks(cfg, save_folder: Optional[str]) -> list[Callback]:
    callbacks: list[Callback] = []
    if os.environ.get(INJECT_ENV):
        callbacks.append(InjectNaN(os.environ[INJECT_ENV]))  # before the guard, which reads the loss after it
    guard = cfg.loss_guard
    if guard.action != 'off':
        callbacks.append(LossGuard(guard.action, guard.spike_sigmas, guard.window, guard.skip_batches, save_folder))
    return callbacks
