"""What a resume costs: launch -> first trained batch, fresh start vs autoresume, side by side.

    python launch/bench/resume_bench.py                          # tiny.yaml model, 2 CPU processes
    python launch/bench/resume_bench.py --d-model 512 --n-layers 8 --repeats 3

Each round launches `composer -n NPROC launch/train.py tests/fixtures/tiny.yaml ...` twice with the
same command line: once on an empty save folder (fresh start; it trains to the end, saving a
checkpoint every 2 batches), then again after the checkpoints past batch 2 were removed, so the run
autoresumes at batch 2. For both it records, from the job's own output:

* first batch: seconds from launch until Composer prints the first finished batch;
* load: seconds between Composer's "Loading checkpoint" and "Loaded state dict" (resume only).

The difference of the first-batch times is what resuming costs over starting fresh. Both runs pay
the same process start, imports, data and model setup; the resume adds reading the checkpoint
(model, optimizer, RNG, dataset position) and nothing proportional to the batches already done.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_YAML = os.path.join(REPO, 'tests', 'fixtures', 'tiny.yaml')
STAMP = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): rank0')


def launch(args: list[str], nproc: int, log_path: str) -> dict[str, float]:
    """Run one job to the end; return the timings read off its output."""
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', str(nproc), os.path.join(REPO, 'launch', 'train.py'), TINY_YAML, *args]
    started = time.time()
    first_batch = None
    stamps: dict[str, float] = {}
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                env={**os.environ, 'PYTHONUNBUFFERED': '1'})
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if first_batch is None and line.startswith('[batch='):
                first_batch = time.time() - started
            match = STAMP.match(line)
            if match:
                when = datetime.datetime.strptime(match.group(1), '%Y-%m-%d %H:%M:%S,%f').timestamp()
                for key, text in (('load_start', 'Loading checkpoint from'), ('load_end', 'Loaded state dict')):
                    if text in line and key not in stamps:
                        stamps[key] = when
        rc = proc.wait()
    total = time.time() - started
    if rc != 0:
        raise SystemExit(f'job failed ({rc}); see {log_path}')
    out = {'first_batch': first_batch or float('nan'), 'total': total}
    if 'load_start' in stamps and 'load_end' in stamps:
        out['load'] = stamps['load_end'] - stamps['load_start']
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--nproc', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=1)
    parser.add_argument('--batches', type=int, default=4, help='max_duration of the run, in batches')
    parser.add_argument('--d-model', type=int, default=None)
    parser.add_argument('--n-layers', type=int, default=None)
    parser.add_argument('--data-root', default=None, help='a build_demo_data folder (default: build one)')
    parser.add_argument('--keep', action='store_true', help='keep the work folder')
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix='resume-bench-')
    data_root = args.data_root
    if data_root is None:
        sys.path.insert(0, REPO)
        from foundry.data.prep.demo_corpus import build_demo_data

        data_root = os.path.join(work, 'data')
        build_demo_data(data_root, seq_len=32, max_bytes_per_stream=150_000, vocab_size=512, verbose=False)
    model = []
    if args.d_model:
        model += [f'model.d_model={args.d_model}', f'model.n_heads={max(args.d_model // 64, 2)}']
    if args.n_layers:
        model += [f'model.n_layers={args.n_layers}']

    fresh, resumed = [], []
    for round_ in range(args.repeats):
        root = os.path.join(work, f'round{round_}')
        save = os.path.join(root, 'checkpoints')
        cmd = [f'variables.data_root={data_root}', f'train_loader.dataset.local={data_root}/english',
               f'run_folder={root}/run', f'save_folder={save}', f'max_duration={args.batches}ba', 'save_interval=2ba',
               *model]
        fresh.append(launch(cmd, args.nproc, os.path.join(root + '-fresh.log')))
        size = sum(os.path.getsize(os.path.join(save, 'ep0-ba2', f)) for f in os.listdir(os.path.join(save, 'ep0-ba2')))
        for name in os.listdir(save):  # back to the state of a run stopped after its batch-2 checkpoint
            if name.startswith('ep') and name != 'ep0-ba2':
                shutil.rmtree(os.path.join(save, name))
        os.remove(os.path.join(save, 'latest-rank0.pt'))
        os.symlink('ep0-ba2', os.path.join(save, 'latest-rank0.pt'))
        resumed.append(launch(cmd, args.nproc, os.path.join(root + '-resume.log')))

    def med(rows, key):
        values = [r[key] for r in rows if key in r]
        return statistics.median(values) if values else float('nan')

    print(f'\nresume cost: {args.nproc} processes, checkpoint {size / 2**20:.2f} MiB on disk '
          f'({"tiny.yaml model" if not model else " ".join(model)}), median of {args.repeats} round(s)')
    print(f'{"":34}{"fresh start":>14}{"autoresume":>14}{"difference":>14}')
    a, b = med(fresh, 'first_batch'), med(resumed, 'first_batch')
    print(f'{"launch -> first trained batch (s)":34}{a:14.2f}{b:14.2f}{b - a:+14.2f}')
    print(f'{"checkpoint load (s)":34}{"-":>14}{med(resumed, "load"):14.2f}')
    print(f'(per round, first batch: fresh {[round(r["first_batch"], 2) for r in fresh]}, '
          f'resume {[round(r["first_batch"], 2) for r in resumed]}; logs in {work})')
    if not args.keep and args.data_root is None:
        shutil.rmtree(os.path.join(work, 'data'), ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
