"""Kill a real 2-process run with SIGKILL (between checkpoints, and inside a checkpoint save), restart it
with the same command, and get exactly the per-batch losses of an uninterrupted run; the same through an
S3 save folder; and the run's checkpoints and HF folders load in transformers with foundry's logits.

Every run: tests/fixtures/tiny.yaml on 2 CPU processes (FSDP2, sharded checkpoints every 2 batches,
8 batches, dropout 0.1). Losses are compared with ==, not approximately.
"""

from __future__ import annotations

import json
import os

import boto3
import pytest
import torch

from tests.checkpoint.launching import (BATCHES, Job, hf_init, logged_batches, losses, overrides,
                                        reference_run, run, side_by_side, token_sums)

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def reference(tiny_data, tmp_path_factory):
    return reference_run(tiny_data, str(tmp_path_factory.mktemp('reference')))


def test_sigkill_anywhere_then_same_command_gives_the_uninterrupted_losses(reference, tiny_data, tmp_path):
    args = overrides(tiny_data, str(tmp_path))
    metrics = str(tmp_path / 'run' / 'metrics.jsonl')
    checkpoints = tmp_path / 'checkpoints'

    # 1. Killed between checkpoints: as soon as batch 2 has been logged (batch 3 is training).
    first = Job(args, str(tmp_path / 'log1.txt'))
    first.wait_for(lambda: 2 in logged_batches(metrics), 'batch 2 in metrics.jsonl')
    first.kill()
    killed_at = max(logged_batches(metrics))
    # Where run 2 must resume: the newest checkpoint whose .metadata was written before the kill.
    # (Read from disk: a fast run can finish the batch-4 save in the moment between the poll
    # and the kill, before batch 3's metrics line is written.)
    whole = [p.name for p in checkpoints.glob('ep0-ba*') if (p / '.metadata').exists()]
    resumed_from = max(whole, key=lambda name: int(name.rsplit('ba', 1)[1]))
    assert resumed_from in ('ep0-ba2', 'ep0-ba4'), whole  # killed before the batch-6 save

    # 2. Killed inside the save at batch 6: both ranks' .distcp written, rank 0 stuck before .metadata.
    marker = tmp_path / 'hanging'
    second = Job(args, str(tmp_path / 'log2.txt'), env={'FOUNDRY_FAULT': 'hang_in_save:6',
                                                         'FOUNDRY_FAULT_MARKER': str(marker)})
    second.wait_for(marker.exists, 'hang inside the batch-6 save')
    second.kill()
    partial = checkpoints / 'ep0-ba6'
    assert sorted(p.name for p in partial.iterdir()) == ['__0_0.distcp', '__1_0.distcp']  # no .metadata
    assert os.readlink(checkpoints / 'latest-rank0.pt') == 'ep0-ba4'  # never pointed at the partial one

    # 3. The same command again, to the end.
    third = run(args, str(tmp_path / 'log3.txt'))

    resumed = losses(metrics)
    print(side_by_side(f'per-batch loss (run 1 killed after batch {killed_at} was logged, run 2 killed inside '
                       f'the batch-6 save)', {'uninterrupted': reference.losses, 'killed+resumed': resumed}))
    assert resumed == reference.losses  # bit-identical, every batch
    # Every batch on one line of the file (the killed runs' replayed lines were moved out at each resume).
    batches = [line['batch'] for line in map(_parsed, open(metrics).read().splitlines()) if line]
    assert batches == list(range(BATCHES + 1)), batches
    assert token_sums(metrics) == reference.token_sums

    log2, log3 = second.log(), third.log()
    assert f'autoresume: on; resuming from {checkpoints / resumed_from}' in log2
    assert 'restored the checkpoint RNG state' in log2
    assert f'{partial} is incomplete (no .metadata' in log3
    assert f'autoresume: on; resuming from {checkpoints / "ep0-ba4"} (batch 4)' in log3
    assert 'no batches replayed' in log3
    # The partial checkpoint is kept, renamed out of Composer's way; the run re-saved batch 6 whole.
    assert sorted(p.name for p in (checkpoints / 'ep0-ba6.incomplete').iterdir()) == ['__0_0.distcp', '__1_0.distcp']
    assert (checkpoints / 'ep0-ba6' / '.metadata').exists()
    assert os.readlink(checkpoints / 'latest-rank0.pt') == 'ep0-ba8'


