"""The config check in the launcher process, before any rank exists (`python -m foundry.launch`).

Composer's launcher starts N ranks that each validate the config; a mistake then surrounds the one
line with the launcher's own lines ("Rank 0 crashed ...", "Waiting up to 30 seconds ..."). Where foundry
runs the launcher itself, the config is checked once here first and a mistake ends the launch with the
line alone. Only the checks that need neither torch nor the model run here (well under a second); the
ranks run the full pass, MPTConfig included, as before.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

# Composer launcher options that take a value (composer/cli/launcher.py).
_VALUE_OPTIONS = {'-n', '--nproc', '--stdout', '--stderr', '--world_size', '--base_rank', '--node_rank',
                  '--master_addr', '--master_port'}


def training_args(argv: Sequence[str]) -> Optional[list[str]]:
    """`[YAML, key=value, ...]` when `argv` (the launcher's arguments) runs foundry's launch/train.py, else None."""
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in _VALUE_OPTIONS:
            i += 2
            continue
        if arg.startswith('-'):
            i += 1
            continue
        script, rest = arg, args[i + 1:]
        if os.path.basename(script) == 'train.py' and os.path.basename(os.path.dirname(os.path.abspath(script))) \
                == 'launch' and rest and not rest[0].startswith('-'):
            return rest
        return None
    return None


def check_before_launch(argv: Sequence[str]) -> Optional[int]:
    """Exit status 2 after printing the one line if the training config is refused; None to go on launching."""
    import sys

    from foundry.config.errors import ConfigError
    from foundry.config.load import load_config
    from foundry.config.rules import check_environment
    from foundry.data.errors import DataError

    args = training_args(argv)
    if args is None:
        return None
    try:
        check_environment(load_config(args[0], args[1:], model=False))
    except (ConfigError, DataError) as e:
        kind = 'config error' if isinstance(e, ConfigError) else 'data error'
        print(f'foundry: {kind}: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
        return 2
    return None
