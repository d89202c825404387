"""Composer's launcher, with SIGTERM and SIGUSR1 passed on to the training processes.

    python -m foundry.launch -n 8 launch/train.py YAML [key=value ...]     # the same arguments as `composer`

Composer's launcher dies on SIGUSR1 (SLURM's `--signal`), which orphans the ranks and loses their exit
status, and meets SIGTERM (SLURM, Kubernetes, spot-instance shutdowns) and Ctrl-C with a traceback
(Composer's import turns both into sys.exit) before it passes SIGTERM on. Here the launcher
runs in this process with handlers that forward both signals to every rank; the ranks finish their batch,
save a checkpoint and exit with `preemption.exit_code` (foundry/callbacks/preemption.py), and the
launcher exits with that status. launch/env/train.sh (SLURM, Kubernetes) starts training through it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys

log = logging.getLogger('foundry.launch')


def _forward(signum: int, frame) -> None:
    del frame  # unused
    import psutil

    name = signal.Signals(signum).name
    children = psutil.Process().children()
    print(f'foundry.launch: {name} received; passed on to {len(children)} training process(es), which save a '
          f'checkpoint and exit', file=sys.stderr, flush=True)
    for child in children:
        try:
            os.kill(child.pid, signum)
        except ProcessLookupError:
            pass


def main() -> int:
    from foundry.config.preflight import check_before_launch

    status = check_before_launch(sys.argv[1:])  # a config mistake: its one line, no ranks, no launcher lines
    if status is not None:
        return status
    from composer.cli import launcher

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _forward)
    # Importing Composer turned Ctrl-C into sys.exit(130) (composer/core/engine.py), which its launcher
    # reports with a traceback; KeyboardInterrupt is what the launcher expects.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.argv[0] = 'composer'
    return launcher.main()


if __name__ == '__main__':
    sys.exit(main())
