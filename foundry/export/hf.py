"""Composer checkpoint -> Hugging Face folder (config.json, safetensors, tokenizer).

The folder loads with `transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)` (the
native MPT class, no remote code) and with foundry's own `MPTForCausalLM`. Weights are
streamed from the checkpoint into safetensors shards a group at a time, so a sharded
checkpoint converts without the whole model in one process's memory.

Every foundry run writes its model config and tokenizer into `{save_folder}/hf_meta/` at
start (foundry.checkpoint.meta), so a checkpoint folder describes itself; `--meta` points
elsewhere if needed. Checkpoints are read through foundry.checkpoint (reader, remote).
"""

from __future__ import annotations

import json
import os
from typing import Optional

import torch

from foundry.checkpoint.errors import CheckpointError
from foundry.checkpoint.meta import META_DIRNAME, find_run_meta
from foundry.checkpoint.reader import iter_model_tensors, resolve_local_checkpoint
from foundry.data.tokenizer import save_tokenizer

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def export_hf(checkpoint: str, out_dir: str, dtype: Optional[str] = None, meta_dir: Optional[str] = None,
              max_shard_bytes: int = 2 << 30) -> str:
    """Write the Hugging Face folder; a remote checkpoint is downloaded to a temporary folder, removed after."""
    if '://' not in checkpoint:
        return _export_hf(checkpoint, checkpoint, out_dir, dtype, meta_dir, max_shard_bytes)
    import tempfile

    from foundry.checkpoint.remote import download_checkpoint

    check_out_dir(out_dir)
    with tempfile.TemporaryDirectory(prefix='foundry-export-') as tmp:
        try:
            local = download_checkpoint(checkpoint, tmp)
        except Exception as e:  # credentials, a missing bucket or key: one line naming the checkpoint
            from foundry.user_errors import runtime_fault

            message = runtime_fault(e)
            if message is None:
                raise
            raise CheckpointError(f'{checkpoint}: {message}') from e
        return _export_hf(checkpoint, local, out_dir, dtype, meta_dir, max_shard_bytes)


