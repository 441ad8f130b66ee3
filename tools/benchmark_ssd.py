#!/usr/bin/env python
"""Time the SSD (Mamba-2) plan scan per layer shape of vmamba_tiny_m2: backends side by side, forward and
forward+backward, with the SSD cost model (vssm.ops.ssd_cost) per shape.

Shapes: VMamba-T m2 at 224x224 (stage 1: 56x56 map, 96 channels = 6 heads of 16; stage 2: 28x28, 192 = 12
heads; 3: 14x14, 384; 4: 7x7, 768), 4 directions (h, v, flips), 64 states, chunk 64; inputs laid out as the
model makes them (channel-last map, Δ / B / C strided slices of one projection).

  reference  the step-by-step recurrence (plan_ssd_reference), autograd through the python loop
  fast       the chunked matmul form through the vssm::plan_ssd op (the CPU path the models run)
  export     the chunked form with the gather merge (what ONNX / torch.export record)
  triton     the fused Triton kernel (vssm/ops/ssd_triton.py), when registered and on CUDA

    python tools/benchmark_ssd.py --threads 1 --batch 8 --stages 1 --impls reference fast   # the issue's CPU check
    python tools/benchmark_ssd.py --device cuda --batch 128 --dtype bfloat16               # GPU, every stage
    python tools/benchmark_ssd.py --smoke                                                  # tiny shapes, seconds
"""
import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vssm.ops import VMAMBA_PLAN, plan_ssd_reference, plan_ssd_scan  # noqa: E402
from vssm.ops import available_backends  # noqa: E402
from vssm.ops.ssd_cost import ssd_cost  # noqa: E402

# vmamba_tiny_m2 at 224x224: (map side, channels); heads = channels / 16, 64 states
VMAMBA_T_M2 = {1: (56, 96), 2: (28, 192), 3: (14, 384), 4: (7, 768)}
SMOKE = {1: (6, 32), 2: (3, 64)}
NAMES = ('x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias')


def make_inputs(side: int, channels: int, batch: int, d_state: int, dtype, device, requires_grad: bool):
    idx = VMAMBA_PLAN.index(side, side, device)
    K, Lk = idx.shape
    L = side * side
    R = max(1, channels // 16)
    g = torch.Generator(device='cpu').manual_seed(0)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device=device, dtype=dtype)

    x = rnd(batch, L, channels).transpose(1, 2)  # channel-last map
    proj = rnd(batch, K, Lk, R + 2 * d_state, scale=0.5)
    t = dict(
        x=x, dt=proj[..., :R].transpose(-1, -2), B=proj[..., R:R + d_state].transpose(-1, -2),
        C=proj[..., R + d_state:].transpose(-1, -2),
        A=-torch.ones(K * R, device=device), D=torch.ones(K * channels, device=device),
        dt_bias=torch.rand(K * R, generator=g).mul(0.1).to(device),
    )
    if requires_grad:
        for name in ('x', 'A', 'D', 'dt_bias'):
            t[name] = t[name].detach().requires_grad_(True)
        proj.requires_grad_(True)  # Δ, B, C: gradients flow to the projection, as in the model
        t.update(dt=proj[..., :R].transpose(-1, -2), B=proj[..., R:R + d_state].transpose(-1, -2),
                 C=proj[..., R + d_state:].transpose(-1, -2))
    return t, idx, L


def run_impl(impl: str, t: Dict, idx, L: int, chunk: int):
    args = [t[n] for n in NAMES]
    if impl == 'reference':
        return plan_ssd_reference(*args, index=idx, length=L)
    return plan_ssd_scan(*args, index=idx, length=L, chunk_size=chunk, backend=impl)


def _sync(device):
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize()


def time_ms(fn, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def bench(stage: int, side: int, channels: int, impl: str, args) -> Dict:
    dtype = getattr(torch, args.dtype)
    fwd_t, idx, L = make_inputs(side, channels, args.batch, args.d_state, dtype, args.device, False)
    bwd_t, _, _ = make_inputs(side, channels, args.batch, args.d_state, dtype, args.device, True)
    grad = torch.randn(args.batch, channels, L, device=args.device, dtype=dtype)

    def forward():
        with torch.no_grad():
            run_impl(impl, fwd_t, idx, L, args.chunk)

    def step():
        run_impl(impl, bwd_t, idx, L, args.chunk).backward(grad)

    cost, _ = ssd_cost(args.batch, 4, channels // 16, 16, L, args.d_state, args.chunk, dtype=dtype,
                       backend='fast' if impl == 'reference' else impl)
    return dict(stage=stage, side=side, channels=channels, impl=impl,
                fwd_ms=time_ms(forward, args.device, args.warmup, args.iters),
                fwd_bwd_ms=time_ms(step, args.device, args.warmup, args.iters),
                gflop=cost.flops / 1e9, fwd_mb=cost.bytes_moved / 2 ** 20,
                workspace_mb=cost.workspace_bytes / 2 ** 20)


def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--stages', type=int, nargs='*', default=None, help='subset of 1 2 3 4 (default: all)')
    p.add_argument('--impls', nargs='*', default=None, help='reference fast export triton (default: available)')
    p.add_argument('--threads', type=int, default=None, help='torch.set_num_threads (1 for the CPU check)')
    p.add_argument('--d-state', type=int, default=64)
    p.add_argument('--chunk', type=int, default=64)
    p.add_argument('--warmup', type=int, default=1)
    p.add_argument('--iters', type=int, default=3)
    p.add_argument('--smoke', action='store_true', help='tiny shapes, one iteration: checks the script runs')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = SMOKE if args.smoke else VMAMBA_T_M2
    if args.smoke:
        args.batch, args.warmup, args.iters, args.d_state, args.chunk = 2, 0, 1, 8, 8
    here = available_backends(args.device, mode='ssd')
    impls = [n for n in (args.impls or ['reference'] + [n for n in here if n != 'reference'])
             if n == 'reference' or n in here]  # a backend not registered here (triton without a GPU) is skipped
    rows = []
    print(f'device {args.device}, {torch.get_num_threads()} threads, {args.dtype}, batch {args.batch}, '
          f'N {args.d_state}, chunk {args.chunk}')
    print(f"{'stage':>5} {'map':>7} {'ch':>4} {'impl':>10} {'fwd ms':>10} {'fwd+bwd ms':>11} {'GFLOP':>7} "
          f"{'MB':>7} {'ws MB':>7}")
    for stage, (side, channels) in shapes.items():
        if args.stages and stage not in args.stages:
            continue
        by_impl = {}
        for impl in impls:
            r = bench(stage, side, channels, impl, args)
            rows.append(r)
            by_impl[impl] = r
            print(f"{stage:>5} {side:>3}x{side:<3} {channels:>4} {impl:>10} {r['fwd_ms']:>10.2f} "
                  f"{r['fwd_bwd_ms']:>11.2f} {r['gflop']:>7.2f} {r['fwd_mb']:>7.1f} {r['workspace_mb']:>7.1f}")
        if 'reference' in by_impl:
            for impl, r in by_impl.items():
                if impl != 'reference':
                    ref = by_impl['reference']
                    print(f"      reference / {impl}: forward {ref['fwd_ms'] / r['fwd_ms']:.1f}x, "
                          f"forward+backward {ref['fwd_bwd_ms'] / r['fwd_bwd_ms']:.1f}x")
    return rows


if __name__ == '__main__':
    main()
