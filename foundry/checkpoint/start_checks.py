"""Refusals of a start that the checkpoint itself reveals, made before any Trainer exists.

Two mistakes otherwise surface deep inside Composer or torch, on every rank: starting from a
checkpoint that is already at or past `max_duration` (a finished run started again, or a
`load_path` from a longer run), and loading a checkpoint whose tensors have other shapes than
the YAML's model. Both are read cheaply here: the position from the checkpoint's name
(`ep{E}-ba{B}`), the shapes from its index (sharded) or a memory-mapped load (full), and the
model's own shapes from a meta-device copy of the model (no memory).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from foundry.checkpoint.errors import CheckpointError
from foundry.config.durations import in_batches, parse_time

# Model keys whose values fix tensor shapes, compared with the checkpoint's hf_meta/config.json.
_SHAPE_KEYS = ('d_model', 'n_heads', 'n_layers', 'expansion_ratio', 'vocab_size', 'no_bias', 'norm_type',
               'learned_pos_emb', 'max_seq_len')


def check_start(start, cfg, mpt_config) -> Any:
    """Raise a one-line CheckpointError if `start` (a resume.StartPlan) cannot train; else return it."""
    from foundry.checkpoint.layout import parse_name

    if start.resume is not None:
        ref = start.resume
        _check_not_finished(cfg, ref.epoch, ref.batch, own=f'this run already finished at batch {ref.batch}',
                            where=ref.location)
        _check_shapes(ref.location, mpt_config, 'save_folder')
    elif start.load_path is not None:
        parsed = parse_name(os.path.basename(start.load_path.rstrip('/')))
        if parsed is not None and not start.load_weights_only:
            _, epoch, batch = parsed
            _check_not_finished(cfg, epoch, batch, own=None, where=start.load_path)
        _check_shapes(start.load_path, mpt_config, 'load_path')
    return start


def _check_not_finished(cfg, epoch: int, batch: int, own: Optional[str], where: str) -> None:
    duration = parse_time(cfg.max_duration, 'max_duration')
    seq_len = (cfg.train_loader.get('dataset') or {}).get('max_seq_len') or cfg.max_seq_len
    if duration.unit == 'ep':
        done = epoch >= duration.value
        position = f'epoch {epoch} (batch {batch})'
    else:
        limit = in_batches(duration, cfg.global_train_batch_size, seq_len)
        if limit is None:
            return
        done = batch >= limit
        position = f'batch {batch}'
    if not done:
        return
    if own is not None:
        raise CheckpointError(f'{own} (max_duration {cfg.max_duration}; newest checkpoint {where}): raise '
                              f'max_duration to train further, or set another run_name/save_folder to start a new run')
    raise CheckpointError(f'load_path {where} is at {position}, and max_duration {cfg.max_duration} ends there or '
                          f'before, so nothing would be trained: raise max_duration past it, or set '
                          f'load_weights_only=true to start a new schedule from its weights')


def _check_shapes(location: str, mpt_config, key: str) -> None:
    """The checkpoint's model tensors against this config's model: same names' shapes (local checkpoints)."""
    if '://' in location or not os.path.exists(location):
        return
    from foundry.checkpoint.reader import model_tensor_names

    try:
        saved = model_tensor_names(location)
    except CheckpointError:
        return  # not a foundry model checkpoint; Composer reports what it finds
    expected, aliases = _model_shapes(mpt_config)
    problem = None
    for name, (shape, _) in saved.items():
        want = expected.get(name)
        if want is not None and tuple(shape) != tuple(want):
            problem = f'{name} is {list(shape)} there but {list(want)} in this config\'s model'
            break
    if problem is None:
        missing = sorted(set(expected) - set(saved))
        extra = sorted(set(saved) - set(expected) - aliases)
        if missing:
            problem = f'this config\'s model has {missing[0]}, which the checkpoint lacks ({len(missing)} tensors)'
        elif extra:
            problem = f'the checkpoint has {extra[0]}, which this config\'s model lacks ({len(extra)} tensors)'
    if problem is not None:
        differs = _config_differences(location, mpt_config)
        because = f'; its run had {differs}' if differs else ''
        raise CheckpointError(
            f'{key} {location} holds a model of another shape: {problem}{because}. Set the model keys to the '
            f'checkpoint\'s (its hf_meta/config.json), or use another {key}')


def _model_shapes(mpt_config) -> tuple[dict[str, tuple[int, ...]], set[str]]:
    """Shapes of the tensors a checkpoint must hold (tied weights once), and every state_dict name."""
    import torch

    from foundry.models.mpt.modeling import MPTForCausalLM

    with torch.device('meta'):
        model = MPTForCausalLM(mpt_config)
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    return shapes, set(model.state_dict())


def _config_differences(location: str, mpt_config) -> str:
    """'model.d_model=32 where this config has 64, ...' from the hf_meta beside the checkpoint, or ''."""
    from foundry.checkpoint.meta import META_DIRNAME

    probe = os.path.dirname(os.path.abspath(location))
    path = os.path.join(probe, META_DIRNAME, 'config.json')
    if not os.path.isfile(path):
        return ''
    try:
        with open(path) as f:
            theirs = json.load(f)
    except (OSError, ValueError):
        return ''
    ours = mpt_config.to_dict()
    diffs = [f'model.{k}={theirs[k]} where this config has {ours.get(k)}' for k in _SHAPE_KEYS
             if k in theirs and theirs[k] != ours.get(k)]
    return ', '.join(diffs)
