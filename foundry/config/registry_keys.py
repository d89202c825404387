"""The key tables of foundry's registries (optimizers, schedulers, callbacks, loggers), as data.

The registries read their tables off the builders' signatures, which means importing torch and
Composer (10-25 s per process on a busy 2-core machine). The config check needs only the names,
keys and defaults, so it reads them from here and a config mistake is reported before those
imports. `tests/config/test_registry_keys.py` checks that these tables equal the signatures on
every stack; when Composer or torch changes a signature, that test names the table to update.
"""

from __future__ import annotations

from typing import Any

OPTIMIZER_KEYS: dict[str, dict[str, Any]] = {
    'decoupled_lionw': {'lr': 0.0001, 'betas': (0.9, 0.99), 'weight_decay': 0.0, 'foreach': True},
    'lion': {'lr': 0.0001, 'betas': (0.9, 0.99), 'weight_decay': 0.0, 'use_triton': False,
             'decoupled_weight_decay': False},
    'decoupled_adamw': {'lr': 0.001, 'betas': (0.9, 0.95), 'eps': 1e-08, 'weight_decay': 1e-05, 'amsgrad': False},
    'adamw': {'lr': 0.001, 'betas': (0.9, 0.999), 'eps': 1e-08, 'weight_decay': 0.01, 'amsgrad': False,
              'maximize': False, 'foreach': None, 'capturable': False, 'differentiable': False, 'fused': None},
}

SCHEDULER_KEYS: dict[str, dict[str, Any]] = {
    'cosine_with_warmup': {'t_warmup': None, 't_max': '1dur', 'alpha_f': 0.0, 'scale_warmup': False},
    'linear_decay_with_warmup': {'t_warmup': None, 'alpha_i': 1.0, 'alpha_f': 0.0, 't_max': '1dur',
                                 'scale_warmup': False},
    'constant_with_warmup': {'t_warmup': None, 'alpha': 1.0, 't_max': '1dur', 'scale_warmup': False},
    'constant': {'alpha': 1.0, 't_max': '1dur'},
    'cosine': {'t_max': '1dur', 'alpha_f': 0.0},
}

CALLBACK_KEYS: dict[str, dict[str, Any]] = {
    'speed_monitor': {'window_size': 100, 'gpu_flops_available': None, 'time_unit': 'hours'},
    'lr_monitor': {},
    'memory_monitor': {'memory_keys': None, 'dist_aggregate_batch_interval': None},
    'runtime_estimator': {'skip_batches': 1, 'time_unit': 'hours'},
    'optimizer_monitor': {'log_optimizer_metrics': True, 'batch_log_interval': 10},
    'hf_checkpointer': {'save_folder': None, 'save_interval': '1ep', 'precision': 'fp32'},
    'throughput_monitor': {'window_size': 10, 'log_interval': 1, 'peak_flops': None, 'cpu_peak_seconds': 1.0},
}

LOGGER_KEYS: dict[str, dict[str, Any]] = {
    'wandb': {'project': None, 'group': None, 'name': None, 'entity': None, 'tags': None, 'log_artifacts': False,
              'rank_zero_only': True, 'init_kwargs': None},
    'tensorboard': {'log_dir': None, 'flush_interval': 100, 'rank_zero_only': True},
}

# Keys a registered builder cannot do without (no default in its signature), by section.
REQUIRED_KEYS: dict[str, dict[str, tuple[str, ...]]] = {
    'optimizer': {},
    'scheduler': {name: ('t_warmup',) for name in ('cosine_with_warmup', 'linear_decay_with_warmup',
                                                   'constant_with_warmup')},
    'callbacks': {'hf_checkpointer': ('save_folder',)},
    'loggers': {},
}
