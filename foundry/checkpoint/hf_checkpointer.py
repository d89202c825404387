"""`callbacks: {hf_checkpointer: {save_folder, save_interval, precision}}`: Hugging Face folders during training.

Every `save_interval` (and at the end of training) the model's full state dict is gathered
collectively (`get_model_state_dict(full_state_dict=True, cpu_offload=True)`: each FSDP2
shard is all-gathered and offloaded to CPU, rank 0 keeps the result), and rank 0 writes

    {save_folder}/ba{batch}/config.json, model.safetensors, tokenizer files

which `transformers.AutoModelForCausalLM.from_pretrained` loads as is. A local folder is
written under a temporary name and renamed when complete; a remote one (s3://...) is written
locally and uploaded file by file with retries, `config.json` last.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Union

import torch
from composer.core import Callback, Event, State, Time
from composer.loggers import Logger

log = logging.getLogger(__name__)

PRECISIONS = {'fp32': torch.float32, 'float32': torch.float32, 'bf16': torch.bfloat16, 'bfloat16': torch.bfloat16,
              'fp16': torch.float16, 'float16': torch.float16}


class HuggingFaceCheckpointer(Callback):
    """Write a Hugging Face folder every `save_interval` into `save_folder` (may contain {run_name})."""

    def __init__(self, save_folder: str, save_interval: Union[str, int, Time] = '1ep', precision: str = 'fp32'):
        from composer.utils import create_interval_scheduler

        if precision not in PRECISIONS:
            raise ValueError(f'hf_checkpointer.precision {precision!r}: use one of {", ".join(PRECISIONS)}')
        self.save_folder = save_folder
        self.precision = precision
        self.interval = create_interval_scheduler(save_interval)
        self._folder = save_folder
        self.saved: list[str] = []

    def init(self, state: State, logger: Logger) -> None:
        del logger  # unused
        from composer.utils import format_name_with_dist

        self._folder = format_name_with_dist(self.save_folder, state.run_name).rstrip('/')

    def batch_checkpoint(self, state: State, logger: Logger) -> None:
        if self.interval(state, Event.BATCH_CHECKPOINT):
            self.save(state)

    def epoch_checkpoint(self, state: State, logger: Logger) -> None:
        if self.interval(state, Event.EPOCH_CHECKPOINT):
            self.save(state)

    def save(self, state: State) -> str:
        """Gather the weights (collective: every rank calls this) and write the folder on rank 0."""
        from composer.utils import dist
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        model = state.model.model  # the MPTForCausalLM inside the Composer wrapper
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        weights = get_model_state_dict(model, options=options)
        name = f'ba{int(state.timestamp.batch)}'
        target = f'{self._folder}/{name}'
        if dist.get_global_rank() == 0:
            self._write(model, getattr(state.model, 'tokenizer', None), weights, target)
            self.saved.append(target)
            log.info('hf_checkpointer: wrote %s (%s)', target, self.precision)
        del weights
        dist.barrier()
        return target

    def _write(self, model, tokenizer, weights: dict[str, torch.Tensor], target: str) -> None:
        from foundry.checkpoint.layout import is_remote

        if is_remote(target):
            from foundry.checkpoint.store import object_store_for, upload_file

            with tempfile.TemporaryDirectory(prefix='foundry-hf-') as tmp:
                _write_folder(model, tokenizer, weights, tmp, PRECISIONS[self.precision])
                store, key = object_store_for(target)
                files = sorted(os.listdir(tmp), key=lambda f: (f == 'config.json', f))  # config last: "complete"
                for file in files:
                    upload_file(store, os.path.join(tmp, file), f'{key}/{file}', f'{target}/{file}')
            return
        partial = target + '.partial'
        shutil.rmtree(partial, ignore_errors=True)
        _write_folder(model, tokenizer, weights, partial, PRECISIONS[self.precision])
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(partial, target)


def _write_folder(model, tokenizer, weights: dict[str, torch.Tensor], out_dir: str, dtype: torch.dtype) -> None:
    import copy

    from safetensors.torch import save_file

    from foundry.data.tokenizer import save_tokenizer
    from foundry.models.mpt.configuration import DTYPE_KEY

    os.makedirs(out_dir, exist_ok=True)
    config = copy.deepcopy(model.config)
    tied = getattr(config, 'tie_word_embeddings', True)
    tensors = {}
    for name, tensor in weights.items():
        if tied and name == 'lm_head.weight':
            continue
        tensor = tensor.detach().cpu()
        tensors[name] = (tensor.to(dtype) if tensor.is_floating_point() else tensor).contiguous()
    save_file(tensors, os.path.join(out_dir, 'model.safetensors'), metadata={'format': 'pt'})
    setattr(config, DTYPE_KEY, dtype)
    config.use_cache = True  # generate() in the exported folder reuses keys and values (training never asks)
    config.save_pretrained(out_dir)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)
