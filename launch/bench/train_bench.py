"""foundry vs llm-foundry 0.22.0, side by side on this CPU (run by hand, not in tests).

    python launch/bench/train_bench.py                       # configs a, b, c; 2 repeats
    python launch/bench/train_bench.py --configs a --repeats 3 --batches 30

Both trainers run the same MPT (ALiBi, no biases, low-precision LayerNorm, tied embeddings), the
same random-token MDS data and local tokenizer (launch/bench/bench_data.py), the same batch,
precision (fp32), optimizer (decoupled LION), scheduler and Composer (0.32.1; torch 2.7.0 on both
sides), each launched the way its users launch it: `composer -n P launch/train.py YAML` for
foundry, `composer -n P launch/bench/llmfoundry_train.py YAML` (llm-foundry's
scripts/train/train.py) from `.bench/llmfoundry-venv` for llm-foundry. The YAMLs are printed
with --show-yaml. Configs:

  a: d_model 256, 4 layers, 4 heads, seq 256, vocab 50,432, batch 16, 1 process
  b: a on 2 processes with FSDP (FULL_SHARD). llm-foundry's FSDP1 path needs CUDA; it runs
     Composer's FSDP2 when FSDP_VERSION=2 is set, which we set for it (if that fails on CPU the
     table says so and --llmf-b-ddp runs it with DDP instead).
  c: d_model 64, 2 layers, 4 heads, seq 128, vocab 8,192, batch 8, 1 process (per-step overhead)

What each side runs beyond that is its own default, except: llm-foundry needs attn_impl 'torch'
and loss_fn 'torch_crossentropy' on CPU (its defaults, flash and fused_crossentropy, need CUDA),
and both log at python_log_level info (llm-foundry's default, debug, prints per step). foundry runs
loss_fn chunked_crossentropy (--foundry-loss to change). llm-foundry computes training metrics
(cross-entropy, perplexity, token accuracy) over the full logits on every batch by default; foundry
does not (its loss is that cross-entropy). The `llmf-notm` row, on by default, is llm-foundry with
`model.use_train_metrics: false`, to show how much of the gap that is. `--foundry-bf16` adds a
foundry row at precision amp_bf16 (foundry's own CPU autocast; llm-foundry has no equivalent, so
that row is not at equal precision).

Measured from outside, the same way for both: per-batch console lines (`[batch=k/N]`, console
log interval 1 batch) are timestamped as they arrive.
  tokens/s       tokens of batches warmup+1..N over the time between the lines of batch `warmup`
                 and batch N (steady state; the first batches include allocation warm-up)
  tok/s med step tokens of one batch over the median time between consecutive batch lines after
                 warm-up: less sensitive to bursts of load from other processes on the machine
  tok/CPU-s      the same tokens over the CPU time (user + system) the launched process tree
                 spent in that window: the least sensitive to other processes (they take wall
                 time, not this tree's CPU time; spinning thread pools still count)
  first batch s  from launching the command to the line of batch 1 (imports, model build, data
                 loader start, first step)
  peak RSS MiB   the largest sum of resident memory over the launched process tree, sampled
                 every 50 ms (launcher included)
  MFU            model FLOPs (llm-foundry's formula, foundry.models.flops) per second, over the
                 CPU's fp32 GEMM peak (all cores): measured before every run, the best of those
                 measurements is used (load from other processes only lowers a measurement)
Each run gets its own TMPDIR (both trainers; see run setup). Runs alternate between the
trainers, `--repeats` times; the table shows the median of repeats,
and the load average seen before each run. Other engineers share this machine's cores: compare
numbers from one invocation only.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import bench_data  # noqa: E402
from llmfoundry_venv import ensure_llmfoundry_venv  # noqa: E402

CONFIGS = {
    "a": dict(d_model=256, n_layers=4, n_heads=4, seq=256, vocab=50432, batch=16, nproc=1, fsdp=False),
    "b": dict(d_model=256, n_layers=4, n_heads=4, seq=256, vocab=50432, batch=16, nproc=2, fsdp=True),
    "c": dict(d_model=64, n_layers=2, n_heads=4, seq=128, vocab=8192, batch=8, nproc=1, fsdp=False),
}
BATCH_LINE = re.compile(r"\[batch=(\d+)/(\d+)\]")


@dataclass
class Result:
    side: str
    config: str
    ok: bool
    tokens_per_sec: float = float("nan")
    median_step_tokens_per_sec: float = float("nan")
    tokens_per_cpu_sec: float = float("nan")
    first_batch_sec: float = float("nan")
    peak_rss_mib: float = float("nan")
    model_flops_per_sec: float = float("nan")
    mfu: float = float("nan")
    load: str = ""
    note: str = ""
    batch_times: list = field(default_factory=list)


# ----------------------------------------------------------------------------------- YAMLs
def model_section(c: dict, side: str, loss_fn: str, use_train_metrics: Optional[bool]) -> dict:
    m = {
        "name": "mpt_causal_lm", "init_device": "cpu", "d_model": c["d_model"], "n_heads": c["n_heads"],
        "n_layers": c["n_layers"], "expansion_ratio": 4, "max_seq_len": c["seq"], "vocab_size": c["vocab"],
        "no_bias": True, "norm_type": "low_precision_layernorm",
        "attn_config": {"attn_impl": "torch", "alibi": True, "alibi_bias_max": 8},
        "loss_fn": loss_fn,
    }
    if side != "foundry" and use_train_metrics is not None:
        m["use_train_metrics"] = use_train_metrics
    return m


def yaml_config(config: str, side: str, tokenizer: Path, data: Path, batches: int, run_dir: Path,
                foundry_loss: str, use_train_metrics: Optional[bool] = None, fsdp_ddp: bool = False,
                precision: str = "fp32") -> dict:
    c = CONFIGS[config]
    loss_fn = foundry_loss if side == "foundry" else "torch_crossentropy"
    cfg = {
        "max_seq_len": c["seq"],
        "run_name": f"bench-{side}-{config}",
        "model": model_section(c, side, loss_fn, use_train_metrics),
        "tokenizer": {"name": str(tokenizer)},
        "train_loader": {"name": "text",
                         "dataset": {"local": str(data), "split": "train", "shuffle": True,
                                     "shuffle_seed": 17, "max_seq_len": c["seq"]},
                         "drop_last": True, "num_workers": 0},
        "scheduler": {"name": "cosine_with_warmup", "t_warmup": "10ba", "alpha_f": 0.1},
        "optimizer": {"name": "decoupled_lionw", "lr": 2.0e-4, "betas": [0.9, 0.99], "weight_decay": 0.0},
        "max_duration": f"{batches}ba",
        "global_train_batch_size": c["batch"],
        "device_train_microbatch_size": c["batch"] // c["nproc"],
        "device_eval_batch_size": c["batch"] // c["nproc"],
        "precision": precision,
        "seed": 17,
        "progress_bar": False,
        "log_to_console": True,
        "console_log_interval": "1ba",
        "python_log_level": "info",
        "callbacks": {"speed_monitor": {"window_size": 10}},
    }
    if c["fsdp"] and not fsdp_ddp:
        cfg["fsdp_config"] = {"sharding_strategy": "FULL_SHARD", "mixed_precision": "FULL",
                              "activation_checkpointing": False, "state_dict_type": "sharded"}
    if side == "foundry":
        cfg["run_folder"] = str(run_dir / "runs" / "{run_name}")
        cfg["autoresume"] = False
    else:
        # llm-foundry passes prefetch_factor=2 and persistent_workers=True to the DataLoader, which
        # torch refuses without workers.
        cfg["train_loader"]["prefetch_factor"] = None
        cfg["train_loader"]["persistent_workers"] = False
    return cfg


# ----------------------------------------------------------------------------------- running
def run_one(cmd: list[str], env: dict, cwd: Path, timeout: float, log_path: Path) -> dict:
    """Launch, timestamp batch lines, sample the process tree's RSS; returns the raw timings."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=str(cwd), bufsize=1)
    batch_at: dict[int, float] = {}
    cpu_at: dict[int, float] = {}
    peak = [0]
    done = threading.Event()
    tree_cpu = {}  # pid -> last seen user+system seconds (a process that exits keeps its last value)

    def cpu_seconds() -> float:
        try:
            root = psutil.Process(proc.pid)
            for p in [root] + root.children(recursive=True):
                try:
                    t = p.cpu_times()
                    tree_cpu[p.pid] = t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
        return sum(tree_cpu.values())

    def sample():
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            done.wait(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with open(log_path, "w") as log:
        try:
            for line in proc.stdout:
                now = time.perf_counter() - t0
                log.write(f"{now:10.3f} {line}")
                m = BATCH_LINE.search(line)
                if m and int(m.group(1)) not in batch_at:
                    batch_at[int(m.group(1))] = now
                    cpu_at[int(m.group(1))] = cpu_seconds()
                if now > timeout:
                    proc.kill()
                    break
        finally:
            rc = proc.wait()
            done.set()
            sampler.join()
    return {"rc": rc, "batch_at": batch_at, "cpu_at": cpu_at, "peak_rss": peak[0],
            "wall": time.perf_counter() - t0}


def flops_per_batch(config: str) -> float:
    from foundry.models.flops import flops_per_sequence
    from foundry.models.mpt import MPTConfig

    c = CONFIGS[config]
    mc = MPTConfig(d_model=c["d_model"], n_heads=c["n_heads"], n_layers=c["n_layers"], max_seq_len=c["seq"],
                   vocab_size=c["vocab"], tokenizer_name=None)
    return c["batch"] * flops_per_sequence(mc, c["seq"])


def measure(side: str, config: str, args, llmf_python: Path, variant: dict) -> Result:
    c = CONFIGS[config]
    tokenizer = bench_data.tokenizer_dir(c["vocab"])
    n_samples = c["batch"] * (args.batches + 2)
    data = bench_data.random_mds(c["vocab"], c["seq"], n_samples)
    run_dir = Path(tempfile.mkdtemp(prefix=f"bench-{side}-{config}-", dir=args.work))
    cfg = yaml_config(config, variant["trainer"], tokenizer, data, args.batches, run_dir, args.foundry_loss,
                      variant.get("use_train_metrics"), fsdp_ddp=variant.get("fsdp_ddp", False),
                      precision=variant.get("precision", "fp32"))
    yaml_path = run_dir / "config.yaml"
    import yaml

    yaml_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    if args.show_yaml:
        print(f"--- {side} {config}: {yaml_path}\n{yaml_path.read_text()}")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSER_", "RANK", "WORLD_SIZE",
                                                                          "LOCAL_", "MASTER_"))}
    threads = max(1, psutil.cpu_count(logical=True) // c["nproc"])
    env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "WANDB_MODE": "disabled", "MLFLOW_TRACKING_URI": "", "PYTHONWARNINGS": "ignore"})
    env.pop("VIRTUAL_ENV", None)
    # A temp folder per run, for both trainers: streaming keeps file locks there, and foundry's
    # machine-wide registration lock (foundry/data/stream/shm_guard.py) lives there too. With the shared
    # /tmp, foundry runs waited minutes behind other people's test jobs holding that lock.
    (run_dir / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(run_dir / "tmp")
    if variant["trainer"] == "foundry":
        composer = REPO / ".venv" / "bin" / "composer"
        cmd = [str(composer), "-n", str(c["nproc"]), str(REPO / "launch" / "train.py"), str(yaml_path)]
    else:
        composer = llmf_python.parent / "composer"
        cmd = [str(composer), "-n", str(c["nproc"]), str(HERE / "llmfoundry_train.py"), str(yaml_path)]
        if c["fsdp"] and not variant.get("fsdp_ddp"):
            env["FSDP_VERSION"] = "2"
    env["PATH"] = f"{composer.parent}:{env.get('PATH', '')}"
    load = "%.2f" % os.getloadavg()[0]
    raw = run_one(cmd, env, run_dir, args.timeout, run_dir / "output.log")
    res = Result(side=side, config=config, ok=False, load=load)
    at = raw["batch_at"]
    if raw["rc"] != 0 or args.batches not in at:
        tail = (run_dir / "output.log").read_text().splitlines()[-15:]
        res.note = f"rc={raw['rc']}, batches seen {len(at)}; log {run_dir / 'output.log'}"
        print(f"    FAILED {side} {config}: {res.note}\n      " + "\n      ".join(tail))
        return res
    w = min(args.warmup, args.batches - 2)
    seconds = at[args.batches] - at[w]
    steps = args.batches - w
    res.ok = True
    res.tokens_per_sec = steps * c["batch"] * c["seq"] / seconds
    res.first_batch_sec = at[1]
    res.peak_rss_mib = raw["peak_rss"] / 2 ** 20
    res.model_flops_per_sec = flops_per_batch(config) * steps / seconds  # MFU: over the best peak, at the end
    res.batch_times = [at[i + 1] - at[i] for i in range(1, args.batches)]
    res.median_step_tokens_per_sec = c["batch"] * c["seq"] / statistics.median(res.batch_times[w - 1:])
    cpu = raw["cpu_at"][args.batches] - raw["cpu_at"][w]
    res.tokens_per_cpu_sec = steps * c["batch"] * c["seq"] / cpu if cpu > 0 else float("nan")
    if not args.keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return res


# ----------------------------------------------------------------------------------- report
def median(results: list[Result], attr: str) -> float:
    vals = [getattr(r, attr) for r in results if r.ok]
    return statistics.median(vals) if vals else float("nan")


def print_table(config: str, by_side: dict[str, list[Result]], baseline: str, peak: float) -> None:
    c = CONFIGS[config]
    print(f"\n== config ({config}): d_model {c['d_model']}, {c['n_layers']} layers, {c['n_heads']} heads, "
          f"seq {c['seq']}, vocab {c['vocab']:,}, batch {c['batch']}, {c['nproc']} process(es)"
          f"{', FSDP' if c['fsdp'] else ''}, fp32; CPU peak (best measured) {peak / 1e9:.1f} GFLOP/s")
    head = (f"{'side':<13}{'tokens/s':>11}{'MFU':>8}{'tok/s med step':>16}{'tok/CPU-s':>11}{'first batch s':>15}"
            f"{'peak RSS MiB':>14}{'runs':>6}  loads")
    print(head)
    base = by_side.get(baseline, [])
    for side, results in by_side.items():
        ok = [r for r in results if r.ok]
        loads = ",".join(r.load for r in results)
        notes = "; ".join(r.note for r in results if r.note)
        print(f"{side:<13}{median(results, 'tokens_per_sec'):>11.0f}{median(results, 'mfu') * 100:>7.2f}%"
              f"{median(results, 'median_step_tokens_per_sec'):>16.0f}{median(results, 'tokens_per_cpu_sec'):>11.0f}"
              f"{median(results, 'first_batch_sec'):>15.1f}{median(results, 'peak_rss_mib'):>14.0f}"
              f"{len(ok):>4}/{len(results)}  {loads}{'  ' + notes if notes else ''}")
    for side, results in by_side.items():
        if side == baseline or not base:
            continue
        tps = median(results, "tokens_per_sec") / median(base, "tokens_per_sec")
        med = median(results, "median_step_tokens_per_sec") / median(base, "median_step_tokens_per_sec")
        cpu = median(results, "tokens_per_cpu_sec") / median(base, "tokens_per_cpu_sec")
        fb = median(results, "first_batch_sec") / median(base, "first_batch_sec")
        mem = median(results, "peak_rss_mib") / median(base, "peak_rss_mib")
        print(f"ratio {side}/{baseline}: tokens/s {tps:.2f}x (median step {med:.2f}x, per CPU-second {cpu:.2f}x), "
              f"first batch {fb:.2f}x, peak RSS {mem:.2f}x")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="a,b,c")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--batches", type=int, default=30, help="batches per run (c: 3x this)")
    p.add_argument("--warmup", type=int, default=5, help="batches left out of tokens/s")
    p.add_argument("--foundry-loss", default="chunked_crossentropy",
                   choices=["chunked_crossentropy", "torch_crossentropy"])
    p.add_argument("--no-llmf-notm", action="store_true", help="skip llm-foundry with use_train_metrics: false")
    p.add_argument("--llmf-b-ddp", action="store_true", help="run llm-foundry's (b) with DDP instead of FSDP2")
    p.add_argument("--foundry-bf16", action="store_true",
                   help="add a foundry row with precision amp_bf16 (CPU autocast; not equal precision: "
                        "llm-foundry cannot run amp_bf16 on CPU)")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--work", default=str(REPO / ".bench" / "train_bench" / "runs"))
    p.add_argument("--show-yaml", action="store_true")
    p.add_argument("--keep", action="store_true", help="keep run folders (logs, YAMLs)")
    p.add_argument("--json", help="also write all results here")
    args = p.parse_args(argv)
    Path(args.work).mkdir(parents=True, exist_ok=True)

    llmf_python = ensure_llmfoundry_venv(log=lambda m: print(m, flush=True))
    from foundry.callbacks.mfu import measure_cpu_peak_flops

    print(f"load average before: {os.getloadavg()}; cores: {psutil.cpu_count()}", flush=True)
    peak = measure_cpu_peak_flops(seconds=2.0, cache=False)
    print(f"CPU fp32 GEMM peak (all cores, measured now): {peak / 1e9:.1f} GFLOP/s", flush=True)

    variants = {"foundry": {"trainer": "foundry"}, "llm-foundry": {"trainer": "llm-foundry"}}
    if not args.no_llmf_notm:
        variants["llmf-notm"] = {"trainer": "llm-foundry", "use_train_metrics": False}
    if args.foundry_bf16:
        variants["foundry-bf16"] = {"trainer": "foundry", "precision": "amp_bf16"}
    all_results = []
    base_batches = args.batches
    for config in args.configs.split(","):
        args.batches = base_batches * 3 if config == "c" else base_batches
        by_side: dict[str, list[Result]] = {name: [] for name in variants}
        for rep in range(args.repeats):
            order = list(variants) if rep % 2 == 0 else list(reversed(variants))
            for name in order:
                variant = dict(variants[name])
                if config == "b" and variant["trainer"] == "llm-foundry" and args.llmf_b_ddp:
                    variant["fsdp_ddp"] = True
                now_peak = measure_cpu_peak_flops(seconds=1.0, cache=False)
                peak = max(peak, now_peak)
                print(f"  [{config}] repeat {rep + 1}/{args.repeats}: {name} (load {os.getloadavg()[0]:.2f}, "
                      f"GEMM peak now {now_peak / 1e9:.0f} GFLOP/s)", flush=True)
                r = measure(name, config, args, llmf_python, variant)
                if r.ok:
                    print(f"    {r.tokens_per_sec:,.0f} tokens/s ({r.median_step_tokens_per_sec:,.0f} at the median "
                          f"step, {r.tokens_per_cpu_sec:,.0f} per CPU-second), first batch {r.first_batch_sec:.1f} s, "
                          f"peak RSS {r.peak_rss_mib:,.0f} MiB, {r.model_flops_per_sec / 1e9:.1f} model GFLOP/s", flush=True)
                by_side[name].append(r)
                all_results.append(r)
        for results in by_side.values():
            for r in results:
                r.mfu = r.model_flops_per_sec / peak
        print_table(config, by_side, "llm-foundry", peak)
        sys.stdout.flush()
    if args.json:
        Path(args.json).write_text(json.dumps([r.__dict__ for r in all_results], indent=1))
    print(f"\nload average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