def test_sigkill_during_a_background_write_keeps_the_previous_latest(reference, tiny_data, tmp_path):
    """save_async: true. The write of checkpoint 4 hangs in the background (data written, no .metadata) while
    training goes on; the job is SIGKILLed; the same command resumes from checkpoint 2 with the same losses."""
    args = overrides(tiny_data, str(tmp_path), None, 'save_async=true')
    metrics = str(tmp_path / 'run' / 'metrics.jsonl')
    checkpoints = tmp_path / 'checkpoints'
    marker = tmp_path / 'hanging'
    job = Job(args, str(tmp_path / 'log1.txt'), env={'FOUNDRY_FAULT': 'hang_in_save:4',
                                                     'FOUNDRY_FAULT_MARKER': str(marker)})
    job.wait_for(marker.exists, 'the background write of checkpoint 4 hanging')
    # Training does not wait for it: batches 4 and 5 train (the save at 6 then waits for the write at 4).
    # Batch 4's line is complete once batch 5 logs its first metric.
    job.wait_for(lambda: 4 in logged_batches(metrics), 'batch 4 trained while checkpoint 4 was being written')
    job.kill()
    assert sorted(p.name for p in (checkpoints / 'ep0-ba4').iterdir()) == ['__0_0.distcp', '__1_0.distcp']
    assert os.readlink(checkpoints / 'latest-rank0.pt') == 'ep0-ba2'  # never moved to the unfinished one

    again = run(args, str(tmp_path / 'log2.txt'))
    log = again.log()
    assert f'{checkpoints / "ep0-ba4"} is incomplete (no .metadata' in log
    assert f'autoresume: on; resuming from {checkpoints / "ep0-ba2"} (batch 2)' in log
    resumed = losses(metrics)
    print(side_by_side('per-batch loss, save_async: killed during the background write of checkpoint 4',
                       {'uninterrupted (sync)': reference.losses, 'async, killed+resumed': resumed}))
    assert resumed == reference.losses
    assert os.readlink(checkpoints / 'latest-rank0.pt') == 'ep0-ba8'
    assert all((checkpoints / f'ep0-ba{b}' / '.metadata').exists() for b in (2, 4, 6, 8))


def _parsed(raw: str):
    try:
        return json.loads(raw)
    except ValueError:  # blank, or the fragment of a write the kill interrupted
        return None


def test_s3_save_folder_autoresumes_past_a_partial_upload(reference, tiny_data, tmp_path, make_bucket, s3_endpoint):
    """Resume from S3 (checkpoints up to batch 4 there, a half-uploaded batch 6), save the rest there, export it."""
    bucket = make_bucket('ckpt-resume')
    save_folder = f'{bucket}/{{run_name}}/checkpoints'
    client = boto3.client('s3', endpoint_url=s3_endpoint)
    # The state an interrupted S3 run leaves: whole checkpoints at 2 and 4, hf_meta, and of batch 6 only one
    # rank's shard (the upload of the rest and of .metadata never happened); no latest pointer yet.
    for name in ('ep0-ba2', 'ep0-ba4', 'hf_meta'):
        for file in sorted(os.listdir(os.path.join(reference.save_folder, name))):
            client.upload_file(os.path.join(reference.save_folder, name, file), 'ckpt-resume',
                               f'tiny/checkpoints/{name}/{file}')
    client.upload_file(os.path.join(reference.save_folder, 'ep0-ba6', '__0_0.distcp'), 'ckpt-resume',
                       'tiny/checkpoints/ep0-ba6/__0_0.distcp')
    hf_remote = f'{bucket}/tiny/hf'
    args = overrides(tiny_data, str(tmp_path), save_folder, f'callbacks.hf_checkpointer.save_folder={hf_remote}',
                     'callbacks.hf_checkpointer.save_interval=4ba')
    job = run(args, str(tmp_path / 'log.txt'))

    log = job.log()
    assert 'autoresume: s3://ckpt-resume/tiny/checkpoints/ep0-ba6 is incomplete (no .metadata' in log
    assert 'autoresume: on; resuming from s3://ckpt-resume/tiny/checkpoints/ep0-ba4 (batch 4)' in log
    resumed = losses(str(tmp_path / 'run' / 'metrics.jsonl'))
    print(side_by_side('per-batch loss, resumed from S3 at batch 4', {'uninterrupted': reference.losses,
                                                                       's3 resumed': resumed}))
    assert resumed == {b: reference.losses[b] for b in range(4, BATCHES)}
    assert token_sums(str(tmp_path / 'run' / 'metrics.jsonl')) == {b: reference.token_sums[b] for b in range(4, BATCHES)}
    keys = {o['Key'] for o in client.list_objects_v2(Bucket='ckpt-resume')['Contents']}
    assert {'tiny/checkpoints/ep0-ba8/.metadata', 'tiny/checkpoints/ep0-ba6/.metadata',
            'tiny/checkpoints/ep0-ba6.incomplete/__0_0.distcp', 'tiny/checkpoints/hf_meta/config.json',
            'tiny/hf/ba8/model.safetensors', 'tiny/hf/ba8/config.json'} <= keys
    pointer = client.get_object(Bucket='ckpt-resume', Key='tiny/checkpoints/latest-rank0.pt.symlink')['Body'].read()
    assert pointer.decode() == 'tiny/checkpoints/ep0-ba8'

    # Export straight from the bucket, through the pointer; the folder loads in transformers.
    from foundry.cli import main as foundry_cli

    out = tmp_path / 'exported'
    assert foundry_cli(['export', 'hf', f'{bucket}/tiny/checkpoints/latest-rank0.pt', str(out)]) == 0
    # Same weights as the uninterrupted run's final checkpoint (the runs are bit-identical).
    _assert_same_weights(str(out), os.path.join(reference.save_folder, 'ep0-ba8'))


