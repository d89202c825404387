"""A finetuning run through the real launcher (2 processes, FSDP2): prompt/response JSONL, packed
(packing_ratio auto) with the document mask, starting from a Hugging Face MPT folder (load_path,
weights only, loaded into the shards); killed checkpoints aside, rerunning the same command
resumes it and trains the same losses as the uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from tests.checkpoint.launching import hf_init, losses, run

pytestmark = pytest.mark.slow


def test_finetuning_run_resumes_with_the_same_losses(tmp_path, tiny_tokenizer_path):
    data_root = tmp_path / 'data'
    data_root.mkdir()
    shutil.copy(tiny_tokenizer_path, data_root / 'tokenizer.json')
    rows = [{'prompt': f'def f{i}(x):\n', 'response': '    return x' + ' + 1' * (i % 6) + '\n'}
            for i in range(120)]
    jsonl = data_root / 'sft.jsonl'
    jsonl.write_text(''.join(json.dumps(r) + '\n' for r in rows))
    run_dir = tmp_path / 'run'
    args = [f'variables.data_root={data_root}', f'run_folder={run_dir}/run',
            f'save_folder={run_dir}/checkpoints', f'load_path={hf_init(str(data_root))}',
            'load_weights_only=true', 'max_duration=6ba', 'save_interval=3ba', 'model.expansion_ratio=4',
            'model.attn_config.attn_uses_sequence_id=true',
            'train_loader.name=finetuning', 'train_loader.dataset.local=null',
            f'train_loader.dataset.hf_name={jsonl}', 'train_loader.dataset.packing_ratio=auto']
    first = run(args, str(tmp_path / 'first.log'))
    log = first.log()
    assert 'packing: 120 examples' in log and '(auto)' in log
    assert 'loaded' in log and 'Hugging Face folder' in log  # weights from the HF folder
    metrics = f'{run_dir}/run/metrics.jsonl'
    uninterrupted = losses(metrics)
    assert sorted(uninterrupted) == [0, 1, 2, 3, 4, 5]

    # As if the run had died after its batch-3 checkpoint: the same command resumes it there.
    shutil.rmtree(f'{run_dir}/checkpoints/ep0-ba6')
    second = run(args, str(tmp_path / 'second.log'))
    assert 'resuming from' in second.log() and '(batch 3)' in second.log()
    resumed = losses(metrics)
    assert [resumed[b] for b in (3, 4, 5)] == [uninterrupted[b] for b in (3, 4, 5)]
