"""The settings of a ``name: finetuning`` loader section, checked without reading data or
importing torch (the config layer runs this before launch; the loader runs it again)."""

from __future__ import annotations

from typing import Any, Mapping

from foundry.data.errors import DataError
from foundry.data.finetuning.tokenize import OVERLONG_CHOICES, parse_targets
from foundry.data.stream.loader_keys import FINETUNING_DATASET_KEYS, FINETUNING_LOADER_KEYS, with_defaults

__all__ = ['resolve_settings', 'check_finetuning_section', 'describe_finetuning']


def resolve_settings(loader_cfg: Mapping[str, Any], path: str = 'loader') -> tuple[dict, dict]:
    """(loader, dataset) settings with defaults, checked; no data is read."""
    loader = with_defaults({k: v for k, v in loader_cfg.items() if k != 'name'},
                           FINETUNING_LOADER_KEYS, path)
    if loader['dataset'] is None:
        raise DataError('the finetuning loader has no `dataset` section; add dataset: {hf_name '
                        'or remote/local, split, max_seq_len}.')
    ds = with_defaults(loader['dataset'], FINETUNING_DATASET_KEYS, f'{path}.dataset')
    if ds['max_seq_len'] is None:
        raise DataError(f'{path}.dataset.max_seq_len is required (tokens per training sequence).')
    if ds['decoder_only_format'] is not True:
        raise DataError(f'{path}.dataset.decoder_only_format: false is for encoder-decoder models; '
                        'MPT is decoder-only, so leave it true.')
    has_mds = ds['remote'] is not None or ds['local'] is not None
    if (ds['hf_name'] is None) == (not has_mds):
        raise DataError(f'{path}.dataset needs exactly one source: `hf_name` (a .jsonl/.parquet '
                        'file, folder or datasets name) or `remote`/`local` (MDS from '
                        'data_prep/convert_finetuning_dataset.py).')
    if ds['overlong'] not in OVERLONG_CHOICES:
        raise DataError(f'{path}.dataset.overlong is {ds["overlong"]!r}; use one of '
                        f'{", ".join(OVERLONG_CHOICES)}.')
    ratio = ds['packing_ratio']
    if ratio is not None and ratio != 'auto' and (isinstance(ratio, bool) or
                                                  not isinstance(ratio, (int, float)) or ratio < 1):
        raise DataError(f'{path}.dataset.packing_ratio is {ratio!r}; use a number >= 1 (examples '
                        'per sequence) or auto.')
    ds['targets'] = parse_targets(ds['target_prompts'], ds['target_responses'])
    return loader, ds


def check_finetuning_section(section: Mapping[str, Any], path: str) -> None:
    """Config-time check of a whole ``train_loader``/``eval_loader`` finetuning section."""
    from foundry.config.errors import ConfigError
    from foundry.config.validate import check_keys

    loader = {k: v for k, v in section.items() if k != 'name'}
    check_keys(loader, FINETUNING_LOADER_KEYS, path)
    if loader.get('dataset') is None:
        raise ConfigError(f'missing required key `{path}.dataset` (hf_name, or remote/local MDS; '
                          'split, max_seq_len)')
    check_keys(loader['dataset'], FINETUNING_DATASET_KEYS, f'{path}.dataset')
    try:
        resolve_settings(section, path)
    except DataError as err:
        raise ConfigError(str(err).rstrip('.')) from None


def describe_finetuning(label: str, section: Mapping[str, Any]) -> list[str]:
    """What `foundry info` says about a finetuning loader: its settings and where its data is."""
    import json
    import os

    try:
        _, ds = resolve_settings(section, label)
    except DataError as err:
        return [f'{label}: finetuning ({err})']
    packing = 'off' if ds['packing_ratio'] is None else ds['packing_ratio']
    lines = [f'{label}: finetuning, max_seq_len {ds["max_seq_len"]}, packing_ratio {packing}, '
             f'target_prompts {ds["target_prompts"]}, target_responses {ds["target_responses"]}, '
             f'overlong {ds["overlong"]}']
    if ds['hf_name'] is not None:
        path = os.path.expanduser(str(ds['hf_name']))
        if os.path.isfile(path):
            where = f'file, {os.path.getsize(path) / 1e6:.2f} MB'
        elif os.path.isdir(path):
            from foundry.data.finetuning.sources import _folder_files

            try:
                files = _folder_files(path, ds['split'])
                size = sum(os.path.getsize(f) for f in files)
                where = f'folder, {len(files)} file(s) for split {ds["split"]}, {size / 1e6:.2f} MB'
            except DataError as err:
                where = str(err)
        elif str(ds['hf_name']).startswith(('.', '/', '~')):
            where = 'not found'
        else:
            where = 'a datasets name, read when training starts'
        lines.append(f'  data: hf_name {ds["hf_name"]} ({where})')
    else:
        source = ds['local'] or ds['remote']
        index = os.path.join(os.path.expanduser(str(source)), ds['split'] or '', 'index.json')
        if os.path.isfile(index):
            with open(index) as handle:
                shards = json.load(handle).get('shards', [])
            samples = sum(int(s.get('samples', 0)) for s in shards)
            where = f'MDS, {samples:,} examples in {len(shards)} shard(s)'
        else:
            where = 'MDS, index not read here'
        lines.append(f'  data: {source} [split {ds["split"]}] ({where})')
    return lines
