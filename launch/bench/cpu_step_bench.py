"""One training step (forward + backward) on CPU: fp32 vs bf16 autocast, plain vs chunked loss.

    python launch/bench/cpu_step_bench.py                  # demo model and config (a)
    python launch/bench/cpu_step_bench.py --models a --steps 8

Each (model, loss, precision) runs in its own fresh process, so its peak resident memory
(ru_maxrss) is its own: the table shows the median step time and how far the peak RSS rose above
the RSS right after the model and batch were built (what the step itself allocates: activations,
logits, gradients). Variants run interleaved, `--repeats` times; medians are shown.

  demo: yamls/pretrain/demo.yaml's model (d_model 128, 4 layers, seq 128, vocab 8,192), batch 16
  a:    d_model 256, 4 layers, 4 heads, seq 256, vocab 50,432, batch 16 (train_bench's config a)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODELS = {
    "demo": dict(d_model=128, n_heads=4, n_layers=4, seq=128, vocab=8192, batch=16),
    "a": dict(d_model=256, n_heads=4, n_layers=4, seq=256, vocab=50432, batch=16),
    "c": dict(d_model=64, n_heads=4, n_layers=2, seq=128, vocab=8192, batch=8),
}


def child(model: str, loss_fn: str, precision: str, steps: int) -> dict:
    """Runs in the subprocess: build, warm up, time `steps` steps; report time and memory."""
    import resource
    import time

    import psutil
    import torch

    sys.path.insert(0, str(REPO))
    from foundry.models.mpt import MPTConfig, MPTForCausalLM

    m = MODELS[model]
    torch.manual_seed(0)
    net = MPTForCausalLM(MPTConfig(d_model=m["d_model"], n_heads=m["n_heads"], n_layers=m["n_layers"],
                                   max_seq_len=m["seq"], vocab_size=m["vocab"], tokenizer_name=None)).train()
    net.loss_fn = loss_fn
    ids = torch.randint(0, m["vocab"], (m["batch"], m["seq"]))
    base_rss = psutil.Process().memory_info().rss

    def step():
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = net(ids, labels=ids).loss
        loss.backward()
        return loss

    loss = step()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step_s": statistics.median(times), "min_s": min(times), "step_mib": (peak - base_rss) / 2 ** 20,
            "loss": float(loss), "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="demo,a")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, steps=args.steps)))
        return 0
    variants = [(lf, pr) for lf in ("torch_crossentropy", "chunked_crossentropy") for pr in ("fp32", "bf16")]
    print(f"load average before: {os.getloadavg()}")
    for model in args.models.split(","):
        results: dict = {v: [] for v in variants}
        for rep in range(args.repeats):
            for lf, pr in (variants if rep % 2 == 0 else list(reversed(variants))):
                out = subprocess.run([sys.executable, __file__, "--steps", str(args.steps), "--child", model, lf, pr],
                                     capture_output=True, text=True, check=True)
                results[(lf, pr)].append(json.loads(out.stdout.strip().splitlines()[-1]))
        m = MODELS[model]
        print(f"\n== {model}: d_model {m['d_model']}, {m['n_layers']} layers, seq {m['seq']}, vocab {m['vocab']:,}, "
              f"batch {m['batch']}; forward+backward, median of {args.steps} steps x {args.repeats} processes; "
              f"load now {os.getloadavg()[0]:.2f}")
        print(f"{'loss':<22}{'precision':<11}{'step ms':>9}{'vs fp32 plain':>15}{'step MiB':>10}{'loss':>9}")
        base = statistics.median(r["step_s"] for r in results[("torch_crossentropy", "fp32")])
        for (lf, pr), rs in results.items():
            t = statistics.median(r["step_s"] for r in rs)
            mem = statistics.median(r["step_mib"] for r in rs)
            print(f"{lf:<22}{pr:<11}{t * 1000:>9.0f}{base / t:>14.2f}x{mem:>10.0f}{rs[0]['loss']:>9.4f}")
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
