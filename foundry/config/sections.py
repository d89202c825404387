"""Check the registry-owned sections of a TrainConfig against their registries.

Each registry module publishes a table of valid keys and defaults per registered name;
this module checks names and keys with the same nearest-match messages as the schema.
"""

from __future__ import annotations

from typing import Any, Mapping

from foundry.config.errors import ConfigError, join_path, unknown_key_error
from foundry.config.model_keys import model_key_types
from foundry.config.schema import TrainConfig
from foundry.config.validate import check_keys, convert

def check_model(section: dict[str, Any]) -> None:
    from foundry.models import DEFAULT_LOSS_FN, LOSS_FNS, MODELS
    from foundry.models.mpt.configuration import ATTN_CONFIG_DEFAULTS, INIT_CONFIG_DEFAULTS

    _require_name(section, 'model', MODELS)
    types_by_key = model_key_types()
    for key, value in section.items():
        if key == 'name':
            continue
        if key not in types_by_key:
            raise unknown_key_error('model', str(key), types_by_key)
        convert(value, types_by_key[key], f'model.{key}')
    from foundry.models.mpt.foreign_keys import FOREIGN_ATTN_KEYS

    attn_keys = {**ATTN_CONFIG_DEFAULTS, **{k: None for k in FOREIGN_ATTN_KEYS}}
    for sub, defaults in (('attn_config', attn_keys), ('init_config', INIT_CONFIG_DEFAULTS)):
        if section.get(sub) is not None:
            check_keys(section[sub], defaults, f'model.{sub}')
    loss_fn = section.get('loss_fn', DEFAULT_LOSS_FN)
    if loss_fn not in LOSS_FNS:
        raise ConfigError(f'`model.loss_fn` is {loss_fn!r}; expected one of {", ".join(LOSS_FNS)}')


def check_named_section(section: Mapping[str, Any], path: str, key_table: Mapping[str, Mapping[str, Any]]) -> None:
    """A section like `optimizer:` whose `name` picks the valid keys for the rest."""
    from foundry.config.registry_keys import REQUIRED_KEYS

    _require_name(section, path, key_table)
    body = {k: v for k, v in section.items() if k != 'name'}
    check_keys(body, key_table[section['name']], path)
    for key in REQUIRED_KEYS.get(path, {}).get(section['name'], ()):
        if body.get(key) is None:
            raise ConfigError(f'missing required key `{path}.{key}` ({path} {section["name"]!r} needs it)')


def check_loader(section: Mapping[str, Any], path: str) -> None:
    from foundry.data.stream.loader_keys import STREAM_KEYS, TEXT_DATASET_KEYS, TEXT_LOADER_KEYS

    if _require_name(section, path, {'text': None, 'finetuning': None}) == 'finetuning':
        from foundry.data.stream.finetuning.settings import check_finetuning_section

        check_finetuning_section(section, path)  # prompt/response or chat data (foundry/data/stream/finetuning/)
        return
    loader = {k: v for k, v in section.items() if k != 'name'}
    check_keys(loader, TEXT_LOADER_KEYS, path)
    dataset = loader.get('dataset')
    if dataset is None:
        raise ConfigError(f'missing required key `{path}.dataset` (where the MDS data lives: remote/local/split or streams)')
    check_keys(dataset, TEXT_DATASET_KEYS, f'{path}.dataset')
    streams = dataset.get('streams') or {}
    for stream_name, stream in streams.items():
        check_keys(stream or {}, STREAM_KEYS, f'{path}.dataset.streams.{stream_name}')
    has_source = dataset.get('remote') or dataset.get('local') or streams
    if not has_source:
        raise ConfigError(f'`{path}.dataset` names no data: set `remote` and/or `local`, or `streams`')


def check_registry_map(section: Mapping[str, Any], path: str, key_table: Mapping[str, Mapping[str, Any]], what: str) -> None:
    """A section like `callbacks:` that maps registered names to their own key/value settings."""
    for name, settings in section.items():
        if name not in key_table:
            raise unknown_key_error(path, name, key_table, what)
        check_keys(settings or {}, key_table[name], join_path(path, name))


