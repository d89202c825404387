"""Start-up time: what Composer does before the first batch that a run need not wait for (and,
since it is the same lookup, at every checkpoint).

Composer's Trainer logs the host CPU's model name, which it gets from py-cpuinfo; py-cpuinfo
starts a whole second Python interpreter to read it: 1.1 s of every rank's start-up on this
repository's 2-core machine (cProfile of `launch/train.py`, 11% of the time to the first batch
of train_bench's config (c)). Linux has the name in /proc/cpuinfo; elsewhere Composer's own
lookup runs as before.
"""

from __future__ import annotations

import functools


@functools.lru_cache(maxsize=1)
def cpu_model_name() -> str | None:
    """The processor's name from /proc/cpuinfo (Linux), or None where it is not there."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            for line in f:
                key, _, value = line.partition(':')
                if key.strip() in ('model name', 'Model') and value.strip():
                    return value.strip()
    except OSError:
        pass
    return None


def read_cpu_model_without_a_subprocess() -> None:
    """Make Composer's env report take the CPU name from /proc/cpuinfo when it is there."""
    from composer.utils import collect_env

    original = collect_env.get_cpu_model
    if getattr(original, 'reads_proc_cpuinfo', False):  # an earlier train() in this process
        return

    def get_cpu_model() -> str:
        return cpu_model_name() or original()

    get_cpu_model.reads_proc_cpuinfo = True
    collect_env.get_cpu_model = get_cpu_model


def look_up_composers_commit_once() -> None:
    """Composer's commit hash, looked up once per process instead of at every checkpoint.

    Every checkpoint's metadata carries Composer's environment report, whose commit lookup walks
    the package's installed files: 30 ms of each save on this machine (cProfile of a demo-size
    run), in a save of the demo model that otherwise takes tens of milliseconds. It cannot change
    while the process runs.
    """
    from composer.utils import collect_env

    if getattr(collect_env.get_composer_commit_hash, 'cache_info', None) is None:
        collect_env.get_composer_commit_hash = functools.lru_cache(maxsize=1)(collect_env.get_composer_commit_hash)