def _export_hf(checkpoint: str, source: str, out_dir: str, dtype: Optional[str], meta_dir: Optional[str],
               max_shard_bytes: int) -> str:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from foundry.models.mpt.configuration import DTYPE_KEY, MPTConfig

    # Resolve first (a remote checkpoint is downloaded with its run's hf_meta beside it); the
    # checkpoint, file or folder, sits directly in the save folder that holds hf_meta.
    check_out_dir(out_dir)
    local = resolve_local_checkpoint(source)
    check_whole_checkpoint(checkpoint, local)
    if meta_dir is None:
        try:
            meta_dir = find_run_meta(local)
        except CheckpointError:
            if source != checkpoint:
                raise
            meta_dir = find_run_meta(checkpoint)  # e.g. a symlink into another folder
    config = MPTConfig.from_pretrained(meta_dir)
    target_dtype = DTYPES[dtype] if dtype else None
    created = not os.path.exists(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    try:
        return _write_hf_folder(checkpoint, source, local, out_dir, config, meta_dir, target_dtype, max_shard_bytes)
    except BaseException:
        if created:  # a refused or interrupted export leaves no half-written folder behind
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
        raise


def check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise CheckpointError(f'OUT_DIR {out_dir} is a file; give the path of a folder to write (it is created)')
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise CheckpointError(f'OUT_DIR {out_dir}: its parent folder {parent} does not exist')


def check_whole_checkpoint(given: str, local: str) -> None:
    """Refuse what is not one whole checkpoint (a save folder, a `.incomplete` one, a truncated file) by name."""
    from foundry.checkpoint.layout import LocalSaveFolder, local_checkpoint_problem

    name = os.path.basename(local.rstrip('/'))
    if name.endswith('.incomplete'):
        raise CheckpointError(f'{given} was set aside by autoresume as an incomplete checkpoint (a save that was '
                              f'interrupted); export a whole one{_newest_hint(os.path.dirname(local))}')
    if os.path.isdir(local) and not os.path.exists(os.path.join(local, '.metadata')):
        folder = LocalSaveFolder(local)
        if folder.checkpoints() or os.path.isdir(os.path.join(local, META_DIRNAME)):
            raise CheckpointError(f'{given} is a save folder, not a checkpoint: pass one of its checkpoints'
                                  f'{_newest_hint(local)}')
    problem = local_checkpoint_problem(local)
    if problem is not None:
        raise CheckpointError(f'{given} is not a whole checkpoint: {problem}{_newest_hint(os.path.dirname(local))}')


def _newest_hint(save_folder: str) -> str:
    from foundry.checkpoint.layout import LocalSaveFolder

    try:
        newest, _ = LocalSaveFolder(save_folder).newest_whole()
    except Exception:  # a hint only; the error stands without it
        return ''
    return f' (the newest whole one here is {newest.location})' if newest is not None else ''


def _write_hf_folder(checkpoint: str, source: str, local: str, out_dir: str, config, meta_dir: str, target_dtype,
                     max_shard_bytes: int) -> str:
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from foundry.models.mpt.configuration import DTYPE_KEY

    tied = getattr(config, 'tie_word_embeddings', True)
    weight_map: dict[str, str] = {}
    shard_files: list[str] = []
    total = 0
    for index, group in enumerate(iter_model_tensors(local, max_bytes=max_shard_bytes)):
        tensors = {}
        for name, tensor in group.items():
            if tied and name == 'lm_head.weight':
                continue  # tied to transformer.wte.weight; HF re-ties on load
            tensor = tensor.detach().to('cpu')
            tensors[name] = (tensor.to(target_dtype) if target_dtype and tensor.is_floating_point() else tensor).contiguous()
            total += tensors[name].numel() * tensors[name].element_size()
        filename = f'model-{index + 1:05d}.safetensors'
        save_file(tensors, os.path.join(out_dir, filename), metadata={'format': 'pt'})
        weight_map.update({name: filename for name in tensors})
        shard_files.append(filename)
        del tensors, group

    _rename_shards(out_dir, shard_files, weight_map)
    if target_dtype is not None:
        # transformers 5 loads the folder in this dtype by default; 4.x when asked with torch_dtype='auto'.
        setattr(config, DTYPE_KEY, target_dtype)
    # Runs train with use_cache off; whoever generates from the folder wants the KV cache (2x faster).
    config.use_cache = True
    # The class name mosaicml/mpt-7b's folder names: llama.cpp's convert_hf_to_gguf.py picks its converter by it
    # (without it: "Failed to detect model architecture"); transformers itself goes by model_type.
    config.architectures = ['MPTForCausalLM']
    config.save_pretrained(out_dir)
    save_tokenizer(AutoTokenizer.from_pretrained(meta_dir), out_dir)
    print(f'exported {len(weight_map)} tensors ({total / 2**20:.1f} MiB) from '
          f'{checkpoint if source != checkpoint else local} to {out_dir}')
    problems = transformers_incompatibilities(config)
    if problems:
        print(f"warning: transformers' native MptForCausalLM cannot represent this model ({'; '.join(problems)}): "
              f'AutoModelForCausalLM.from_pretrained would build a different network or refuse the config. Load '
              f'the folder with foundry.models.mpt.modeling.MPTForCausalLM.from_pretrained instead.')
    return out_dir


def transformers_incompatibilities(config) -> list[str]:
    """What in an MPT config transformers' own MPT class (modeling_mpt.py, 4.51 and 5) does not implement.

    That class hard-codes a 4x MLP, multi-head attention with one fused Wqkv, ALiBi with
    alibi_bias_max 8, LayerNorm, no biases in linear layers, and no position embedding table.
    transformers 5's MptConfig also checks types: attn_pdrop must be an int (so 0) and attn_type
    multihead_attention or multiquery_attention.
    """
    import transformers

    attn = dict(getattr(config, 'attn_config', None) or {})
    problems = []
    if int(transformers.__version__.split('.')[0]) >= 5:
        pdrop = attn.get('attn_pdrop', 0)
        if not float(pdrop).is_integer():
            problems.append(f'attn_pdrop {pdrop} (transformers 5 declares an int)')
        if attn.get('attn_type') == 'grouped_query_attention' and attn.get('kv_n_heads') == config.n_heads:
            problems.append('attn_type grouped_query_attention (transformers 5 accepts multihead_attention or '
                            'multiquery_attention)')
    if getattr(config, 'expansion_ratio', 4) != 4:
        problems.append(f'expansion_ratio {config.expansion_ratio} (transformers hard-codes 4)')
    if not attn.get('alibi', True):
        problems.append('alibi off (transformers always applies ALiBi)')
    elif attn.get('alibi_bias_max', 8) != 8:
        problems.append(f'alibi_bias_max {attn["alibi_bias_max"]} (transformers uses 8)')
    if getattr(config, 'learned_pos_emb', False):
        problems.append('learned position embeddings (transformers has no wpe)')
    kv = attn.get('kv_n_heads')
    if attn.get('attn_type', 'multihead_attention') != 'multihead_attention' and kv != config.n_heads:
        problems.append(f'{attn["attn_type"]} (transformers implements multi-head attention only)')
    if attn.get('qk_ln'):
        problems.append('qk_ln (transformers has no query/key LayerNorm)')
    if getattr(config, 'norm_type', 'low_precision_layernorm') not in ('layernorm', 'low_precision_layernorm'):
        problems.append(f'norm_type {config.norm_type} (transformers uses LayerNorm)')
    if not getattr(config, 'no_bias', True):
        problems.append('linear biases (no_bias false; transformers has none)')
    if getattr(config, 'logit_scale', None) is not None:
        problems.append(f'logit_scale {config.logit_scale}')
    if getattr(config, 'embedding_fraction', 1.0) != 1.0:
        problems.append(f'embedding_fraction {config.embedding_fraction}')
    return problems


def _rename_shards(out_dir: str, files: list[str], weight_map: dict[str, str]) -> None:
    """Name shards model-0000i-of-0000n (or model.safetensors when there is one) and index them."""
    if len(files) == 1:
        os.replace(os.path.join(out_dir, files[0]), os.path.join(out_dir, 'model.safetensors'))
        return
    renamed = {f: f'model-{i + 1:05d}-of-{len(files):05d}.safetensors' for i, f in enumerate(files)}
    for old, new in renamed.items():
        os.replace(os.path.join(out_dir, old), os.path.join(out_dir, new))
    index = {'metadata': {}, 'weight_map': {k: renamed[v] for k, v in weight_map.items()}}
    with open(os.path.join(out_dir, 'model.safetensors.index.json'), 'w') as f:
        json.dump(index, f, indent=2)
