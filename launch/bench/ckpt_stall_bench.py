"""Training stall per checkpoint, synchronous vs `save_async: true`, side by side.

    python launch/bench/ckpt_stall_bench.py                 # both parts, prints the table
    python launch/bench/ckpt_stall_bench.py --only demo     # or --only demo1, --only 1b
    python launch/bench/ckpt_stall_bench.py --out launch/bench/results/ckpt_stall_cpu.txt

Part 1, demo size: `composer -n 2 launch/train.py yamls/pretrain/demo.yaml` (the `make demo` model:
2 CPU processes, FSDP2, LION, sharded checkpoints) for --demo-batches batches with a checkpoint every
--demo-interval, three times: no checkpoints, synchronous (Composer's saver), `save_async=true`.
Per-batch wall times come from the run's metrics.jsonl (speed_monitor's `time/train`, the
longest rank; a save is counted in the batch that follows it). Two figures per checkpoint:

* stall: the batch after a checkpoint minus the median batch of the same run (what training waits);
* slowdown: (the run's batches - as many batches at the no-checkpoint run's median) / checkpoints,
  which also counts a background write slowing the batches it overlaps (2 shared cores here).

Part 2, 1B parameters on CPU: one process (gloo group of 1), foundry's MPT with d_model 2048, 18 blocks,
vocabulary 50,432 (1.009B parameters), foundry's DecoupledLionW; batch 1 x 64 tokens. Weights and LION
state are bf16 (4.0 GB per checkpoint): in fp32 the run plus the staging copy would need ~20 GB, more than
this shared machine has free. A checkpoint every --big-interval steps, written like the trainer writes
them: synchronous = torch DCP `save` (what Composer's saver calls), async = DCP `async_save` through
foundry's staging writer (foundry/checkpoint/async_save.py), one write in flight. Stall = time the
training loop spends in the save call (async: staging, plus waiting for the previous write if it is
still running); steps that overlap a background write are reported separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO_YAML = os.path.join(REPO, 'yamls', 'pretrain', 'demo.yaml')


# ---------------------------------------------------------------------------------------------- part 1
def demo_run(mode: str, root: str, data: str, batches: int, interval: int) -> dict:
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    run = os.path.join(root, mode)
    shutil.rmtree(run, ignore_errors=True)
    save_interval = f'{interval}ba' if mode != 'none' else f'{batches * 10}ba'
    args = [f'variables.data_root={data}', f'run_folder={run}/run', f'save_folder={run}/checkpoints',
            f'max_duration={batches}ba', f'save_interval={save_interval}', f'save_async={mode == "async"}',
            f'eval_interval={batches * 10}ba', 'icl_tasks=null', 'eval_gauntlet=null',
            'callbacks.speed_monitor.window_size=1', 'console_log_interval=1000ba']
    cmd = [composer, '-n', '2', os.path.join(REPO, 'launch', 'train.py'), DEMO_YAML, *args]
    with open(os.path.join(root, f'{mode}.log'), 'w') as log:
        subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    from foundry.loggers.jsonl import read_metrics

    metrics = read_metrics(os.path.join(run, 'run', 'metrics.jsonl'))
    # speed_monitor's time/train: hours of training wall clock so far (Composer 0.32 logs hours).
    wall = {b: m['time/train'] * 3600 for b, m in metrics.items() if 'time/train' in m}
    # Line k+1 holds the time after k+1 batches; batch k's duration includes a save made just before it.
    durations = {k: wall[k + 1] - wall[k] for k in range(1, batches) if k in wall and k + 1 in wall}
    saved_before = {c for c in range(interval, batches, interval)} if mode != 'none' else set()
    stall_stats = {b: m['checkpoint/stall_s'] for b, m in metrics.items() if 'checkpoint/stall_s' in m}
    return {'durations': durations, 'after_save': sorted(saved_before & set(durations)), 'inline_stall': stall_stats}


def demo_part(args) -> list[str]:
    from foundry.data.prep.demo_corpus import build_demo_data

    root = tempfile.mkdtemp(prefix='ckpt-stall-demo-')
    data = os.path.join(REPO, 'demo_out', 'data')
    build_demo_data(data, seq_len=128)  # skipped when already built
    results = {}
    for repeat in range(args.repeats):
        for mode in ('none', 'sync', 'async'):
            print(f'[bench] demo size, {mode}, round {repeat + 1}', flush=True)
            results.setdefault(mode, []).append(demo_run(mode, root, data, args.demo_batches, args.demo_interval))
    base = statistics.median(d for r in results['none'] for d in r['durations'].values())
    lines = [f'demo size (yamls/pretrain/demo.yaml: d_model 128, 4 blocks, 1.9M parameters; 2 processes, FSDP2, '
             f'LION): {args.demo_batches} batches, a checkpoint every {args.demo_interval}, {args.repeats} round(s)',
             f'  median batch without checkpoints: {base * 1000:.1f} ms']
    rows = {}
    for mode in ('sync', 'async'):
        stalls, slowdowns = [], []
        for r in results[mode]:
            median = statistics.median(d for k, d in r['durations'].items() if k not in r['after_save'])
            stalls += [r['durations'][k] - median for k in r['after_save']]
            slowdowns.append((sum(r['durations'].values()) - base * len(r['durations'])) / len(r['after_save']))
        rows[mode] = (statistics.median(stalls), statistics.median(slowdowns), len(stalls))
    lines.append(f'  {"":22}{"sync":>12}{"async":>12}{"sync/async":>12}')
    lines.append(f'  {"stall per checkpoint":22}{rows["sync"][0] * 1000:>10.1f}ms{rows["async"][0] * 1000:>10.1f}ms'
                 f'{_ratio(rows["sync"][0], rows["async"][0]):>12}')
    lines.append(f'  {"slowdown per checkpoint":22}{rows["sync"][1] * 1000:>10.1f}ms{rows["async"][1] * 1000:>10.1f}ms'
                 f'{_ratio(rows["sync"][1], rows["async"][1]):>12}')
    inline = [s for r in results['async'] for s in r['inline_stall'].values()]
    if inline:
        lines.append(f'  (async: time inside the save on the training thread, from checkpoint/stall_s: median '
                     f'{statistics.median(inline) * 1000:.1f} ms over {len(inline)} saves)')
    shutil.rmtree(root, ignore_errors=True)
    return lines


def demo_inprocess_part(args) -> list[str]:
    """The demo model through the real Trainer in this process (one rank), timing the save call itself.

    What training waits for is the time the training thread spends inside the saver's `_save_checkpoint`
    (Composer's for sync, foundry's AsyncCheckpointSaver for async): timed directly, it does not depend on
    the batch-to-batch noise a loaded 2-core machine adds to the launcher runs above.
    """
    from composer.callbacks.checkpoint_saver import CheckpointSaver

    from foundry.checkpoint.async_save import AsyncCheckpointSaver
    from foundry.config.load import load_config
    from foundry.data.prep.demo_corpus import build_demo_data
    from foundry.train import train

    data = os.path.join(REPO, 'demo_out', 'data')
    build_demo_data(data, seq_len=128)
    root = tempfile.mkdtemp(prefix='ckpt-stall-demo1-')
    timings: dict[str, list[float]] = {'sync': [], 'async': []}
    originals = {cls: cls._save_checkpoint for cls in (CheckpointSaver, AsyncCheckpointSaver)}

    def timed(cls, mode):
        def save(self, state, logger):
            t0 = time.perf_counter()
            originals[cls](self, state, logger)
            if type(self) is cls:  # the async saver may call up into Composer's for a full checkpoint
                timings[mode].append(time.perf_counter() - t0)
        return save

    CheckpointSaver._save_checkpoint = timed(CheckpointSaver, 'sync')
    AsyncCheckpointSaver._save_checkpoint = timed(AsyncCheckpointSaver, 'async')
    try:
        for repeat in range(args.repeats):
            for mode in ('sync', 'async'):
                print(f'[bench] demo size in this process, {mode}, round {repeat + 1}', flush=True)
                run = os.path.join(root, f'{mode}{repeat}')
                cfg = load_config(DEMO_YAML, [
                    f'variables.data_root={data}', f'run_folder={run}/run', f'save_folder={run}/checkpoints',
                    f'max_duration={args.demo_batches}ba', f'save_interval={args.demo_interval}ba',
                    f'save_async={mode == "async"}', f'eval_interval={args.demo_batches * 10}ba', 'icl_tasks=null',
                    'eval_gauntlet=null', 'console_log_interval=1000ba', 'save_num_checkpoints_to_keep=2'])
                train(cfg).close()
    finally:
        for cls, original in originals.items():
            cls._save_checkpoint = original
        shutil.rmtree(root, ignore_errors=True)
    s, a = statistics.median(timings['sync']), statistics.median(timings['async'])
    return [f'demo size, 1 process through the real Trainer (yamls/pretrain/demo.yaml: 1.9M parameters, FSDP2 on a '
            f'1-process mesh, LION): {args.demo_batches} batches, a checkpoint every {args.demo_interval}, '
            f'{args.repeats} round(s); time the training thread spends in the saver\'s _save_checkpoint',
            f'  {"":32}{"sync":>10}{"async":>10}{"sync/async":>12}',
            f'  {"stall per checkpoint (median)":32}{s * 1000:>8.1f}ms{a * 1000:>8.1f}ms{_ratio(s, a):>12}',
            f'  {"stall per checkpoint (max)":32}{max(timings["sync"]) * 1000:>8.1f}ms'
            f'{max(timings["async"]) * 1000:>8.1f}ms{_ratio(max(timings["sync"]), max(timings["async"])):>12}',
            f'  ({len(timings["sync"])} sync and {len(timings["async"])} async saves)']


# ---------------------------------------------------------------------------------------------- part 2
def big_part(args) -> list[str]:
    import torch
    import torch.distributed as dist

    from foundry.models.mpt.configuration import MPTConfig
    from foundry.models.mpt.modeling import MPTForCausalLM
    from foundry.optim.lion import DecoupledLionW

    os.environ.setdefault('MASTER_ADDR', '127.0.0.1')
    os.environ.setdefault('MASTER_PORT', str(29500 + os.getpid() % 1000))
    dist.init_process_group('gloo', rank=0, world_size=1)
    background_group = dist.new_group(backend='gloo')
    torch.manual_seed(0)
    config = MPTConfig(d_model=2048, n_heads=16, n_layers=args.big_layers, expansion_ratio=4, max_seq_len=64,
                       vocab_size=50432, no_bias=True, init_device='meta', attn_config={'attn_impl': 'torch'})
    model = MPTForCausalLM(config).to(torch.bfloat16).to_empty(device='cpu')
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    n_params = sum(p.numel() for p in model.parameters())
    optimizer = DecoupledLionW(model.parameters(), lr=1e-5)
    ids = torch.randint(0, 50432, (1, 64))
    root = tempfile.mkdtemp(prefix='ckpt-stall-1b-', dir=args.big_dir)
    lines = [f'1B on CPU: {n_params / 1e9:.3f}B parameters (d_model 2048, {args.big_layers} blocks, vocabulary 50,432), '
             f'bf16 weights and LION state, batch 1 x 64 tokens, 1 process; {args.big_steps} steps, a checkpoint every '
             f'{args.big_interval}; checkpoints in {args.big_dir or tempfile.gettempdir()}']
    rows = {}
    for mode in ('sync', 'async'):
        print(f'[bench] 1B, {mode}', flush=True)
        rows[mode] = _big_loop(mode, model, optimizer, ids, root, args, background_group)
        shutil.rmtree(root, ignore_errors=True)
        os.makedirs(root, exist_ok=True)
    state_bytes = sum(p.numel() * p.element_size() for p in model.parameters()) * 2
    lines.append(f'  checkpoint size {state_bytes / 2**30:.2f} GiB; median step without a write '
                 f'{rows["sync"]["step"]:.2f} s')
    lines.append(f'  {"":32}{"sync":>10}{"async":>10}{"sync/async":>12}')
    s, a = rows['sync'], rows['async']
    lines.append(f'  {"stall per checkpoint (median)":32}{s["stall"]:>9.2f}s{a["stall"]:>9.2f}s{_ratio(s["stall"], a["stall"]):>12}')
    lines.append(f'  {"stall per checkpoint (max)":32}{s["stall_max"]:>9.2f}s{a["stall_max"]:>9.2f}s'
                 f'{_ratio(s["stall_max"], a["stall_max"]):>12}')
    lines.append(f'  {"step while a write runs":32}{"-":>10}{a["overlap_step"]:>9.2f}s   (background write competes '
                 f'for the cores)')
    lines.append(f'  {"slowdown per checkpoint":32}{s["slowdown"]:>9.2f}s{a["slowdown"]:>9.2f}s'
                 f'{_ratio(s["slowdown"], a["slowdown"]):>12}')
    lines.append(f'  (async: the last write finished {a["tail"]:.2f} s after the last step; a background write took '
                 f'{a["write"]:.1f} s)')
    shutil.rmtree(root, ignore_errors=True)
    dist.destroy_process_group()
    return lines


def _big_loop(mode, model, optimizer, ids, root, args, group) -> dict:
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import DefaultSavePlanner, FileSystemWriter

    from foundry.checkpoint.async_save import _staging_writer

    writer, pending, written = None, None, []
    steps, stalls, overlap = [], [], []
    started = time.perf_counter()
    for step in range(1, args.big_steps + 1):
        t0 = time.perf_counter()
        writing = pending is not None and not pending[0].done()
        loss = torch.nn.functional.cross_entropy(model(ids).logits[0, :-1].float(), ids[0, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        (overlap if writing else steps).append(time.perf_counter() - t0)
        if pending is not None and pending[0].done():
            written.append(pending[1] and time.perf_counter() - pending[1])
            pending[0].result()
            pending = None
        if step % args.big_interval:
            continue
        folder = os.path.join(root, f'step{step}')
        state = {'model': model.state_dict(),
                 'optimizer': {n: optimizer.state[p]['exp_avg'] for n, p in model.named_parameters()}}
        t0 = time.perf_counter()
        if mode == 'sync':
            dcp.save(state, storage_writer=FileSystemWriter(folder),
                     planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True))
        else:
            if pending is not None:  # one write in flight, as AsyncCheckpointSaver
                pending[0].result()
                written.append(time.perf_counter() - pending[1])
            writer = writer or _staging_writer(folder)
            future = dcp.async_save(state, checkpoint_id=folder, storage_writer=writer,
                                    planner=DefaultSavePlanner(dedup_save_to_lowest_rank=True), process_group=group)
            pending = (future, time.perf_counter())
        stalls.append(time.perf_counter() - t0)
    end = time.perf_counter()
    tail = 0.0
    if pending is not None:
        pending[0].result()
        tail = time.perf_counter() - end
        written.append(time.perf_counter() - pending[1])
    if writer is not None:
        writer.close()
    step = statistics.median(steps)
    total = end - started
    return {'step': step, 'stall': statistics.median(stalls), 'stall_max': max(stalls),
            'overlap_step': statistics.median(overlap) if overlap else float('nan'),
            'slowdown': (total - step * args.big_steps) / len(stalls), 'tail': tail,
            'write': statistics.median([w for w in written if w]) if written else float('nan')}


def _ratio(a: float, b: float) -> str:
    return f'{a / b:.1f}x' if b > 0 else 'inf'


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--only', choices=('demo', 'demo1', '1b'),
                        help='demo: 2 processes through the launcher; demo1: the demo model in this process; 1b')
    parser.add_argument('--repeats', type=int, default=1, help='demo-size rounds (each: none, sync, async)')
    parser.add_argument('--demo-batches', type=int, default=60)
    parser.add_argument('--demo-interval', type=int, default=10)
    parser.add_argument('--big-layers', type=int, default=18)
    parser.add_argument('--big-steps', type=int, default=12)
    parser.add_argument('--big-interval', type=int, default=3)
    parser.add_argument('--big-dir', default=None, help='where the 1B checkpoints are written (default: the temp dir)')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args()
    load = os.getloadavg()
    lines = [f'checkpoint stall, sync vs save_async ({time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, '
             f'{os.cpu_count()} cores, load average at start {load[0]:.1f})']
    if args.only in (None, 'demo'):
        lines += demo_part(args)
    if args.only in (None, 'demo1'):
        lines += demo_inprocess_part(args)
    if args.only in (None, '1b'):
        lines += big_part(args)
    lines.append(f'load average at end {os.getloadavg()[0]:.1f}')
    text = '\n'.join(lines)
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, 'a') as f:
            f.write(text + '\n\n')


if __name__ == '__main__':
    main()
