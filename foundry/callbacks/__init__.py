"""Callback registry: config `callbacks: {name: {key: value}}` -> Composer callbacks.

The names are llm-foundry's, so its YAML `callbacks:` sections work unchanged.
`CALLBACK_KEYS` maps each name to its valid keys and defaults (read off the class
signature) for the config validator.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from composer.callbacks import LRMonitor, MemoryMonitor, OptimizerMonitor, RuntimeEstimator, SpeedMonitor
from composer.core import Callback

from foundry.checkpoint.hf_checkpointer import HuggingFaceCheckpointer
from foundry.callbacks.mfu import ThroughputMonitor
from foundry.registry import build_each, signature_keys

CALLBACKS: dict[str, Callable[..., Callback]] = {
    'speed_monitor': SpeedMonitor,  # throughput/* over a window_size-batch window
    'lr_monitor': LRMonitor,
    'memory_monitor': MemoryMonitor,  # accelerator memory; logs nothing on CPU
    'runtime_estimator': RuntimeEstimator,
    'optimizer_monitor': OptimizerMonitor,  # grad/param norms every batch_log_interval batches
    'hf_checkpointer': HuggingFaceCheckpointer,  # Hugging Face folders every save_interval (local or s3)
    'throughput_monitor': ThroughputMonitor,  # tokens/s, MFU/HFU vs a GPU table or a measured CPU peak
}

CALLBACK_KEYS: dict[str, dict[str, Any]] = {name: signature_keys(cls) for name, cls in CALLBACKS.items()}


def build_callbacks(cfg: Mapping[str, Mapping[str, Any] | None] | None) -> list[Callback]:
    """One callback per entry, in config order; an entry may be empty (`lr_monitor: {}` or `lr_monitor:`).

    Raises ValueError for an unknown name or key, suggesting the nearest valid one.
    """
    return build_each(cfg, CALLBACKS, CALLBACK_KEYS, 'callback')
