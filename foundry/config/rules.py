"""Values, ranges and cross-field rules of a training config, checked before launch.

`foundry.config.validate` checks that every key exists and has the right type; this module
checks that the values make sense together: durations parse and are positive, lists have
their length, numbers are in range, a data mixture has a positive total, batch sizes divide.
Nothing here imports torch, Composer or streaming, so `composer launch/train.py` reports a
mistake within a second of each process starting. Model rules live in MPTConfig
(`foundry.config.model_check` renders them).
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional

from foundry.config.durations import parse_time
from foundry.config.errors import ConfigError
from foundry.config.schema import TrainConfig

MAX_DURATION_UNITS = ('ep', 'ba', 'sp', 'tok', 'iter')
INTERVAL_UNITS = ('ep', 'ba', 'sp', 'tok', 'iter', 'dur', 'sec')
LOG_LEVELS = ('debug', 'info', 'warning', 'warn', 'error', 'critical', 'fatal', 'notset')


def check_values(cfg: TrainConfig) -> None:
    _check_durations(cfg)
    _check_top_level(cfg)
    _check_optimizer(cfg.optimizer)
    _check_scheduler(cfg.scheduler, parse_time(cfg.max_duration, 'max_duration'))
    _check_loader(cfg.train_loader, 'train_loader')
    if cfg.eval_loader is not None:
        _check_loader(cfg.eval_loader, 'eval_loader')
    _check_callbacks(cfg.callbacks)


def _check_durations(cfg: TrainConfig) -> None:
    parse_time(cfg.max_duration, 'max_duration', allowed=MAX_DURATION_UNITS)
    for key in ('eval_interval', 'save_interval', 'console_log_interval'):
        parse_time(getattr(cfg, key), key, allowed=INTERVAL_UNITS)


def _check_top_level(cfg: TrainConfig) -> None:
    world_size = _env_int('WORLD_SIZE')
    if world_size and cfg.global_train_batch_size % world_size:
        raise ConfigError(f'`global_train_batch_size` ({cfg.global_train_batch_size}) must be divisible by the number '
                          f'of processes ({world_size}); pick a multiple of {world_size} or launch another number')
    if cfg.max_seq_len is not None:
        _positive_int(cfg.max_seq_len, 'max_seq_len')
    if cfg.device_eval_batch_size is not None:
        _positive_int(cfg.device_eval_batch_size, 'device_eval_batch_size')
    if cfg.eval_subset_num_batches == 0 or cfg.eval_subset_num_batches < -1:
        raise ConfigError(f'`eval_subset_num_batches` is {cfg.eval_subset_num_batches}; use a positive number of '
                          f'batches, or -1 for the whole eval set')
    if not 0 <= cfg.seed < 2**32:
        raise ConfigError(f'`seed` is {cfg.seed}; it must be in [0, 2**32) (numpy and torch seeds)')
    if not cfg.dist_timeout > 0:
        raise ConfigError(f'`dist_timeout` is {cfg.dist_timeout}; it must be a positive number of seconds')
    if cfg.save_num_checkpoints_to_keep < -1:
        raise ConfigError(f'`save_num_checkpoints_to_keep` is {cfg.save_num_checkpoints_to_keep}; use -1 to keep every '
                          f'checkpoint, 0 for none on local disk, or a positive count')
    if cfg.python_log_level is not None and cfg.python_log_level.lower() not in LOG_LEVELS:
        raise ConfigError(f'`python_log_level` is {cfg.python_log_level!r}; expected one of {", ".join(LOG_LEVELS[:5])}')
    for key in ('run_name', 'save_folder', 'load_path', 'run_folder'):
        value = getattr(cfg, key)
        if value is not None and not str(value).strip():
            raise ConfigError(f'`{key}` is empty; remove the key or give it a value')
    try:
        cfg.run_folder.format(run_name='x')
    except (KeyError, IndexError, ValueError) as e:
        raise ConfigError(f'`run_folder` {cfg.run_folder!r} has a placeholder other than {{run_name}} ({e})') from None
    if cfg.algorithms.gradient_clipping is not None and not cfg.algorithms.gradient_clipping.clipping_threshold > 0:
        raise ConfigError('`algorithms.gradient_clipping.clipping_threshold` must be greater than zero, got '
                          f'{cfg.algorithms.gradient_clipping.clipping_threshold}')


def _check_optimizer(section: Mapping[str, Any]) -> None:
    name = section['name']
    if 'lr' in section:
        _number(section['lr'], 'optimizer.lr', low=0.0)
    if 'weight_decay' in section:
        _number(section['weight_decay'], 'optimizer.weight_decay', low=0.0)
    if 'eps' in section:
        _number(section['eps'], 'optimizer.eps', low=0.0, strict=True)
    betas = section.get('betas')
    if betas is not None:
        if not isinstance(betas, (list, tuple)) or len(betas) != 2:
            raise ConfigError(f'`optimizer.betas` is {betas!r}; {name} takes two numbers in [0, 1), e.g. [0.9, 0.99]')
        for i, beta in enumerate(betas):
            _number(beta, f'optimizer.betas[{i}]', low=0.0, high=1.0)


def _check_scheduler(section: Mapping[str, Any], max_duration) -> None:
    warmup = t_max = None
    if section.get('t_warmup') is not None:
        warmup = parse_time(section['t_warmup'], 'scheduler.t_warmup', int_unit='ba', allowed=INTERVAL_UNITS[:-1],
                            positive=False)
    if section.get('t_max') is not None:
        t_max = parse_time(section['t_max'], 'scheduler.t_max', int_unit='ba', allowed=INTERVAL_UNITS[:-1])
    for key in ('alpha', 'alpha_f', 'alpha_i'):
        if key in section:
            _number(section[key], f'scheduler.{key}', low=0.0)
    if warmup is not None:
        _check_warmup_schedule(section['name'], warmup, t_max or parse_time('1dur', 'scheduler.t_max'), max_duration)


def _check_warmup_schedule(name: str, warmup, t_max, max_duration) -> None:
    """Composer's warmup schedulers' own rules, which it checks only at the first batch (a traceback mid-start).

    It converts `dur` to max_duration's unit (batches when that is epochs) and epochs to batches, then
    needs t_warmup and t_max in one unit, and t_max at least max_duration where the units compare.
    """
    def unit(duration) -> str:
        if duration.unit == 'dur':
            return 'ba' if max_duration.unit == 'ep' else max_duration.unit
        return 'ba' if duration.unit == 'ep' else duration.unit

    if unit(warmup) != unit(t_max):
        raise ConfigError(f'`scheduler.t_warmup` is {warmup} but t_max ({t_max}, with max_duration {max_duration}) counts '
                          f'{unit(t_max)}: {name} needs both in one unit; write t_warmup in {unit(t_max)} or as a '
                          f'fraction such as 0.05dur')
    t_max_value = t_max.value * max_duration.value if t_max.unit == 'dur' else t_max.value
    if unit(t_max) == max_duration.unit and t_max_value < max_duration.value:
        raise ConfigError(f'`scheduler.t_max` is {t_max}, shorter than max_duration {max_duration}: the learning rate '
                          f'would be undefined after it; set t_max to at least max_duration (or 1dur)')


def _check_loader(section: Mapping[str, Any], path: str) -> None:
    from foundry.data.stream.loader_keys import TOKEN_ENCODING_TYPES

    workers = section.get('num_workers')
    if workers is not None:
        _int(workers, f'{path}.num_workers', low=0)
    if section.get('prefetch_factor') is not None:
        _int(section['prefetch_factor'], f'{path}.prefetch_factor', low=1)
    if section.get('timeout') is not None:
        _number(section['timeout'], f'{path}.timeout', low=0.0)
    dataset = section['dataset']
    where = f'{path}.dataset'
    if dataset.get('max_seq_len') is not None:
        _positive_int(dataset['max_seq_len'], f'{where}.max_seq_len')
    for key in ('num_canonical_nodes', 'sampling_granularity', 'shuffle_block_size', 'epoch_size'):
        if dataset.get(key) is not None:
            _positive_int(dataset[key], f'{where}.{key}')
    for key in ('predownload', 'download_retry', 'shuffle_seed', 'eos_token_id', 'bos_token_id'):
        if dataset.get(key) is not None:
            _int(dataset[key], f'{where}.{key}', low=0)
    if dataset.get('download_timeout') is not None:
        _number(dataset['download_timeout'], f'{where}.download_timeout', low=0.0, strict=True)
    choices = {'sampling_method': ('balanced', 'fixed'), 'partition_algo': ('orig', 'relaxed'),
               'batching_method': ('random', 'stratified', 'per_stream', 'device_per_stream'),
               'shuffle_algo': ('naive', 'py1b', 'py1br', 'py1e', 'py1s', 'py2s'),
               'token_encoding_type': TOKEN_ENCODING_TYPES}
    for key, allowed in choices.items():
        value = dataset.get(key)
        if value is not None and value not in allowed:
            raise ConfigError(f'`{where}.{key}` is {value!r}; expected one of {", ".join(allowed)}')
    if dataset.get('cache_limit') is not None:
        _check_size(dataset['cache_limit'], f'{where}.cache_limit')
    _check_streams(dataset.get('streams') or {}, f'{where}.streams')


def _check_streams(streams: Mapping[str, Any], path: str) -> None:
    """streaming's weighting rules (Stream.validate_weights), with the stream named, plus a positive total."""
    weighted = {}
    for name, stream in streams.items():
        stream = stream or {}
        where = f'{path}.{name}'
        if not (stream.get('remote') or stream.get('local')):
            raise ConfigError(f'`{where}` names no data: set its `remote` and/or `local`')
        given = [k for k in ('proportion', 'repeat', 'choose') if stream.get(k) is not None]
        if len(given) > 1:
            raise ConfigError(f'`{where}` sets {" and ".join(given)}; a stream takes at most one of proportion, '
                              f'repeat and choose')
        if stream.get('proportion') is not None:
            _number(stream['proportion'], f'{where}.proportion', low=0.0)
        if stream.get('repeat') is not None:
            _number(stream['repeat'], f'{where}.repeat', low=0.0, strict=True)
        if stream.get('choose') is not None:
            _positive_int(stream['choose'], f'{where}.choose')
        if stream.get('download_retry') is not None:
            _int(stream['download_retry'], f'{where}.download_retry', low=0)
        if stream.get('download_timeout') is not None:
            _number(stream['download_timeout'], f'{where}.download_timeout', low=0.0, strict=True)
        weighted[name] = given[0] if given else None
    kinds = {name: kind == 'proportion' for name, kind in weighted.items()}
    if len(set(kinds.values())) > 1:
        relative = sorted(n for n, p in kinds.items() if p)
        absolute = sorted(n for n, p in kinds.items() if not p)
        raise ConfigError(f'`{path}`: {", ".join(relative)} set `proportion` but {", ".join(absolute)} do not; '
                          f'give every stream a proportion, or none of them (use repeat/choose instead)')
    if kinds and all(kinds.values()):
        total = sum(float(streams[n]['proportion']) for n in streams)
        if not total > 0:
            raise ConfigError(f'`{path}`: the proportions add up to {total:g}; at least one stream needs a '
                              f'proportion greater than zero')


