"""`model.pretrained_model_name_or_path`: start from an MPT folder's architecture (and weights).

The folder may come from foundry's export, from llm-foundry, or from the mosaicml/mpt-* family; its
config.json gives the architecture, and keys under `model:` in the YAML override it (a nested
`attn_config`/`init_config` is merged key by key, so `attn_config.attn_impl: flex` changes only the
kernel). The weights are loaded after the model is built and sharded, by the same path as a
Hugging Face folder given as `load_path` (foundry.checkpoint.weights), unless the run resumes its
own checkpoint.

A local folder or a Hugging Face hub id: the hub is reached through transformers and huggingface_hub.
"""

from __future__ import annotations

import os
from typing import Any

from .mpt.configuration import MPTConfig

KEY = "pretrained_model_name_or_path"
# Keys of the YAML `model:` section that are not MPTConfig arguments.
NON_CONFIG_KEYS = ("name", "loss_fn", KEY)


class PretrainedSourceError(ValueError):
    """The folder or hub id named by `model.pretrained_model_name_or_path` has no MPT config.json."""


def folder_config_dict(source: str) -> dict[str, Any]:
    """config.json of a local folder or hub repo, as a dict (nothing else is read)."""
    local = os.path.expanduser(source)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "config.json")):
            raise PretrainedSourceError(f"model.{KEY}: {source} has no config.json; point it at a Hugging Face MPT "
                                        "folder (what `foundry export hf` or save_pretrained writes)")
        source = local
    elif source.startswith(("/", "./", "../", "~")) or "://" in source:
        raise PretrainedSourceError(f"model.{KEY}: {source} is not a local folder (for an object-store folder, "
                                    "set load_path to it and describe the model under model:)")
    try:
        config, _ = MPTConfig.get_config_dict(source)
    except OSError as err:
        raise PretrainedSourceError(f"model.{KEY}: cannot read the config of {source!r} ({str(err).splitlines()[0]})"
                                    ) from err
    if config.get("model_type", "mpt") != "mpt":
        raise PretrainedSourceError(f"model.{KEY}: {source} is a {config['model_type']!r} model; foundry trains MPT "
                                    "models (config.json model_type \"mpt\")")
    return config


def model_config_from_section(section: dict[str, Any]) -> MPTConfig:
    """The MPTConfig a YAML `model:` section describes, reading the pretrained folder's config if named."""
    section = {k: v for k, v in section.items() if k not in NON_CONFIG_KEYS or k == KEY}
    source = section.pop(KEY, None)
    if source is None:
        return MPTConfig(**section)
    base = folder_config_dict(str(source))
    for bookkeeping in ("model_type", "architectures", "auto_map", "transformers_version", "_name_or_path"):
        base.pop(bookkeeping, None)
    merged = {**base, **section}
    for sub in ("attn_config", "init_config"):
        if isinstance(base.get(sub), dict) and isinstance(section.get(sub), dict):
            merged[sub] = {**base[sub], **section[sub]}
    return MPTConfig(**merged)


def local_weights_folder(source: str) -> str:
    """A local folder holding the weights of `source` (a hub repo is downloaded into the HF cache)."""
    local = os.path.expanduser(source)
    if os.path.isdir(local):
        return local
    from huggingface_hub import snapshot_download

    return snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "*.bin"])
