"""Profile foundry training steps on CPU with torch.profiler, the way train_bench runs them.

    python launch/bench/profile_step.py --config a
    python launch/bench/profile_step.py --config a --tree /tmp/foundry-before   # another checkout

Runs the real path (load_config -> foundry.train.train -> Composer Trainer.fit) on the benchmark's
YAML and data, in one process, and profiles `--steps` training batches after `--skip` warm-up
batches. Prints per step: wall time, aten ops dispatched, host syncs (`aten::_local_scalar_dense`,
what `.item()`, `bool(tensor)` and `int(tensor)` run: on a GPU each one waits for the device),
and the ops with the most self time. `--tree` imports foundry from another checkout (e.g. a
`git worktree` of an older commit) for before/after comparisons on the same machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="a", choices=["a", "c"])
    p.add_argument("--tree", help="import foundry from this checkout instead of this one")
    p.add_argument("--loss", default=None, help="model.loss_fn (default: the checkout's default)")
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rows", type=int, default=15)
    args = p.parse_args(argv)
    if args.tree:
        sys.path.insert(0, str(Path(args.tree).resolve()))
    else:
        sys.path.insert(0, str(HERE.parents[1]))
    sys.path.insert(0, str(HERE))

    import torch
    from composer.core import Callback
    from torch.profiler import ProfilerActivity, profile

    import bench_data
    import foundry
    import foundry.callbacks as fcb
    import train_bench
    import yaml
    from foundry.config.load import load_config
    from foundry.train import train

    c = train_bench.CONFIGS[args.config]
    batches = args.skip + args.steps + 1
    tok = bench_data.tokenizer_dir(c["vocab"])
    data = bench_data.random_mds(c["vocab"], c["seq"], c["batch"] * (batches + 2))
    work = Path(tempfile.mkdtemp(prefix="profile-step-"))
    cfg = train_bench.yaml_config(args.config, "foundry", tok, data, batches, work,
                                  args.loss or "torch_crossentropy")
    if args.loss is None:
        cfg["model"].pop("loss_fn")
    cfg["console_log_interval"] = "1000ba"
    cfg["callbacks"] = {}
    (work / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    state = {}

    class Profile(Callback):
        def batch_start(self, st, logger):
            if int(st.timestamp.batch) == args.skip:
                state["prof"] = profile(activities=[ProfilerActivity.CPU])
                state["prof"].__enter__()
                state["t0"] = time.perf_counter()

        def batch_end(self, st, logger):
            if int(st.timestamp.batch) == args.skip + args.steps:
                state["wall"] = time.perf_counter() - state["t0"]
                state["prof"].__exit__(None, None, None)

    original = fcb.build_callbacks
    fcb.build_callbacks = lambda section: original(section) + [Profile()]
    trainer = train(load_config(str(work / "config.yaml"), []))
    trainer.close()

    prof = state["prof"]
    events = prof.key_averages()
    n = args.steps
    aten_calls = sum(e.count for e in events if e.key.startswith("aten::"))
    syncs = sum(e.count for e in events if e.key == "aten::_local_scalar_dense")
    print(f"\nfoundry from {Path(foundry.__file__).parent.parent}; config ({args.config}); "
          f"loss_fn {cfg['model'].get('loss_fn', 'default')}; torch threads {torch.get_num_threads()}; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"per step: {state['wall'] / n * 1000:.1f} ms wall, {aten_calls / n:.0f} aten ops, "
          f"{syncs / n:.1f} host syncs (aten::_local_scalar_dense)")
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