def check_sections(cfg: TrainConfig, model: bool = True) -> None:
    # Static copies of the registries' key tables: reading them off the builders would import torch and
    # Composer (tests/config/test_registry_keys.py keeps the copies equal). The model, whose rules need
    # MPTConfig (torch, transformers), is checked last, so every other mistake is reported without those.
    from foundry.config.model_check import check_model_config, check_vocab_against_tokenizer
    from foundry.config.registry_keys import CALLBACK_KEYS, LOGGER_KEYS, OPTIMIZER_KEYS, SCHEDULER_KEYS
    from foundry.config.rules import check_values

    check_named_section(cfg.optimizer, 'optimizer', OPTIMIZER_KEYS)
    check_named_section(cfg.scheduler, 'scheduler', SCHEDULER_KEYS)
    check_loader(cfg.train_loader, 'train_loader')
    if cfg.eval_loader is not None:
        check_loader(cfg.eval_loader, 'eval_loader')
    check_registry_map(cfg.callbacks, 'callbacks', CALLBACK_KEYS, 'callback')
    check_registry_map(cfg.loggers, 'loggers', LOGGER_KEYS, 'logger')
    check_icl(cfg)
    _check_consistency(cfg)
    check_values(cfg)
    if not model:  # foundry/config/preflight.py: the launcher's own check, without torch
        return
    check_model(cfg.model)
    check_model_config(cfg.model)
    check_vocab_against_tokenizer(cfg.model, cfg.tokenizer.name)


def check_icl(cfg: TrainConfig) -> None:
    """icl_tasks entries (and the files they name), the gauntlet, and that its benchmarks are tasks."""
    from foundry.eval.gauntlet import check_against_tasks, parse_gauntlet
    from foundry.eval.tasks import parse_icl_tasks

    tasks = parse_icl_tasks(cfg.icl_tasks)
    gauntlet = parse_gauntlet(cfg.eval_gauntlet)
    if gauntlet is not None:
        if not tasks:
            raise ConfigError('`eval_gauntlet` needs `icl_tasks` (the tasks its categories score)')
        check_against_tasks(gauntlet, tasks)
    if cfg.icl_seq_len is not None and cfg.icl_seq_len <= 0:
        raise ConfigError(f'`icl_seq_len` must be positive, got {cfg.icl_seq_len}')


def _check_consistency(cfg: TrainConfig) -> None:
    if cfg.fsdp_config is not None:
        shard = cfg.fsdp_config.data_parallel_shard_degree
        replicate = cfg.fsdp_config.data_parallel_replicate_degree
        if replicate < 1:
            raise ConfigError('`fsdp_config.data_parallel_replicate_degree` must be at least 1')
        if replicate > 1 and shard < 1:
            raise ConfigError('`fsdp_config.data_parallel_replicate_degree` > 1 needs `fsdp_config.data_parallel_shard_degree` '
                              '(ranks per shard group, usually GPUs per node)')


def _require_name(section: Mapping[str, Any], path: str, registry: Mapping[str, Any]) -> str:
    if not isinstance(section, Mapping):
        raise ConfigError(f'`{path}` must be a mapping with a `name` key, not {section!r}')
    name = section.get('name')
    if name is None:
        raise ConfigError(f'missing required key `{path}.name`; choose one of: {", ".join(sorted(registry))}')
    if name not in registry:
        raise _unknown_name(path, name, registry)
    return name


def _unknown_name(path: str, name: Any, registry: Mapping[str, Any]) -> ConfigError:
    from foundry.config.errors import closest_match

    suggestion = closest_match(str(name), registry)
    hint = f'did you mean {suggestion!r}?' if suggestion else f'choose one of: {", ".join(sorted(registry))}'
    return ConfigError(f'`{path}.name` is {name!r}, which foundry does not know; {hint}')
