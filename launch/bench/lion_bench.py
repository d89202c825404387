"""One DecoupledLionW step: the foreach step vs the per-parameter step, side by side, in one run.

    python launch/bench/lion_bench.py                              # mpt-125m shapes, fp32, CPU
    python launch/bench/lion_bench.py --device cuda --yaml yamls/pretrain/mpt-1b.yaml
    python launch/bench/lion_bench.py --dtensor                    # + both on 1-rank FSDP2-style DTensors

The parameter shapes are those of the model in `--yaml` (default mpt-125m: 74 tensors, 125M
parameters), built from the config without the model code. Each variant steps its own copy
of the same parameters with the same gradients; steps alternate between variants so drift in
the machine's load hits both; the table shows the median time per step. After the timed steps
every variant has taken the same number of steps, so the last columns compare the parameters
and momenta with the per-parameter (reference) variant: `bitwise` or the largest difference in
units of the last place (ulp) of the parameter.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from foundry.optim.lion import DecoupledLionW  # noqa: E402


def param_shapes(yaml: str) -> list[tuple[int, ...]]:
    """The trainable tensors of foundry's MPT for this config, in module order."""
    from foundry.config.load import load_config
    from foundry.plan.model import model_shape

    m = model_shape(load_config(yaml, ['train_loader.dataset.local=/nonexistent']))
    d, f, qkv = m.d_model, m.ffn_hidden_size, m.d_model + 2 * m.kv_dim
    norm = [(d,)] if m.no_bias or m.norm_type == 'rmsnorm' else [(d,), (d,)]

    def linear(n_in, n_out):
        return [(n_out, n_in)] + ([] if m.no_bias else [(n_out,)])

    block = norm + linear(d, qkv) + linear(d, d) + norm + linear(d, f) + linear(f, d)
    shapes = [(m.vocab_size, d)] + block * m.n_layers + norm
    if not m.tie_word_embeddings:
        shapes.append((m.vocab_size, d))
    total = sum(torch.Size(s).numel() for s in shapes)
    assert m.qk_ln is False and not m.learned_pos_emb and total == m.parameters, 'unsupported layout'
    return shapes


def make_variant(name, shapes, device, dtype, mesh, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        t = torch.randn(s, generator=g).to(device=device, dtype=dtype)
        if mesh is not None:
            from torch.distributed.tensor import Shard, distribute_tensor
            t = distribute_tensor(t, mesh, [Shard(0)])
        params.append(torch.nn.Parameter(t))
    opt = DecoupledLionW(params, lr=1e-4, weight_decay=0.1, foreach=name.startswith('foreach'))
    return params, opt


def set_grads(params, step, device, dtype, mesh):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        grad = torch.randn(p.shape, generator=g).to(device=device, dtype=dtype)
        if mesh is not None:
            from torch.distributed.tensor import Shard, distribute_tensor
            grad = distribute_tensor(grad, mesh, [Shard(0)])
        p.grad = grad


def local(t):
    return t.to_local() if hasattr(t, 'to_local') else t


def max_ulps(a_list, b_list) -> str:
    worst = 0.0
    for a, b in zip(a_list, b_list):
        a, b = local(a).detach().float(), local(b).detach().float()
        if torch.equal(a, b):
            continue
        ulp = torch.finfo(local(a_list[0]).dtype).eps * b.abs().clamp_min(torch.finfo(torch.float32).tiny)
        worst = max(worst, ((a - b).abs() / ulp).max().item())
    return 'bitwise' if worst == 0 else f'{worst:.2g} ulp'


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--yaml', default=str(REPO / 'yamls/pretrain/mpt-125m.yaml'))
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
    ap.add_argument('--steps', type=int, default=3, help='timed steps per variant (after one warm-up step)')
    ap.add_argument('--dtensor', action='store_true', help='also step 1-rank mesh DTensors, as FSDP2 hands them over')
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    shapes = param_shapes(args.yaml)
    mesh = None
    if args.dtensor:
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        backend = 'nccl' if args.device.startswith('cuda') else 'gloo'
        dist.init_process_group(backend, init_method=f'file://{tempfile.mkdtemp()}/store', rank=0, world_size=1)
        mesh = init_device_mesh(args.device.split(':')[0], (1,))
    names = ['per-parameter', 'foreach'] + (['per-parameter DTensor', 'foreach DTensor'] if mesh else [])
    variants = {n: make_variant(n, shapes, args.device, dtype, mesh if 'DTensor' in n else None) for n in names}
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    times = {n: [] for n in names}
    for step in range(args.steps + 1):
        for n in names:
            params, opt = variants[n]
            set_grads(params, step, args.device, dtype, mesh if 'DTensor' in n else None)
            sync()
            start = time.perf_counter()
            opt.step()
            sync()
            if step > 0:  # the first step allocates the momenta
                times[n].append(time.perf_counter() - start)
    n_params = sum(torch.Size(s).numel() for s in shapes)
    device = torch.cuda.get_device_name() if args.device.startswith('cuda') else f'CPU, {torch.get_num_threads()} threads'
    print(f'{Path(args.yaml).name}: {len(shapes)} tensors, {n_params:,} parameters, {args.dtype}, {device}, '
          f'torch {torch.__version__}, load {os.getloadavg()[0]:.1f}; median of {args.steps} steps')
    print(f'{"variant":<22} {"ms/step":>9} {"vs per-parameter":>17}  params vs ref  momentum vs ref')
    for n in names:
        base = 'per-parameter DTensor' if 'DTensor' in n else 'per-parameter'
        ms = statistics.median(times[n]) * 1e3
        ref_ms = statistics.median(times[base]) * 1e3
        (p, opt), (rp, ropt) = variants[n], variants[base]
        print(f'{n:<22} {ms:9.1f} {ref_ms / ms:16.2f}x  {max_ulps(p, rp):>13}  '
              f'{max_ulps([opt.state[q]["exp_avg"] for q in p], [ropt.state[q]["exp_avg"] for q in rp]):>15}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
