"""A sharded checkpoint written by 2 processes resumes on 1 and on 4 (real launcher, CPU, FSDP2).

The batch-4 checkpoint of the uninterrupted 2-process reference run is copied into a fresh save
folder and autoresumed with `composer -n 1` and `composer -n 4`. Checked, from each run's own
metrics.jsonl:

* data order: every resumed batch holds the same samples as the 2-process run's batch of that
  index (`data/token_sum`, summed over all ranks, equal): streaming's elastic determinism. The
  global order depends on num_canonical_nodes, not on the number of processes (foundry's default
  for it is derived from the data, see foundry.data.stream.text_dataset), and on resume streaming reads it
  back from the checkpoint's dataset state, with the sample position;
* the loss continues where the 2-process run was. The resumed runs turn dropout off (its masks
  are drawn per rank, so no two world sizes could agree with it on); 1 and 4 processes then agree
  to float rounding (reductions run in another order), and both stay within dropout's noise of
  the 2-process run's losses.
"""

from __future__ import annotations

import pytest

from tests.checkpoint.launching import (BATCHES, copy_checkpoint, losses, overrides, reference_run, run,
                                        side_by_side, token_sums)

pytestmark = pytest.mark.slow

RESUME_AT = 4


@pytest.fixture(scope='module')
def reference(tiny_data, tmp_path_factory):
    return reference_run(tiny_data, str(tmp_path_factory.mktemp('reference')))


def test_two_process_sharded_checkpoint_resumes_on_one_and_on_four(reference, tiny_data, tmp_path):
    resumed, sums = {}, {}
    for nproc in (1, 4):
        root = tmp_path / f'{nproc}proc'
        save_folder = str(root / 'checkpoints')
        copy_checkpoint(reference.save_folder, f'ep0-ba{RESUME_AT}', save_folder)
        # Dropout off: its masks are drawn per rank, so with it two world sizes could not agree batch by batch.
        job = run(overrides(tiny_data, str(root), None, 'model.resid_pdrop=0.0'), str(root / 'log.txt'), nproc=nproc)
        log = job.log()
        assert f'autoresume: on; resuming from {save_folder}/ep0-ba{RESUME_AT} (batch {RESUME_AT})' in log
        assert 'no batches replayed' in log
        metrics = str(root / 'run' / 'metrics.jsonl')
        resumed[nproc], sums[nproc] = losses(metrics), token_sums(metrics)
        # The resumed run writes checkpoints in its own layout: one shard per process.
        final = root / 'checkpoints' / f'ep0-ba{BATCHES}'
        assert sorted(p.name for p in final.iterdir()) == ['.metadata'] + [f'__{r}_0.distcp' for r in range(nproc)]

    print(side_by_side(f'per-batch loss: the 2-process run (dropout 0.1) and its batch-{RESUME_AT} checkpoint resumed '
                       f'on 1 and on 4 processes (dropout 0)',
                       {'2 procs': reference.losses, '2 -> 1 proc': resumed[1], '2 -> 4 procs': resumed[4]}))
    after = range(RESUME_AT, BATCHES)
    print('|1 proc - 4 procs|: ' + ', '.join(f'{abs(resumed[1][b] - resumed[4][b]):.1e}' for b in after))
    print('|resumed - 2-proc run|: ' + ', '.join(f'{abs(resumed[1][b] - reference.losses[b]):.1e}' for b in after))

    for nproc in (1, 4):
        # Same samples in every global batch as the 2-process run.
        assert sums[nproc] == {b: reference.token_sums[b] for b in after}
        assert sorted(resumed[nproc]) == list(after)
    for b in after:
        # 1 and 4 processes: same weights, same data, only the reduction order differs.
        assert abs(resumed[1][b] - resumed[4][b]) < 1e-4, (b, resumed[1][b], resumed[4][b])
        # Against the 2-process run with dropout 0.1: within that dropout's noise on 8 x 32 tokens.
        assert abs(resumed[1][b] - reference.losses[b]) < 0.25, (b, resumed[1][b], reference.losses[b])
