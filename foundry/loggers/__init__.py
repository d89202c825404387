"""Logger registry: config `loggers: {name: {key: value}}` -> Composer logger destinations.

`LOGGER_KEYS` maps each name to its valid keys and defaults (read off the class
signature) for the config validator. The JSON-lines metrics file
(`foundry.loggers.jsonl.JSONLinesLogger`) is not configured here: the train entry
point adds it to every run.

wandb needs no account when `WANDB_MODE=offline` (runs land under `WANDB_DIR`,
to be synced later with `wandb sync`) or `WANDB_MODE=disabled`.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from composer.loggers import LoggerDestination, TensorboardLogger

from foundry.loggers.wandb_logger import WandBLogger
from foundry.registry import build_each, signature_keys

LOGGERS: dict[str, Callable[..., LoggerDestination]] = {
    # Composer's WandBLogger (project, entity, name, group, tags, log_artifacts, init_kwargs),
    # patched for wandb >= 0.31; see wandb_logger.py.
    'wandb': WandBLogger,
    'tensorboard': TensorboardLogger,  # log_dir
}

LOGGER_KEYS: dict[str, dict[str, Any]] = {name: signature_keys(cls) for name, cls in LOGGERS.items()}


def build_loggers(cfg: Mapping[str, Mapping[str, Any] | None] | None) -> list[LoggerDestination]:
    """One logger per entry, in config order; an entry may be empty (`wandb: {}` or `wandb:`).

    Raises ValueError for an unknown name or key, suggesting the nearest valid one.
    """
    return build_each(cfg, LOGGERS, LOGGER_KEYS, 'logger')
