"""How a rank stops on a signal before training starts, and the exception that carries any stop to `main()`.

Kept free of torch and Composer imports: `main()` installs `stop_on_signals_during_startup()` first
thing, so a SIGTERM, SIGUSR1 or Ctrl-C that arrives while the heavy modules load, the config is read or
the model is built ends the rank with one line instead of a traceback (or, for SIGTERM, a silent death).
Once training is set up, foundry/callbacks/preemption.py takes the signals over.
"""

from __future__ import annotations

import signal

INTERRUPT_EXIT_CODE = 130  # 128 + SIGINT, what shells report for a Ctrl-C
REQUEUE_EXIT_CODE = 75  # EX_TEMPFAIL, preemption.exit_code's default
SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class RunStopped(BaseException):
    """A stop on a signal; `main()` prints the message and exits with `exit_code`.

    A BaseException (like KeyboardInterrupt) so that no `except Exception` on the way swallows it.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def stop_on_signals_during_startup() -> dict[int, object]:
    """Install the startup handlers; returns the previous ones (for `restore_signals`)."""

    def stop(signum: int, frame) -> None:
        del frame  # unused
        interrupt = signum == signal.SIGINT
        what = 'interrupted (Ctrl-C)' if interrupt else f'preempted ({signal.Signals(signum).name})'
        raise RunStopped(f'{what} before training started: nothing to save; run the same command to start again',
                         INTERRUPT_EXIT_CODE if interrupt else REQUEUE_EXIT_CODE)

    return {sig: signal.signal(sig, stop) for sig in SIGNALS}


def restore_signals(previous: dict[int, object]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def default_signals() -> None:
    """What Python starts with: SIGTERM and SIGUSR1 end the process, Ctrl-C raises KeyboardInterrupt."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def leave_after_local_rank_zero(timeout_s: float = 60.0) -> None:
    """After a stop, on ranks other than local rank 0: end by SIGTERM once local rank 0 has exited.

    Composer's launcher reports the first rank it finds exited (in rank order, every 0.1 s) and prints
    the whole captured log of any rank that exits with a status of its own; a rank ended by SIGTERM
    it counts as one it killed. So local rank 0 carries the exit status and the others end by
    SIGTERM, after it: from the launcher (which sends it as soon as it sees rank 0 exit) or their own.
    Local rank 0 is found among the launcher's children by its LOCAL_RANK.
    """
    import os
    import time

    if os.environ.get('LOCAL_RANK', '0') == '0':
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    zero = _local_rank_zero()
    deadline = time.monotonic() + timeout_s
    while zero is not None and time.monotonic() < deadline and _running(zero):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


def _local_rank_zero():
    import os

    import psutil

    try:
        for sibling in psutil.Process(os.getppid()).children():
            if sibling.pid != os.getpid() and sibling.environ().get('LOCAL_RANK') == '0':
                return sibling
    except (psutil.Error, OSError):
        pass
    return None


def _running(process) -> bool:
    import psutil

    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