def _check_callbacks(callbacks: Mapping[str, Optional[Mapping[str, Any]]]) -> None:
    from foundry.config.registry_keys import REQUIRED_KEYS

    for name, settings in callbacks.items():
        settings = settings or {}
        for key in REQUIRED_KEYS['callbacks'].get(name, ()):
            if settings.get(key) is None:
                raise ConfigError(f'missing required key `callbacks.{name}.{key}`')
    hf = callbacks.get('hf_checkpointer') or {}
    if 'save_interval' in hf:
        parse_time(hf['save_interval'], 'callbacks.hf_checkpointer.save_interval', allowed=INTERVAL_UNITS)
    if hf.get('precision') is not None and hf['precision'] not in ('fp32', 'bf16', 'fp16'):
        raise ConfigError(f'`callbacks.hf_checkpointer.precision` is {hf["precision"]!r}; expected fp32, bf16 or fp16')
    for name, key in (('speed_monitor', 'window_size'), ('throughput_monitor', 'window_size'),
                      ('throughput_monitor', 'log_interval'), ('optimizer_monitor', 'batch_log_interval')):
        settings = callbacks.get(name) or {}
        if key in settings:
            _positive_int(settings[key], f'callbacks.{name}.{key}')


def _check_size(value: Any, path: str) -> None:
    import re

    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return
    if isinstance(value, str) and re.fullmatch(r'\s*\d+(\.\d+)?\s*[kmgtp]?i?b?\s*', value, re.IGNORECASE):
        return
    raise ConfigError(f'`{path}` is {value!r}; give a size such as 10gb or 500mb, or a number of bytes')


