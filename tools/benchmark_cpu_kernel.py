#!/usr/bin/env python3
"""Time the fused C++ CPU scan (the 'cpu' backend) on every scan layer shape of a built model, with its cost model.

    python tools/benchmark_cpu_kernel.py --batch 8 --threads 1          # vmamba_tiny_s1l8 at 224x224
    python tools/benchmark_cpu_kernel.py --model vmamba_small_s1l20 --img-size 224 --batch 1 --iters 10

The layer shapes (channels, map, Δ rank, d_state, plan) come from the model itself: a meta-device forward
records what each SS2D mixer receives, one row per distinct shape. Inputs are laid out as SS2D passes them
(channel-last u, Δ's factor, B and C slices of one projection, low-rank Δ). Each call is timed on its own: the
median with min and max (vssm/tools_common/timing.py); with one thread by this process's CPU clock (steadier
on a shared machine), with several by wall time (idle OpenMP threads spin, which CPU time would count).
"""
import argparse
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import timm  # noqa: E402
import torch  # noqa: E402

import vssm  # noqa: F401,E402  (registers the models)
from vssm.layers import SS2D  # noqa: E402
from vssm.ops import build_index, plan_selective_scan  # noqa: E402
from vssm.ops.cpu_kernel import cost_model, extension_name, load_extension  # noqa: E402
from vssm.tools_common.timing import Timing, time_calls  # noqa: E402


@dataclass(frozen=True)
class ScanLayer:
    """One SS2D scan as the model runs it: channels D, map H x W, Δ rank R, d_state N, the plan's directions."""
    channels: int
    H: int
    W: int
    rank: int
    d_state: int
    directions: Tuple[str, ...]
    merge: str
    count: int = 1  # how many layers of the model have this shape


def model_scan_layers(model_name: str, img_size: int) -> List[ScanLayer]:
    """The distinct SS2D scan shapes of ``model_name`` at img_size x img_size, from a meta-device forward."""
    model = timm.create_model(model_name, device='meta').eval()
    seen = {}

    def record(module: SS2D, args):
        x = args[0]  # (B, H, W, C) into the mixer; the scan runs on d_inner channels of the same map
        H, W = x.shape[1] + (-x.shape[1]) % module.pad_multiple, x.shape[2] + (-x.shape[2]) % module.pad_multiple
        key = (module.d_inner, H, W, module.dt_rank, module.d_state, tuple(module.plan.directions), module.plan.merge)
        seen[key] = seen.get(key, 0) + 1

    hooks = [m.register_forward_pre_hook(record) for m in model.modules() if isinstance(m, SS2D)]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, img_size, img_size, device='meta'))
    finally:
        for h in hooks:
            h.remove()
    if not seen:
        raise SystemExit(f'{model_name} has no SS2D mixer: nothing for the CPU scan benchmark to time')
    return [ScanLayer(*key, count=n) for key, n in seen.items()]


def time_layer(layer: ScanLayer, batch: int, iters: int, clock: str) -> Tuple[Timing, Timing]:
    """(forward, forward + backward) timings of the cpu backend on one layer shape."""
    D, N, R = layer.channels, layer.d_state, layer.rank
    idx = build_index(layer.directions, layer.H, layer.W)
    K, Lk = idx.shape
    L = layer.H * layer.W
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, L, D, generator=g).transpose(1, 2).requires_grad_(True)
    x_dbl = torch.randn(batch, K, Lk, R + 2 * N, generator=g).requires_grad_(True)
    dts, Bs, Cs = [t.transpose(-1, -2) for t in torch.split(x_dbl, [R, N, N], -1)]
    A = -torch.rand(K * D, N, generator=g) - 0.5
    Dv, bias = torch.randn(K * D, generator=g), torch.randn(K * D, generator=g) * 0.1
    weight = (torch.randn(K, D, R, generator=g) * R ** -0.5).requires_grad_(True)

    def forward():
        return plan_selective_scan(u, dts, A, Bs, Cs, Dv, delta_bias=bias, index=idx, length=L,
                                   merge=layer.merge, delta_weight=weight, backend='cpu')

    with torch.no_grad():
        fwd = time_calls(forward, runs=iters, warmup=1, clock=clock)
    grad = torch.ones(batch, L, D).transpose(1, 2)
    fwd_bwd = time_calls(lambda: forward().backward(grad), runs=iters, warmup=1, clock=clock)
    return fwd, fwd_bwd


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    p = argparse.ArgumentParser(description="time the fused C++ CPU scan ('cpu' backend) on a model's layer shapes")
    p.add_argument('--model', default='vmamba_tiny_s1l8', help='a vssm model with SS2D mixers')
    p.add_argument('--img-size', type=int, default=224)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--iters', type=int, default=5, help='timed calls per figure (median, min and max reported)')
    args = p.parse_args(argv)
    if load_extension() is None:
        raise SystemExit('the fused CPU scan is not available here (no C++ compiler?): nothing to time')
    torch.set_num_threads(args.threads)
    clock = 'process' if args.threads == 1 else 'wall'
    layers = model_scan_layers(args.model, args.img_size)
    print(f'fused CPU scan ({extension_name()}), {args.model} scan layers at {args.img_size}x{args.img_size}, '
          f'batch {args.batch}, {args.threads} thread(s), {"process CPU" if clock == "process" else "wall"} time, '
          f'median (min-max) of {args.iters}')
    print('| layers | D | H x W | R | N | tasks | fwd ms | fwd+bwd ms | fwd ns / 16 ch-steps | min MB fwd | workspace MB |')
    print('|---|---|---|---|---|---|---|---|---|---|---|')
    rows = []
    for layer in layers:
        fwd, fwd_bwd = time_layer(layer, args.batch, args.iters, clock)
        K, Lk = build_index(layer.directions, layer.H, layer.W).shape
        L = layer.H * layer.W
        cost = cost_model(args.batch, K, layer.channels, L, Lk, layer.d_state, layer.rank,
                          grouped=layer.merge == 'group', train=True)
        ns = fwd.median * 1e9 / (args.batch * K * L * -(-layer.channels // 16))
        print(f'| {layer.count} | {layer.channels} | {layer.H}x{layer.W} | {layer.rank} | {layer.d_state} | '
              f'{cost["forward_tasks"]} | {fwd.ms:.2f} ({fwd.min * 1e3:.2f}-{fwd.max * 1e3:.2f}) | '
              f'{fwd_bwd.ms:.2f} ({fwd_bwd.min * 1e3:.2f}-{fwd_bwd.max * 1e3:.2f}) | {ns:.1f} | '
              f'{cost["forward_min_bytes"] / 1e6:.1f} | {cost["backward_workspace_bytes"] / 1e6:.2f} |')
        rows.append(dict(layer.__dict__, **fwd.fields('fwd_ms'), **fwd_bwd.fields('fwd_bwd_ms')))
    return rows


if __name__ == '__main__':
    main()
