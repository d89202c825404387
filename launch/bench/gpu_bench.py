"""Training-step throughput on one GPU: foundry's MPT vs transformers' MptForCausalLM (pure torch).

    python launch/bench/gpu_bench.py                         # mpt-125m and mpt-1b, seq 2048, bf16
    python launch/bench/gpu_bench.py --models 1b --impls foundry-flex,hf --batch 8
    python launch/bench/gpu_bench.py --smoke                 # tiny config, runs on CPU too

No Composer: a plain loop of forward, backward and a LION step (the decoupled LION of
foundry.optim, written here with torch._foreach ops so the script needs nothing beyond torch and
transformers), in bf16 autocast with fp32 master weights (Composer's amp_bf16), on the same
configuration for every implementation:

  foundry-sdpa  foundry's MPTForCausalLM, attn_impl 'torch' (SDPA with one shared ALiBi bias),
                loss_fn chunked_crossentropy
  foundry-flex  the same with attn_impl 'flex' (compiled flex_attention, ALiBi score_mod)
  foundry-compiled  foundry-flex with compile_config {} (torch.compile of every block)
  hf            transformers' MptForCausalLM with the same config (its eager attention, its loss)

Prints tokens/s, MFU against 989 TFLOP/s (H100 SXM / H200 dense bf16; llm-foundry's formula,
foundry.models.flops) and peak GPU memory per implementation. A batch that runs out of memory
is halved and retried (the table says which batch ran).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PEAK_BF16 = 989e12
MODELS = {
    # llm-foundry's yamls/pretrain/mpt-125m.yaml and mpt-1b.yaml
    "125m": dict(d_model=768, n_heads=12, n_layers=12, vocab_size=50368, batch=16),
    "1b": dict(d_model=2048, n_heads=16, n_layers=24, vocab_size=50368, batch=8),
    "smoke": dict(d_model=64, n_heads=4, n_layers=2, vocab_size=512, batch=2),
}


@torch.no_grad()
def lion_step(params, exp_avgs, lr=1e-4, beta1=0.9, beta2=0.99, weight_decay=0.0):
    """Decoupled LION on lists of tensors (same update as foundry.optim.DecoupledLionW)."""
    grads = [p.grad for p in params]
    if weight_decay:
        torch._foreach_mul_(params, 1 - weight_decay)  # lr / initial_lr = 1 here
    update = torch._foreach_mul(exp_avgs, beta1)
    torch._foreach_add_(update, grads, alpha=1 - beta1)
    torch._foreach_sign_(update)
    torch._foreach_add_(params, update, alpha=-lr)
    torch._foreach_mul_(exp_avgs, beta2)
    torch._foreach_add_(exp_avgs, grads, alpha=1 - beta2)


def build(impl: str, spec: dict, seq: int, device: torch.device):
    if impl.startswith("foundry"):
        from foundry.models.mpt import MPTConfig, MPTForCausalLM

        cfg = MPTConfig(d_model=spec["d_model"], n_heads=spec["n_heads"], n_layers=spec["n_layers"],
                        expansion_ratio=4, max_seq_len=seq, vocab_size=spec["vocab_size"], no_bias=True,
                        norm_type="low_precision_layernorm", init_device=str(device), tokenizer_name=None,
                        attn_config={"attn_impl": "torch" if impl == "foundry-sdpa" else "flex",
                                     "alibi": True, "alibi_bias_max": 8})
        model = MPTForCausalLM(cfg)
        model.loss_fn = "chunked_crossentropy"
        if impl == "foundry-compiled":
            from foundry.distributed.compile import apply_compile

            apply_compile(model, {})  # compile_config: {} (torch.compile per block, defaults)
        return model
    from transformers import MptConfig, MptForCausalLM

    cfg = MptConfig(d_model=spec["d_model"], n_heads=spec["n_heads"], n_layers=spec["n_layers"],
                    expansion_ratio=4, max_seq_len=seq, vocab_size=spec["vocab_size"], no_bias=True,
                    attn_config={"alibi": True, "alibi_bias_max": 8, "attn_impl": "torch"})
    with torch.device(device):
        return MptForCausalLM(cfg)


def flops_per_batch(spec: dict, seq: int, batch: int) -> float:
    from foundry.models.flops import flops_per_sequence
    from foundry.models.mpt import MPTConfig

    cfg = MPTConfig(d_model=spec["d_model"], n_heads=spec["n_heads"], n_layers=spec["n_layers"],
                    max_seq_len=seq, vocab_size=spec["vocab_size"], tokenizer_name=None)
    return batch * flops_per_sequence(cfg, seq)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(impl: str, spec: dict, seq: int, batch: int, steps: int, warmup: int, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build(impl, spec, seq, device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    exp_avgs = [torch.zeros_like(p) for p in params]
    n_params = sum(p.numel() for p in params)
    ids = torch.randint(0, spec["vocab_size"], (batch, seq), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)

    def step():
        for p in params:
            p.grad = None
        with autocast:
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        lion_step(params, exp_avgs)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_first = time.perf_counter()
    for _ in range(warmup):
        loss = step()
    sync(device)
    warmup_s = time.perf_counter() - t_first
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - start
    peak_mem = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")
    tokens_per_s = steps * batch * seq / seconds
    mfu = flops_per_batch(spec, seq, batch) * steps / seconds / PEAK_BF16
    out = {"impl": impl, "batch": batch, "params": n_params, "tokens_per_s": tokens_per_s, "mfu": mfu,
           "step_ms": seconds / steps * 1000, "warmup_s": warmup_s, "peak_gib": peak_mem,
           "loss": float(loss.detach())}
    del model, params, exp_avgs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def run_fitting(impl, spec, seq, batch, steps, warmup, device) -> dict:
    while True:
        try:
            return run(impl, spec, seq, batch, steps, warmup, device)
        except torch.OutOfMemoryError:
            gc.collect()
            torch.cuda.empty_cache()
            if batch == 1:
                return {"impl": impl, "batch": 0, "error": "out of memory at batch 1"}
            print(f"    {impl}: out of memory at batch {batch}, retrying with {batch // 2}", flush=True)
            batch //= 2
        except Exception as err:  # report and go on with the other implementations
            return {"impl": impl, "batch": batch, "error": f"{type(err).__name__}: {err}"[:300]}


def check_kernels(device: torch.device) -> None:
    """foundry's torch (SDPA) and flex kernels on this device: same model, same batch, with documents.

    fp32 with TF32 off (differences are kernel rounding) and bf16 autocast (as trained).
    """
    from foundry.models.mpt import MPTConfig, MPTForCausalLM

    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        seq = 256
        cfg = MPTConfig(d_model=256, n_heads=4, n_layers=2, max_seq_len=seq, vocab_size=1024,
                        init_device=str(device), tokenizer_name=None, attn_config={"attn_uses_sequence_id": True})
        torch.manual_seed(0)
        model = MPTForCausalLM(cfg).train()
        ids = torch.randint(0, 1024, (2, seq), device=device)
        sid = torch.zeros_like(ids)
        sid[0, 100:] = 1
        sid[1, 37:] = 1
        sid[1, 200:] = 2
        for dtype in (torch.float32, torch.bfloat16):
            out = {}
            for impl in ("torch", "flex"):
                model.config.attn_config["attn_impl"] = impl
                model.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    res = model(ids, sequence_id=sid, labels=ids)
                res.loss.backward()
                grads = torch.cat([p.grad.flatten().float() for p in model.parameters()])
                out[impl] = (res.logits.float(), res.loss.item(), grads)
            (lt, losst, gt), (lf, lossf, gf) = out["torch"], out["flex"]
            print(f"kernel check ({str(dtype).split('.')[-1]}, documents on): max |logits flex - sdpa| "
                  f"{(lt - lf).abs().max().item():.2e}, loss {losst:.6f} vs {lossf:.6f}, "
                  f"max |grad diff| {(gt - gf).abs().max().item():.2e} (max |grad| {gt.abs().max().item():.2e})",
                  flush=True)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="125m,1b")
    p.add_argument("--impls", default="foundry-sdpa,foundry-flex,hf")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--batch", type=int, help="per-model default: 125m 16, 1b 8")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny model, seq 128, 2 steps (any device)")
    p.add_argument("--json", help="write the results here too")
    p.add_argument("--no-check", action="store_true", help="skip the flex-vs-SDPA kernel check")
    p.add_argument("--loss-chunk-elements", type=int,
                   help="logits per chunk of foundry's chunked loss (default: foundry.models.mpt.loss.CHUNK_ELEMENTS)")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.smoke:
        args.models, args.seq, args.steps, args.warmup = "smoke", 128, 2, 1
    import transformers

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}; torch {torch.__version__}; transformers {transformers.__version__}; "
          f"seq {args.seq}; bf16 autocast, fp32 master weights, LION", flush=True)
    if args.loss_chunk_elements:
        import foundry.models.mpt.loss as loss_module

        loss_module.CHUNK_ELEMENTS = args.loss_chunk_elements
    if not args.no_check:
        check_kernels(device)
    results = []
    for model_name in args.models.split(","):
        spec = MODELS[model_name]
        batch = args.batch or spec["batch"]
        print(f"\n== mpt-{model_name}: d_model {spec['d_model']}, {spec['n_layers']} layers, "
              f"{spec['n_heads']} heads, vocab {spec['vocab_size']}, batch {batch} x seq {args.seq}", flush=True)
        print(f"{'impl':<14}{'batch':>6}{'params':>14}{'tokens/s':>12}{'MFU':>8}{'step ms':>10}"
              f"{'peak GiB':>10}{'warmup s':>10}{'loss':>9}")
        for impl in args.impls.split(","):
            r = run_fitting(impl, spec, args.seq, batch, args.steps, args.warmup, device)
            r["model"] = model_name
            results.append(r)
            if "error" in r:
                print(f"{impl:<14}{r['batch']:>6}  ERROR {r['error']}", flush=True)
                continue
            print(f"{impl:<14}{r['batch']:>6}{r['params']:>14,}{r['tokens_per_s']:>12,.0f}{r['mfu'] * 100:>7.1f}%"
                  f"{r['step_ms']:>10.1f}{r['peak_gib']:>10.1f}{r['warmup_s']:>10.1f}{r['loss']:>9.3f}", flush=True)
        base = next((r for r in results if r["model"] == model_name and r["impl"] == "hf" and "error" not in r), None)
        if base:
            for r in results:
                if r["model"] == model_name and r["impl"] != "hf" and "error" not in r:
                    print(f"ratio {r['impl']}/hf: tokens/s {r['tokens_per_s'] / base['tokens_per_s']:.2f}x "
                          f"(batch {r['batch']} vs {base['batch']})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