def _env_int(name: str) -> Optional[int]:
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None


def _int(value: Any, path: str, low: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f'`{path}` is {value!r}; expected an integer')
    if low is not None and value < low:
        raise ConfigError(f'`{path}` is {value}; it must be at least {low}')
    return value


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f'`{path}` is {value!r}; expected a positive integer')
    return value


def _number(value: Any, path: str, low: Optional[float] = None, high: Optional[float] = None,
            strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f'`{path}` is {value!r} ({type(value).__name__}); expected a number')
    if value != value:
        raise ConfigError(f'`{path}` is nan; expected a number')
    if low is not None and (value < low or (strict and value == low)):
        raise ConfigError(f'`{path}` is {value}; it must be {"greater than" if strict else "at least"} {low:g}')
    if high is not None and value >= high:
        raise ConfigError(f'`{path}` is {value}; it must be below {high:g}')
    return float(value)


def check_environment(cfg: TrainConfig) -> None:
    """What this machine must provide for the config (training and `foundry info`, not `foundry plan`)."""
    if 'wandb' in (cfg.loggers or {}):
        _check_wandb_credentials()
    autoresume = cfg.autoresume if cfg.autoresume is not None else bool(cfg.run_name and cfg.save_folder)
    if cfg.load_path and '://' not in cfg.load_path and not autoresume and not os.path.exists(cfg.load_path):
        # With autoresume on, a run that has its own checkpoints ignores load_path, which may be gone by then.
        raise ConfigError(f'`load_path` {cfg.load_path} does not exist; give a checkpoint (folder or .pt file) or a '
                          f'Hugging Face folder, local or s3://')


def _check_wandb_credentials() -> None:
    """wandb with neither a key nor an offline mode fails inside Composer's Trainer; say so before launch."""
    mode = os.environ.get('WANDB_MODE', '').lower()
    if mode in ('offline', 'disabled', 'dryrun') or os.environ.get('WANDB_API_KEY') \
            or os.environ.get('WANDB_IDENTITY_TOKEN_FILE') or os.environ.get('WANDB_DISABLED', '').lower() == 'true':
        return
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get('WANDB_BASE_URL', 'https://api.wandb.ai')).hostname or 'api.wandb.ai'
    path = os.environ.get('NETRC') or os.path.expanduser('~/.netrc')
    try:
        if netrc.netrc(path).authenticators(host):
            return
    except (OSError, netrc.NetrcParseError):
        pass
    raise ConfigError(f'`loggers.wandb`: no Weights & Biases credentials here (no WANDB_API_KEY, no {host} entry in '
                      f'{path}); run `wandb login` or set WANDB_API_KEY, or set WANDB_MODE=offline (sync later with '
                      f'`wandb sync`) or WANDB_MODE=disabled, or remove loggers.wandb')
