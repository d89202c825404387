"""Start a run from someone else's weights: a Hugging Face MPT folder (or a Composer checkpoint).

`load_path: <folder>` where the folder is a Hugging Face model (mosaicml/mpt-7b layout:
`config.json` with `attn_config`, weights as `model.safetensors`, `pytorch_model.bin`, or
either sharded with a `*.index.json`) loads those weights into the model, weights only: the
optimizer, scheduler and data position start fresh.

Every name and shape is checked against the model before a byte is copied; a mismatch is an
error naming the tensor. Tensors are then read a group at a time and copied into the
parameters, which may already be FSDP2 DTensors (each rank keeps only its own shard), so the
whole model is never in memory at once.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterator, Optional

import torch

from foundry.config.errors import ConfigError

log = logging.getLogger(__name__)

HF_WEIGHT_FILES = ('model.safetensors.index.json', 'model.safetensors', 'pytorch_model.bin.index.json',
                   'pytorch_model.bin')


class WeightsError(ConfigError):
    """Weights that do not fit the model being trained."""


def is_hf_folder(path: str) -> bool:
    return (os.path.isdir(path) and os.path.isfile(os.path.join(path, 'config.json'))
            and any(os.path.isfile(os.path.join(path, f)) for f in HF_WEIGHT_FILES))


class HFWeights:
    """The tensors of a Hugging Face folder, by name, readable a group at a time."""

    def __init__(self, folder: str):
        self.folder = folder
        with open(os.path.join(folder, 'config.json')) as f:
            self.config = json.load(f)
        model_type = self.config.get('model_type')
        if model_type not in (None, 'mpt'):
            raise WeightsError(f'load_path {folder} is a Hugging Face {model_type!r} model; foundry trains MPT models '
                               f'(config.json model_type "mpt")')
        self.files = self._files()  # name -> file
        self._shapes: Optional[dict[str, tuple[int, ...]]] = None
        # llm-foundry with `attn_config.fused_qkv: false` stores Wq/Wk/Wv; the model has one Wqkv.
        self.fused: dict[str, list[str]] = {}
        if (self.config.get('attn_config') or {}).get('fused_qkv') is False:
            from foundry.models.mpt.foreign_keys import split_qkv_names

            self.fused = split_qkv_names(list(self.files))

    def _files(self) -> dict[str, str]:
        for index_name in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
            index = os.path.join(self.folder, index_name)
            if os.path.isfile(index):
                with open(index) as f:
                    weight_map = json.load(f)['weight_map']
                missing = sorted({v for v in weight_map.values() if not os.path.isfile(os.path.join(self.folder, v))})
                if missing:
                    raise WeightsError(f'{index} names shard files that are not in the folder: {", ".join(missing)}')
                return {name: os.path.join(self.folder, file) for name, file in weight_map.items()}
        for single in ('model.safetensors', 'pytorch_model.bin'):
            path = os.path.join(self.folder, single)
            if os.path.isfile(path):
                return {name: path for name in _tensor_names(path)}
        raise WeightsError(f'{self.folder} has no weights ({", ".join(HF_WEIGHT_FILES)})')

    def shapes(self) -> dict[str, tuple[int, ...]]:
        if self._shapes is None:
            shapes = {}
            for file in sorted(set(self.files.values())):
                shapes.update(_tensor_shapes(file))
            self._shapes = {name: shapes[name] for name in self.files}
            split = {part for parts in self.fused.values() for part in parts}
            for fused, parts in self.fused.items():
                first = self._shapes[parts[0]]
                self._shapes[fused] = (sum(self._shapes[p][0] for p in parts), *first[1:])
            self._shapes = {n: v for n, v in self._shapes.items() if n not in split}
        return self._shapes

    def groups(self, names: list[str], max_bytes: int = 1 << 30) -> Iterator[dict[str, torch.Tensor]]:
        """Tensors of `names`, file by file, in groups of at most ~max_bytes."""
        if self.fused:
            yield from self._fused_groups(names, max_bytes)
            return
        by_file: dict[str, list[str]] = {}
        for name in names:
            by_file.setdefault(self.files[name], []).append(name)
        for file, file_names in sorted(by_file.items()):
            group, size = {}, 0
            for name, tensor in _read_tensors(file, file_names):
                nbytes = tensor.numel() * tensor.element_size()
                if group and size + nbytes > max_bytes:
                    yield group
                    group, size = {}, 0
                group[name] = tensor
                size += nbytes
            if group:
                yield group


    def _fused_groups(self, names: list[str], max_bytes: int) -> Iterator[dict[str, torch.Tensor]]:
        plain = [n for n in names if n not in self.fused]
        if plain:
            saved, self.fused = self.fused, {}
            try:
                yield from self.groups(plain, max_bytes)
            finally:
                self.fused = saved
        for fused in (n for n in names if n in self.fused):
            parts = dict(_read_grouped(self.files, self.fused[fused]))
            yield {fused: torch.cat([parts[p] for p in self.fused[fused]], dim=0)}


def _read_grouped(files: dict[str, str], names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    by_file: dict[str, list[str]] = {}
    for name in names:
        by_file.setdefault(files[name], []).append(name)
    for file, file_names in by_file.items():
        yield from _read_tensors(file, file_names)


class CheckpointWeights:
    """The model tensors of a Composer checkpoint (sharded or full), under Hugging Face names."""

    def __init__(self, path: str):
        from foundry.checkpoint.reader import model_tensor_names, resolve_local_checkpoint

        self.folder = resolve_local_checkpoint(path)
        self._shapes = {n: tuple(s) for n, (s, _) in model_tensor_names(self.folder).items()}

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return self._shapes

    def groups(self, names: list[str], max_bytes: int = 1 << 30) -> Iterator[dict[str, torch.Tensor]]:
        from foundry.checkpoint.reader import iter_model_tensors

        wanted = set(names)
        for group in iter_model_tensors(self.folder, max_bytes=max_bytes):
            yield {k: v for k, v in group.items() if k in wanted}


def _tensor_names(path: str) -> list[str]:
    return list(_tensor_shapes(path))


def _tensor_shapes(path: str) -> dict[str, tuple[int, ...]]:
    if path.endswith('.safetensors'):
        from safetensors import safe_open

        with safe_open(path, framework='pt') as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    return {k: tuple(v.shape) for k, v in _load_bin(path).items()}


def _read_tensors(path: str, names: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    if path.endswith('.safetensors'):
        from safetensors import safe_open

        with safe_open(path, framework='pt') as f:
            for name in names:
                yield name, f.get_tensor(name)
        return
    state = _load_bin(path)
    for name in names:
        yield name, state[name]


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location='cpu', weights_only=True, mmap=True)
    except RuntimeError:  # a pre-zip (legacy) torch.save file cannot be memory-mapped
        return torch.load(path, map_location='cpu', weights_only=True)


def weights_source(path: str):
    """HFWeights for a Hugging Face folder, CheckpointWeights for a Composer checkpoint."""
    return HFWeights(path) if is_hf_folder(path) else CheckpointWeights(path)


def load_weights(model: torch.nn.Module, source, description: str, max_bytes: int = 1 << 30) -> int:
    """Copy `source`'s tensors into `model` (an MPTForCausalLM, plain or FSDP2-sharded); returns the count.

    Names and shapes are all checked first. A checkpoint `lm_head.weight` is skipped when the
    model ties it to `transformer.wte.weight`.
    """
    from torch.distributed.tensor import DTensor, distribute_tensor

    targets = dict(model.state_dict(keep_vars=True))
    shapes = source.shapes()
    tied = 'lm_head.weight' not in targets
    # In the model's own order (embeddings first), which is how people read a state dict.
    extra = [n for n in shapes if n not in targets and not (tied and n == 'lm_head.weight')]
    missing = [n for n in targets if n not in shapes]
    mismatched = [f'{n}: {list(shapes[n])} in {description}, {list(targets[n].shape)} in the model'
                  for n in targets if n in shapes and tuple(shapes[n]) != tuple(targets[n].shape)]
    problems = []
    if mismatched:
        problems.append('shape mismatch: ' + '; '.join(mismatched[:8]) + (' ...' if len(mismatched) > 8 else ''))
    if missing:
        problems.append(f'missing from {description}: ' + ', '.join(missing[:8]) + (' ...' if len(missing) > 8 else ''))
    if extra:
        problems.append('not in the model: ' + ', '.join(extra[:8]) + (' ...' if len(extra) > 8 else ''))
    if problems:
        raise WeightsError(f'cannot load {description} into this model ({"; ".join(problems)}); the model config '
                           f'in the YAML must describe the same architecture')

    copied = 0
    with torch.no_grad():
        for group in source.groups(sorted(targets), max_bytes=max_bytes):
            for name, tensor in group.items():
                target = targets[name]
                value = tensor.to(dtype=target.dtype)
                if isinstance(target, DTensor):
                    # Every rank holds the full tensor here; keep only this rank's shard (no communication).
                    shard = distribute_tensor(value.to(target.device), target.device_mesh, target.placements,
                                              src_data_rank=None)
                    target.to_local().copy_(shard.to_local())
                else:
                    target.copy_(value.to(target.device))
                copied += 1
            del group
    if copied != len(targets):
        raise WeightsError(f'{description}: copied {copied} of {len(targets)} tensors')
    return copied
