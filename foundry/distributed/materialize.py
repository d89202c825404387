"""Give a model built on the meta device real storage and MPT's initial values."""

from __future__ import annotations

import torch


def has_meta_tensors(module: torch.nn.Module) -> bool:
    return any(t.is_meta for t in list(module.parameters()) + list(module.buffers()))


def materialize_meta_model(composer_model: torch.nn.Module, device: str) -> None:
    """Allocate a meta-built model on `device` and initialise it in place.

    Every rank runs this with the same seed, so replicas start identical without a
    broadcast. Models built directly on a real device are left untouched.
    """
    if not has_meta_tensors(composer_model):
        return
    composer_model.to_empty(device=device)
    inner = getattr(composer_model, 'model', composer_model)
    inner.init_weights()