def test_exported_checkpoint_and_hf_checkpointer_folders_load_in_transformers(reference, tmp_path):
    from transformers import AutoModelForCausalLM

    from foundry.export.hf import export_hf

    out = tmp_path / 'hf'
    export_hf(os.path.join(reference.save_folder, 'latest-rank0.pt'), str(out))
    ids = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    theirs = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ours = _foundry_model_from_checkpoint(os.path.join(reference.save_folder, 'ep0-ba8'))
    with torch.no_grad():
        diff = (theirs(ids).logits - ours(input_ids=ids).logits).abs().max().item()
    print(f'export round trip (ep0-ba8, sharded, 2 ranks): max |logit difference| transformers vs foundry = {diff:.3g}')
    assert diff < 1e-4
    assert theirs.generate(ids[:1, :8], max_new_tokens=8, do_sample=False).shape == (1, 16)

    # hf_checkpointer wrote a folder after every batch, gathered from both ranks' shards; at 4 and 8 they hold
    # exactly the checkpoints' weights.
    assert sorted(os.listdir(reference.hf_folder)) == [f'ba{b}' for b in range(1, BATCHES + 1)]
    _assert_same_weights(os.path.join(reference.hf_folder, 'ba8'), os.path.join(reference.save_folder, 'ep0-ba8'))
    _assert_same_weights(os.path.join(reference.hf_folder, 'ba4'), os.path.join(reference.save_folder, 'ep0-ba4'))
    assert AutoModelForCausalLM.from_pretrained(os.path.join(reference.hf_folder, 'ba4')) is not None


def test_run_started_from_a_hugging_face_folder(reference, tiny_data):
    """load_path: an HF MPT folder (sharded safetensors + index) loaded into the 2 ranks' FSDP2 shards.

    The lr warms up from 0, so batch 0 leaves the weights as loaded: hf_checkpointer's ba1 folder, gathered
    back from both ranks, must equal the folder the run started from, tensor for tensor.
    """
    from safetensors.torch import load_file

    init = hf_init(tiny_data)
    assert f'load_path: {init} is a Hugging Face folder' in reference.log
    assert f'loaded 14 tensors from the Hugging Face folder {init}' in reference.log
    assert os.path.exists(os.path.join(init, 'model.safetensors.index.json'))
    loaded, started = {}, {}
    for file in os.listdir(init):
        if file.endswith('.safetensors'):
            started.update(load_file(os.path.join(init, file)))
    loaded = load_file(os.path.join(reference.hf_folder, 'ba1', 'model.safetensors'))
    assert sorted(loaded) == sorted(started)
    for name in started:
        assert torch.equal(loaded[name], started[name]), name
    # ... and training moved on from there (Composer's warmup gives batches 0 and 1 lr 0; batch 2 moves).
    after = load_file(os.path.join(reference.hf_folder, 'ba3', 'model.safetensors'))
    assert not torch.equal(after['transformer.wte.weight'], started['transformer.wte.weight'])


def _foundry_model_from_checkpoint(checkpoint: str):
    from foundry.checkpoint.meta import find_run_meta
    from foundry.checkpoint.reader import iter_model_tensors
    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM

    config = MPTConfig.from_pretrained(find_run_meta(checkpoint))
    model = MPTForCausalLM(config)
    state = {}
    for group in iter_model_tensors(checkpoint):
        state.update(group)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {'lm_head.weight'}, (missing, unexpected)
    return model.eval()


def _assert_same_weights(hf_folder: str, checkpoint: str) -> None:
    from safetensors.torch import load_file

    from foundry.checkpoint.reader import iter_model_tensors

    exported = {}
    for file in os.listdir(hf_folder):
        if file.endswith('.safetensors'):
            exported.update(load_file(os.path.join(hf_folder, file)))
    original = {}
    for group in iter_model_tensors(checkpoint):
        original.update(group)
    original.pop('lm_head.weight', None)
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name


def test_reference_run_is_what_the_others_compare_with(reference):
    assert sorted(reference.losses) == list(range(BATCHES))
    print(f'reference run: {reference.seconds:.1f}s for {BATCHES} batches on 2 processes')
