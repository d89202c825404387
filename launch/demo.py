"""The embedded default run behind `make demo`.

1. Build an English and a code corpus from this machine's Python installation, train a
   small BPE tokenizer on them, and convert both to MDS (skipped when already built).
2. Train yamls/pretrain/demo.yaml with the real Composer launcher on 2 CPU processes
   (FSDP2, LION, sharded checkpoints).
3. Summarise: first and last loss, tokens/s, where the checkpoint is, the last ICL smoke-task
   scores and gauntlet score, a sample of text from the trained model (exported to a Hugging
   Face folder on the way), and a plot of the run (demo_out/plot.png).

Extra `key=value` arguments are passed to the training config, e.g.
`python launch/demo.py max_duration=50ba`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, 'demo_out')
YAML = os.path.join(REPO, 'yamls', 'pretrain', 'demo.yaml')


def build_data() -> None:
    from foundry.data.prep.demo_corpus import build_demo_data

    start = time.time()
    build_demo_data(os.path.join(OUT, 'data'), seq_len=128)
    print(f'[demo] data ready in {time.time() - start:.1f}s: {os.path.join(OUT, "data")}', flush=True)


def run_training(overrides: list[str]) -> float:
    # A fresh demo each time: stale checkpoints would autoresume into a finished run.
    for stale in ('checkpoints', 'runs', 'hf'):
        shutil.rmtree(os.path.join(OUT, stale), ignore_errors=True)
    composer = os.path.join(os.path.dirname(sys.executable), 'composer')
    cmd = [composer, '-n', '2', os.path.join(REPO, 'launch', 'train.py'), YAML, *overrides]
    print('[demo] ' + ' '.join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.time() - start


def summarise(train_seconds: float) -> None:
    from foundry.cli import main as foundry_main
    from foundry.loggers.jsonl import read_metrics

    metrics = read_metrics(os.path.join(OUT, 'runs', 'demo', 'metrics.jsonl'))
    batches = sorted(b for b, m in metrics.items() if 'loss/train/total' in m)
    losses = [metrics[b]['loss/train/total'] for b in batches]
    head, tail = losses[:10], losses[-10:]
    throughput = [m['throughput/tokens_per_sec'] for m in metrics.values() if 'throughput/tokens_per_sec' in m]
    checkpoint_dir = os.path.join(OUT, 'checkpoints', 'demo')
    latest = os.path.join(checkpoint_dir, 'latest-rank0.pt')
    hf_dir = os.path.join(OUT, 'hf')
    foundry_main(['export', 'hf', latest, hf_dir])

    print('\n================ foundry demo summary ================')
    print(f'batches trained      : {len(losses)}  ({train_seconds:.0f}s wall, launcher start to exit)')
    print(f'loss, first batch    : {losses[0]:.3f}   (mean of first 10: {sum(head) / len(head):.3f})')
    print(f'loss, last batch     : {losses[-1]:.3f}   (mean of last 10:  {sum(tail) / len(tail):.3f})')
    if throughput:
        print(f'tokens/s (2 ranks)   : {throughput[-1]:,.0f} (last window)')
    print(f'sharded checkpoint   : {os.path.realpath(latest) if os.path.exists(latest) else checkpoint_dir}')
    print(f'Hugging Face folder  : {hf_dir}')
    print(f'metrics (JSON lines) : {os.path.join(OUT, "runs", "demo", "metrics.jsonl")}')
    icl_batches = [b for b, m in metrics.items() if any(k.startswith('icl/') for k in m)]
    if icl_batches:
        icl = {k: v for k, v in metrics[max(icl_batches)].items() if k.startswith('icl/')}
        scores = ', '.join(f'{k[4:].replace("/accuracy", "")} {100 * v:.1f}%' for k, v in icl.items()
                           if k.endswith('/accuracy'))
        gauntlet = ', '.join(f'{k[len("icl/gauntlet/"):]} {v:.3f}' for k, v in icl.items() if k.startswith('icl/gauntlet/'))
        print(f'ICL (smoke tasks)    : {scores}')
        print(f'gauntlet             : {gauntlet}  (0 = chance; eval/yamls/smoke_gauntlet.yaml)')
    print('sample:')
    print('  ' + generate_sample(hf_dir).replace('\n', '\n  '))
    from foundry.plot import plot_runs

    plot = plot_runs([os.path.join(OUT, 'runs', 'demo')], os.path.join(OUT, 'plot.png'), title='make demo')
    print(f'plot                 : {plot}')
    print('======================================================')


def generate_sample(hf_dir: str) -> str:
    import torch

    from foundry.data.tokenizer import build_tokenizer
    from foundry.models.mpt.modeling import MPTForCausalLM

    tokenizer = build_tokenizer(hf_dir)
    model = MPTForCausalLM.from_pretrained(hf_dir).eval()
    prompt = 'def '
    inputs = tokenizer(prompt, return_tensors='pt')
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(inputs['input_ids'], max_new_tokens=60, do_sample=True, top_k=20, temperature=0.8,
                             pad_token_id=tokenizer.pad_token_id or 0)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    build_data()
    seconds = run_training(sys.argv[1:])
    summarise(seconds)
    return 0


if __name__ == '__main__':
    sys.exit(main())
