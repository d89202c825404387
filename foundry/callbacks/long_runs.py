"""What `train()` wires in for long runs: preemption and Ctrl-C, the loss guard, the hang watchdog.

    long_run = LongRun(cfg, plan)          # first: signal handlers, before anything slow starts
    callbacks += long_run.callbacks()      # Composer callbacks for the three
    trainer.fit()
    long_run.finish(trainer)               # raises RunStopped after a stop on a signal
"""

from __future__ import annotations

import threading
from typing import Optional

from composer.core import Callback

from foundry.callbacks.loss_guard import loss_guard_callbacks
from foundry.callbacks.preemption import Preemption
from foundry.callbacks.watchdog import watchdog_callbacks


class LongRun:
    def __init__(self, cfg, plan) -> None:
        from composer.utils import format_name_with_dist

        self.cfg = cfg
        self.run_folder = plan.run_folder
        self.save_folder: Optional[str] = format_name_with_dist(cfg.save_folder, plan.run_name) if cfg.save_folder else None
        self.preemption: Optional[Preemption] = None
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers belong to the main thread (train() called from another one: a notebook's)
        if cfg.preemption.enabled:
            self.preemption = Preemption(cfg.preemption.deadline_s, cfg.preemption.exit_code, self.save_folder,
                                         plan.autoresume)
            self.preemption.install()
        else:
            from foundry.stopping import default_signals

            default_signals()  # not main()'s startup handlers: training is under way

    def callbacks(self) -> list[Callback]:
        callbacks: list[Callback] = watchdog_callbacks(self.cfg, self.run_folder)
        callbacks += loss_guard_callbacks(self.cfg, self.save_folder)
        if self.preemption is not None:
            callbacks.append(self.preemption)
        return callbacks

    def finish(self, trainer) -> None:
        if self.preemption is not None:
            self.preemption.uninstall()
            self.preemption.finish(trainer)
