"""Composer's WandBLogger, made to work with the wandb releases our pins allow.

Composer 0.32.1 calls `wandb.run.get_url()` in `init`; wandb 0.31 removed that method
(the `Run.url` property replaces it), so the stock logger crashes on its first event
and then again in `post_close`. We add `get_url` back as an alias of `url` when it is
missing, just before Composer's `init` needs it. The alias only fills the gap; with an
older wandb that still has `get_url` nothing changes.
"""

from __future__ import annotations

from composer.core import State
from composer.loggers import Logger
from composer.loggers import WandBLogger as _ComposerWandBLogger


class WandBLogger(_ComposerWandBLogger):
    """Composer's WandBLogger (same arguments) that also runs on wandb >= 0.31."""

    def init(self, state: State, logger: Logger) -> None:
        _ensure_run_get_url()
        super().init(state, logger)


def _ensure_run_get_url() -> None:
    from wandb.sdk.wandb_run import Run

    if not hasattr(Run, 'get_url'):
        # An offline run has no url: `url` returns None (with a wandb warning), as get_url did.
        Run.get_url = lambda self: self.url  # type: ignore[attr-defined]
