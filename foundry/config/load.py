"""YAML file + `key=value` overrides -> a validated TrainConfig.

Order: read the YAML, merge the command-line dot-list on top, resolve `${...}`
interpolations, then validate every key. Nothing here touches torch.distributed, so
errors surface before any process group or tensor exists.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from foundry.config.errors import ConfigError
from foundry.config.schema import TrainConfig
from foundry.config.sections import check_sections
from foundry.config.validate import from_mapping


def read_yaml_with_overrides(path: str, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The merged, interpolation-resolved config as plain Python containers."""
    if not os.path.isfile(path):
        raise ConfigError(f'config file not found: {path}')
    try:
        base = OmegaConf.load(path)
    except yaml.YAMLError as e:
        raise ConfigError(f'{path} is not valid YAML: {e}') from None
    if not OmegaConf.is_dict(base):
        raise ConfigError(f'{path} must hold a mapping of keys to values at the top level')
    for item in overrides:
        if '=' not in item or item.startswith('='):
            raise ConfigError(f'command-line override `{item}` must look like key=value (for example optimizer.lr=1e-4)')
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(list(overrides)))
        resolved = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as e:
        # omegaconf's messages carry the offending key; keep the first line, drop its internals.
        first_line = str(e).strip().splitlines()[0]
        raise ConfigError(f'{path}: cannot resolve the config: {first_line}') from None
    assert isinstance(resolved, dict)
    return resolved


def load_config(path: str, overrides: Sequence[str] = (), model: bool = True) -> TrainConfig:
    """Load, merge, resolve and fully validate a training config (`model=False`: all but the model's rules)."""
    raw = read_yaml_with_overrides(path, overrides)
    cfg = from_mapping(TrainConfig, raw)
    check_sections(cfg, model=model)
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """A plain dict of the validated config, for logging it with the run."""
    import dataclasses

    return dataclasses.asdict(cfg)
