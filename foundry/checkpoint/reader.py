"""Read model weights out of Composer checkpoints without a process group.

Two layouts exist: a sharded checkpoint (a folder of torch.distributed.checkpoint files
with a `.metadata` index, written by FSDP's sharded state dict) and a full one (one
`torch.save` file). Weights come back under Hugging Face names (`transformer.blocks.0...`),
a few tensors at a time, so a large model never has to fit in one host's memory.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from foundry.checkpoint.errors import CheckpointError

# Composer stores the ComposerModel's state under state.model; our wrapper keeps the HF model at `.model`.
SHARDED_PREFIX = 'state.model.model.'
FULL_PREFIX = 'model.'


def resolve_local_checkpoint(path: str) -> str:
    """Follow Composer's `latest-rank0.pt.symlink` (a symlink locally) and check the target exists."""
    if '://' in path:
        from foundry.checkpoint.remote import download_checkpoint

        path = download_checkpoint(path)
    if not os.path.exists(path):
        raise CheckpointError(f'checkpoint not found: {path}')
    real = os.path.realpath(path)
    if os.path.isfile(real) and real.endswith('.symlink') and not os.path.islink(path):
        # An object-store style symlink file holds the target path as text.
        with open(real) as f:
            target = f.read().strip()
        real = target if os.path.isabs(target) else os.path.join(os.path.dirname(real), target)
    if not os.path.exists(real):
        raise CheckpointError(f'checkpoint {path} points to {real}, which does not exist')
    return real


def is_sharded(path: str) -> bool:
    return os.path.isdir(path) and os.path.exists(os.path.join(path, '.metadata'))


def model_tensor_names(path: str) -> dict[str, tuple[torch.Size, torch.dtype]]:
    """HF-named model tensors in a checkpoint, with shapes and dtypes, reading only the index."""
    path = resolve_local_checkpoint(path)
    if is_sharded(path):
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        metadata = FileSystemReader(path).read_metadata()
        names = {}
        for key, meta in metadata.state_dict_metadata.items():
            if key.startswith(SHARDED_PREFIX) and isinstance(meta, TensorStorageMetadata):
                names[key[len(SHARDED_PREFIX):]] = (meta.size, meta.properties.dtype)
        if not names:
            raise CheckpointError(f'{path} is a sharded checkpoint without foundry model weights ({SHARDED_PREFIX}*)')
        return names
    weights = _full_model_state(path)
    return {k: (v.shape, v.dtype) for k, v in weights.items()}


def iter_model_tensors(path: str, max_bytes: int = 1 << 30) -> Iterator[dict[str, torch.Tensor]]:
    """Yield the model's tensors in groups of at most ~`max_bytes` (one tensor at least)."""
    path = resolve_local_checkpoint(path)
    if not is_sharded(path):
        yield _full_model_state(path)
        return
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    group: list[str] = []
    size = 0
    for name, (shape, dtype) in model_tensor_names(path).items():
        nbytes = shape.numel() * torch.empty((), dtype=dtype).element_size()
        if group and size + nbytes > max_bytes:
            yield _load_group(path, group, _load_state_dict_from_keys)
            group, size = [], 0
        group.append(name)
        size += nbytes
    if group:
        yield _load_group(path, group, _load_state_dict_from_keys)


def _load_group(path, names, loader) -> dict[str, torch.Tensor]:
    import warnings

    with warnings.catch_warnings():
        # Reading in one process without a process group is what export means to do; torch warns about it.
        warnings.filterwarnings('ignore', message='torch.distributed is (disabled, )?unavailable or uninitialized')
        loaded = loader(keys={SHARDED_PREFIX + n for n in names}, checkpoint_id=path)
    flat = _flatten(loaded)
    return {n: flat[SHARDED_PREFIX + n] for n in names}


def _flatten(tree: dict, prefix: str = '') -> dict:
    out = {}
    for key, value in tree.items():
        full = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(_flatten(value, full + '.'))
        else:
            out[full] = value
    return out


def _full_model_state(path: str) -> dict[str, torch.Tensor]:
    try:
        # mmap: tensors are paged in as they are touched, so the optimizer state never fills memory.
        checkpoint = torch.load(path, map_location='cpu', weights_only=False, mmap=True)
    except Exception as e:  # a truncated or foreign file
        raise CheckpointError(f'cannot read checkpoint {path}: {e}') from None
    model_state = checkpoint.get('state', {}).get('model') if isinstance(checkpoint, dict) else None
    if not model_state:
        raise CheckpointError(f'{path} holds no Composer model state (state.model)')
    return {k[len(FULL_PREFIX):]: v for k, v in model_state.items() if k.startswith(FULL_PREFIX)}
