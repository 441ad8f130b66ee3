#!/usr/bin/env python
"""Time the plan scan per layer shape: fused Triton kernel vs unfused paths, against the memory roofline,
with the fused kernel's cost model (vssm/ops/scan_cost.py) per shape.

For each layer shape of VMamba-T (s1l8), Vim-S, LocalVMamba-T and EfficientVMamba-T, at 224x224 with batch
128 (`--shape-set cls224`, the default) or at the stage maps of an 800x1333 detection input with batch 2
(`--shape-set det800`), it times forward and forward+backward of

  fused          vssm's Triton backend: reads the map through the plan's index, forms Δ in registers from its
                 low-rank factor, scans, merges (one op)
  cuda           vssm's native CUDA C++ backend (kernels/), the same fused op, when the extension is built
  unfused        cross-scan copy + scan + merge in PyTorch (vssm's 'fast' backend)
  unfused-triton cross-scan copy (torch) + the same Triton scan on the copies + torch merge: isolates fusion
  mamba_ssm      torch cross-scan + full Δ + mamba_ssm's selective_scan_fn (CUDA) + torch merge, when importable

Δ is passed in the low-rank form the models use (its rank-R factor and the (K, D, R) dt_proj weight), or
with ``--delta full`` as a full (B, K, D, L) tensor. Achieved bytes/s count the fused minimum (every input
read once, every output written once: u, Δ's factor K*R*L or full Δ K*D*L, B and C 2*K*N*L, z, y; backward
adds reading the inputs and output gradient and writing one gradient per input), as a fraction of the
device's copy bandwidth measured here (a large tensor copy: read + write). Each row also prints the cost
model's bytes (what the kernels move) and launch shape.

    python tools/benchmark_scan.py                      # CUDA, float16, batch 128
    python tools/benchmark_scan.py --csv scan.csv --dtype bfloat16 --models vmamba_t vim_s --delta both
    python tools/benchmark_scan.py --shape-set det800 --impls fused cuda unfused --skip-missing
    python tools/benchmark_scan.py --schedule           # the cost-model table of docs/scan_kernel.md (CPU, no GPU)
    TRITON_INTERPRET=1 python tools/benchmark_scan.py --device cpu --smoke   # tiny shapes, seconds
    python tools/benchmark_scan.py --mode ssd --threads 1 --batch 8 --stages 1   # SSD (Mamba-2): benchmark_ssd.py
"""
import argparse
import csv
import dataclasses
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vssm.ops import build_index, cross_merge, cross_scan, expand_delta, plan_selective_scan  # noqa: E402
from vssm.ops.scan_cost import format_cost_table, layer_cost  # noqa: E402
from vssm.tools_common.timing import time_calls  # noqa: E402

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


@dataclass(frozen=True)
class LayerShape:
    model: str
    stage: str
    directions: Tuple[str, ...]
    H: int
    W: int
    channels: int  # d_inner of the scan
    d_state: int
    merge: str
    rank: int  # dt_rank = ceil(model dim / 16): the rank of Δ's low-rank form
    seq_u: bool = False  # per-direction sequences (Vim: each direction has its own conv1d)
    with_z: bool = False  # gate inside the scan (Vim); VMamba-family SS2D gates after out_norm
    count: int = 1  # layers of this shape in one forward of the model


# the models whose scan layers are benchmarked, by short name; their shapes are recorded from one forward of the
# built model (vssm/tools_common/scan_layers.py), one representative layer per stage (map size and width)
MODELS = {'vmamba_t': 'vmamba_tiny_s1l8', 'vim_s': 'vim_small', 'localvmamba_t': 'local_vmamba_tiny',
          'efficientvmamba_t': 'efficient_vmamba_tiny'}
EXTRA_MODELS = {'vim_t': 'vim_tiny'}  # schedule table only


def model_layers(model: str, height: int = 224, width: int = 224) -> List[LayerShape]:
    """One LayerShape per stage of MODELS[model] at this input size, with the stage's layer count."""
    from vssm.tools_common.scan_layers import model_scan_layers
    stages = {}
    for layer in model_scan_layers({**MODELS, **EXTRA_MODELS}[model], (height, width)):
        s = layer.shape
        key = (s.hw, s.channels)
        if key in stages:
            stages[key] = dataclasses.replace(stages[key], count=stages[key].count + layer.count)
            continue
        stage = 'all' if s.seq_u else f's{len(stages) + 1}'
        stages[key] = LayerShape(model, stage, layer.directions, s.hw[0], s.hw[1], s.channels, s.d_state, s.merge,
                                 s.rank, seq_u=s.seq_u, with_z=s.has_z, count=layer.count)
    return list(stages.values())


_LAYER_CACHE = {}


def layers_at(height: int, width: int) -> List[LayerShape]:
    """Every MODELS layer at an input size (built once per size)."""
    if (height, width) not in _LAYER_CACHE:
        _LAYER_CACHE[height, width] = [s for m in MODELS for s in model_layers(m, height, width)]
    return _LAYER_CACHE[height, width]


@dataclass(frozen=True)
class ScheduleShape:
    """One row of the schedule table (issue 11): a scan layer at a batch size the models meet."""
    label: str
    directions: Tuple[str, ...]
    H: int
    W: int
    batch: int
    channels: int
    d_state: int
    rank: int
    merge: str = 'sum'
    seq_u: bool = False
    with_z: bool = False


def _stages(model: str, label: str, size: Tuple[int, int], batches: Sequence[int]) -> List[ScheduleShape]:
    """Every stage layer of MODELS[model] at input ``size`` (recorded from the built model), at each batch."""
    return [ScheduleShape(f'{label} {l.stage} {l.H}x{l.W} b{b}', l.directions, l.H, l.W, b, l.channels, l.d_state,
                          l.rank, l.merge, l.seq_u, l.with_z)
            for b in batches for l in model_layers(model, *size)]


def schedule_shapes() -> List[ScheduleShape]:
    """VMamba-T at 224^2 (batch 1, 8, 128); the Mask R-CNN 800x1333 stage maps at batch 2; UperNet 512^2 at batch 2
    and 16; a 1024^2 (ERF) input at batch 1; vim_tiny at 1248^2 (78x78 patches + cls token)."""
    return (_stages('vmamba_t', 'VMamba-T 224', (224, 224), (1, 8, 128))
            + _stages('vmamba_t', 'Mask R-CNN 800x1333', (800, 1333), (2,))
            + _stages('vmamba_t', 'UperNet 512', (512, 512), (2, 16))
            + _stages('vmamba_t', '1024', (1024, 1024), (1,))
            + _stages('vim_t', 'vim_tiny 1248', (1248, 1248), (1,)))


# Detection: mmdet resizes to 800x1333 and pads to a multiple of 32 (DetDataPreprocessor pad_size_divisor=32), so
# the backbone sees 800x1344: stage maps 200x336 / 100x168 / 50x84 / 25x42, Vim 50x84 patches + class token.
DETECTION_INPUT = (800, 1344)


# shape set -> (input size, default batch)
SHAPE_SETS = {
    'cls224': ((224, 224), 128),
    'det800': (DETECTION_INPUT, 2),
}


def smoke_layers(layers: Sequence[LayerShape]) -> List[LayerShape]:
    """Tiny versions of every model's shapes (same plans and merges) for a quick CPU run."""
    tiny = []
    seen = set()
    for s in layers:
        if s.model in seen:
            continue
        seen.add(s.model)
        H, W = (1, 7) if s.seq_u else (3, 4)
        tiny.append(LayerShape(s.model, 'smoke', s.directions, H, W, 2, min(s.d_state, 2), s.merge, 2, s.seq_u,
                               s.with_z))
    return tiny


# ------------------------------------------------------------------------------------------------ inputs

def make_inputs(shape: LayerShape, batch: int, dtype, device, requires_grad: bool, low_rank: bool = True):
    """Inputs laid out as SS2D / the 1D mixer produce them: channel-last maps, Δ's factor, B and C slices of
    one projection; ``low_rank`` False passes full Δ (B, K, D, L) instead."""
    idx = build_index(shape.directions, shape.H, shape.W, device)
    K, Lk = idx.shape
    L, Dm, N, R = shape.H * shape.W, shape.channels, shape.d_state, shape.rank
    kw = dict(device=device, dtype=dtype)
    f32 = dict(device=device, dtype=torch.float32)
    u = torch.randn(batch, K, Lk, Dm, **kw).transpose(2, 3) if shape.seq_u else \
        torch.randn(batch, L, Dm, **kw).transpose(1, 2)
    proj = torch.randn(batch, K, Lk, R + 2 * N, **kw)
    weight = (torch.rand(K, Dm, R, **f32) * 2 - 1) * R ** -0.5
    t = dict(
        u=u, delta=proj[..., :R].transpose(-1, -2), A=-0.5 * torch.rand(K * Dm, N, **f32) - 0.1,
        B=proj[..., R:R + N].transpose(-1, -2), C=proj[..., R + N:].transpose(-1, -2), D=torch.randn(K * Dm, **f32),
        z=torch.randn(batch, L, Dm, **kw).transpose(1, 2) if shape.with_z else None,
        delta_bias=0.5 * torch.rand(K * Dm, **f32), delta_weight=weight,
    )
    if not low_rank:
        t['delta'] = expand_delta(t['delta'], weight).to(dtype)
        t['delta_weight'] = None
    if requires_grad:
        t = {n: (v.detach().requires_grad_() if v is not None else None) for n, v in t.items()}
    return t, idx, L


def fused_min_bytes(shape: LayerShape, batch: int, dtype, backward: bool, low_rank: bool = True) -> int:
    """Every input read once, every output written once, in the input dtype (parameters aside)."""
    K, Lk = build_index(shape.directions, shape.H, shape.W).shape
    L, Dm, N = shape.H * shape.W, shape.channels, shape.d_state
    u = K * Dm * Lk if shape.seq_u else Dm * L
    delta = K * (shape.rank if low_rank else Dm) * Lk
    inputs = u + delta + 2 * K * N * Lk + (Dm * L if shape.with_z else 0)
    out = K * Dm * L if shape.merge == 'none' else Dm * L
    elems = inputs + out
    if backward:  # read the inputs again and the output gradient, write one gradient per input
        elems += inputs + out + inputs
    return elems * batch * torch.finfo(dtype).bits // 8


# --------------------------------------------------------------------------------------- implementations

def _op_args(t):
    return [t[n] for n in NAMES], dict(delta_weight=t['delta_weight'])


def _fused(t, idx, L, shape):
    args, kw = _op_args(t)
    return plan_selective_scan(*args, index=idx, length=L, merge=shape.merge, backend='triton', **kw)


def _cuda(t, idx, L, shape):
    args, kw = _op_args(t)
    return plan_selective_scan(*args, index=idx, length=L, merge=shape.merge, backend='cuda', **kw)


def _unfused(t, idx, L, shape):
    args, kw = _op_args(t)
    return plan_selective_scan(*args, index=idx, length=L, merge=shape.merge, backend='fast', **kw)


_IDENTITY = {}


def _identity_index(idx):
    # one cached tensor per shape, so the kernel's schedule cache hits
    key = (tuple(idx.shape), str(idx.device))
    if key not in _IDENTITY:
        _IDENTITY[key] = torch.arange(idx.shape[1], device=idx.device).expand(idx.shape[0], -1).contiguous()
    return _IDENTITY[key]


def _unfused_triton(t, idx, L, shape):
    # the copies the fused kernel avoids: scanned inputs (B, K, D, Lk), per-direction outputs, a merge pass
    us = t['u'] if shape.seq_u else cross_scan(t['u'], idx)
    seq_index = _identity_index(idx)
    y = plan_selective_scan(us, t['delta'], t['A'], t['B'], t['C'], t['D'], None, t['delta_bias'], index=seq_index,
                            length=idx.shape[1], merge='none', backend='triton', delta_weight=t['delta_weight'])
    out = cross_merge(y, idx, L, shape.merge)
    if t['z'] is not None:
        out = out * torch.nn.functional.silu(t['z'][:, None] if shape.merge == 'none' else t['z'])
    return out


def _mamba_ssm(t, idx, L, shape):
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    us = t['u'] if shape.seq_u else cross_scan(t['u'], idx)
    Bt, K, Dm, Lk = us.shape
    delta = expand_delta(t['delta'], t['delta_weight']).to(us.dtype)  # mamba_ssm takes full Δ
    y = selective_scan_fn(us.reshape(Bt, K * Dm, Lk), delta.reshape(Bt, K * Dm, Lk), t['A'],
                          t['B'].contiguous(), t['C'].contiguous(), t['D'], delta_bias=t['delta_bias'],
                          delta_softplus=True)
    out = cross_merge(y.view(Bt, K, Dm, Lk), idx, L, shape.merge)
    if t['z'] is not None:
        out = out * torch.nn.functional.silu(t['z'][:, None] if shape.merge == 'none' else t['z'])
    return out


def _triton_runs_on(device: torch.device) -> bool:
    try:
        from vssm.ops import triton_scan
    except ImportError:  # no triton installed
        return False
    return triton_scan.supports_device(device)  # CUDA, or CPU under TRITON_INTERPRET=1


def _cuda_extension_loads() -> bool:
    import warnings
    with warnings.catch_warnings():  # the loader warns once, with the build command, when it is missing
        warnings.simplefilter('ignore')
        from vssm.ops import cuda_ext
    return cuda_ext.extension() is not None


def available_impls(device: torch.device) -> List[str]:
    triton_ok = _triton_runs_on(device)
    impls = ['fused'] if triton_ok else []
    impls += ['unfused']
    if triton_ok:
        impls += ['unfused-triton']
    if device.type == 'cuda' and _cuda_extension_loads():
        impls += ['cuda']
    if device.type == 'cuda':
        try:
            import mamba_ssm.ops.selective_scan_interface  # noqa: F401
            impls.append('mamba_ssm')
        except ImportError:
            pass
    return impls


IMPLS = {'fused': _fused, 'cuda': _cuda, 'unfused': _unfused, 'unfused-triton': _unfused_triton, 'mamba_ssm': _mamba_ssm}


# ------------------------------------------------------------------------------------------------ timing

def _sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_ms(fn, device, warmup: int, iters: int) -> float:
    """Median milliseconds per call (CUDA events on GPU, perf_counter on CPU): vssm/tools_common/timing.py."""
    return time_calls(fn, runs=iters, warmup=warmup, device=device).ms


def copy_bandwidth(device, nbytes: int, warmup: int, iters: int) -> float:
    """Bytes/s of a large device copy, counting the read and the write."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device, warmup, iters)
    return 2 * src.numel() * 4 / (ms * 1e-3)


@dataclass
class Row:
    model: str
    stage: str
    impl: str
    delta: str
    dtype: str
    batch: int
    H: int
    W: int
    channels: int
    d_state: int
    rank: int
    directions: str
    fwd_ms: float
    fwd_bwd_ms: float
    fwd_min_bytes: int
    fwd_bytes_per_s: float
    fwd_frac_copy_bw: float
    fwd_bwd_min_bytes: int
    fwd_bwd_bytes_per_s: float
    fwd_bwd_frac_copy_bw: float
    # the fused kernel's cost model at this shape (what its kernels move and how they launch)
    model_fwd_bytes: int
    model_bwd_bytes: int
    model_fwd_passes: int
    model_bwd_passes: int
    model_programs_fwd: int
    model_workspace_ratio: float
    # the spread of the timed calls (fwd_ms and fwd_bwd_ms are their medians)
    fwd_ms_min: float = math.nan
    fwd_ms_max: float = math.nan
    fwd_bwd_ms_min: float = math.nan
    fwd_bwd_ms_max: float = math.nan


def shape_cost(shape: LayerShape, batch: int, dtype, low_rank: bool, n_sm: int):
    return layer_cost(shape.directions, shape.H, shape.W, batch, shape.channels, shape.d_state,
                      shape.rank if low_rank else 0, merge=shape.merge, seq_u=shape.seq_u, has_z=shape.with_z,
                      dtype=dtype, n_sm=n_sm)


def bench_layer(shape: LayerShape, impl: str, batch: int, dtype, device, warmup: int, iters: int,
                copy_bw: float, low_rank: bool, n_sm: int) -> Row:
    fn = IMPLS[impl]
    t, idx, L = make_inputs(shape, batch, dtype, device, requires_grad=False, low_rank=low_rank)
    last = {}

    def forward():
        last['out'] = fn(t, idx, L, shape)

    with torch.no_grad():
        fwd_t = time_calls(forward, runs=max(iters, 1), warmup=warmup, device=device)
    grad = torch.randn_like(last.pop('out'))
    tg, _, _ = make_inputs(shape, batch, dtype, device, requires_grad=True, low_rank=low_rank)
    leaves = [v for v in tg.values() if v is not None]

    def step():
        out = fn(tg, idx, L, shape)
        torch.autograd.grad(out, leaves, grad)

    fb_t = time_calls(step, runs=max(iters, 1), warmup=warmup, device=device)
    fwd, fb = fwd_t.ms, fb_t.ms
    fwd_bytes = fused_min_bytes(shape, batch, dtype, backward=False, low_rank=low_rank)
    fb_bytes = fused_min_bytes(shape, batch, dtype, backward=True, low_rank=low_rank)
    cost = shape_cost(shape, batch, dtype, low_rank, n_sm)
    return Row(
        model=shape.model, stage=shape.stage, impl=impl, delta='low-rank' if low_rank else 'full',
        dtype=str(dtype).replace('torch.', ''), batch=batch, H=shape.H, W=shape.W, channels=shape.channels,
        d_state=shape.d_state, rank=shape.rank if low_rank else 0, directions=' '.join(shape.directions),
        fwd_ms=fwd, fwd_bwd_ms=fb,
        fwd_min_bytes=fwd_bytes, fwd_bytes_per_s=fwd_bytes / (fwd * 1e-3),
        fwd_frac_copy_bw=fwd_bytes / (fwd * 1e-3) / copy_bw,
        fwd_bwd_min_bytes=fb_bytes, fwd_bwd_bytes_per_s=fb_bytes / (fb * 1e-3),
        fwd_bwd_frac_copy_bw=fb_bytes / (fb * 1e-3) / copy_bw,
        model_fwd_bytes=cost.fwd_bytes, model_bwd_bytes=cost.bwd_bytes, model_fwd_passes=cost.fwd_passes,
        model_bwd_passes=cost.bwd_passes, model_programs_fwd=cost.programs['forward'],
        model_workspace_ratio=cost.workspace_ratio,
        fwd_ms_min=fwd_t.min * 1e3, fwd_ms_max=fwd_t.max * 1e3, fwd_bwd_ms_min=fb_t.min * 1e3,
        fwd_bwd_ms_max=fb_t.max * 1e3,
    )


def per_image_mb(model: str, dtype, low_rank: bool, layers: Sequence[LayerShape]) -> float:
    """Fused-minimum forward bytes of all of a model's scan layers for one image, in MB (1e6)."""
    return sum(s.count * fused_min_bytes(s, 1, dtype, False, low_rank) for s in layers if s.model == model) / 1e6


def schedule_table(dtype=torch.bfloat16, n_sm: int = 132):
    """The Triton cost model over schedule_shapes() (computed here, no GPU): [(label, TritonCost, build ms)]."""
    from vssm.ops import _triton_schedule as sched
    from vssm.ops.scan_cost import scan_cost
    rows = []
    e = torch.finfo(dtype).bits // 8
    for s in schedule_shapes():
        idx = build_index(s.directions, s.H, s.W)
        problem = sched.ScanProblem(batch=s.batch, channels=s.channels, d_state=s.d_state, rank=s.rank, merge=s.merge,
                                    seq_u=s.seq_u, has_z=s.with_z, u_bytes=e, delta_bytes=e, bc_bytes=e, z_bytes=e,
                                    grad_bytes=e)
        t0 = time.perf_counter()  # the host work of a cold cache: read the index map, plan the launches
        plan = sched.plan_launch.__wrapped__(sched.build_plan_groups(idx, s.H * s.W), problem, sched.ScanConfig(),
                                             2 * n_sm)
        ms = (time.perf_counter() - t0) * 1e3
        rows.append((s.label, scan_cost(plan), f'{ms:.1f}'))
    return rows


# ------------------------------------------------------------------------------------ backends side by side

def compare_backends(model: str, layer: int, batch: int, dtype, device, warmup: int, iters: int,
                     img_size: int = 224, backends: Optional[Sequence[str]] = None) -> List[dict]:
    """Every backend that can run one scan layer of a built vssm model: forward and forward+backward times
    (median, min, max ms) beside each backend's cost record (vssm/ops/cost.py) at that shape."""
    from vssm.ops import available_backends, get_backend, scan_request
    from vssm.tools_common.scan_layers import model_scan_layers
    layers = model_scan_layers(model, img_size)
    if not 0 <= layer < len(layers):
        raise SystemExit(f'{model} has {len(layers)} distinct scan layers at {img_size}^2; --layer must be in '
                         f'[0, {len(layers)})')
    rec = layers[layer]
    s = rec.shape
    shape = LayerShape(model, rec.label, rec.directions, s.hw[0], s.hw[1], s.channels, s.d_state, s.merge, s.rank,
                       seq_u=s.seq_u, with_z=s.has_z, count=rec.count)
    cost_shape = dataclasses.replace(rec.at_batch(batch), dtype=dtype)
    t, idx, L = make_inputs(shape, batch, dtype, device, requires_grad=False)
    request = scan_request(t['u'], shape.merge, *t.values())
    rows = []
    for name in backends or available_backends(device):
        b = get_backend(name)
        if b is None or b.why_not(request) is not None:
            continue
        args, kw = _op_args(t)

        def forward():
            return plan_selective_scan(*args, index=idx, length=L, merge=shape.merge, backend=name, **kw)

        with torch.no_grad():
            fwd = time_stats(forward, device, warmup, iters)
        tg, _, _ = make_inputs(shape, batch, dtype, device, requires_grad=True)
        leaves = [v for v in tg.values() if v is not None]
        gargs, gkw = _op_args(tg)
        grad = torch.randn_like(forward())

        def step():
            out = plan_selective_scan(*gargs, index=idx, length=L, merge=shape.merge, backend=name, **gkw)
            torch.autograd.grad(out, leaves, grad)

        fb = time_stats(step, device, warmup, iters)
        row = dict(backend=name, fwd_ms=fwd, fwd_bwd_ms=fb)
        if b.cost is not None:
            row['cost'] = b.cost(cost_shape)
        rows.append(row)
    print(f'# {model} {rec.label} (x{rec.count} per image): directions {" ".join(rec.directions)}, channels '
          f'{s.channels}, d_state {s.d_state}, rank {s.rank}, merge {s.merge}; batch {batch}, {dtype}, {device}')
    print('| backend | fwd ms median (min-max) | fwd+bwd ms median (min-max) | fwd MB moved (x min) | bwd MB moved '
          '(x min) | GFLOP f/b | workspace MB f/b | programs f/b | launches f/b |')
    print('|---|---|---|---|---|---|---|---|---|')
    for r in rows:
        c = r.get('cost')
        cells = [r['backend'], _fmt_stats(r['fwd_ms']), _fmt_stats(r['fwd_bwd_ms'])]
        if c is None:
            cells += ['-'] * 6
        else:
            f, bw = c
            cells += [f'{f.bytes_moved / 1e6:.1f} ({f.traffic_ratio:.1f}x)', f'{bw.bytes_moved / 1e6:.1f} '
                      f'({bw.traffic_ratio:.1f}x)', f'{f.flops / 1e9:.3f} / {bw.flops / 1e9:.3f}',
                      f'{f.workspace_bytes / 1e6:.1f} / {bw.workspace_bytes / 1e6:.1f}', f'{f.programs} / {bw.programs}',
                      f'{f.launches} / {bw.launches}']
        print('| ' + ' | '.join(cells) + ' |', flush=True)
    return rows


def time_stats(fn, device, warmup: int, iters: int) -> Tuple[float, float, float]:
    """(median, min, max) milliseconds per call."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, iters)):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times), max(times)


def _fmt_stats(t: Tuple[float, float, float]) -> str:
    return f'{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})'


# -------------------------------------------------------------------------------------------------- main

def parse_args(argv: Optional[Sequence[str]] = None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--dtype', default=None, choices=['float16', 'bfloat16', 'float32'],
                   help='input dtype (default float16 on CUDA, float32 on CPU)')
    p.add_argument('--shape-set', default='cls224', choices=sorted(SHAPE_SETS),
                   help='cls224: 224x224 layer shapes, batch 128; det800: stage maps of an 800x1333 detection input '
                        '(padded to 800x1344), batch 2')
    p.add_argument('--batch', type=int, default=None, help="default: the shape set's (2 with --smoke)")
    p.add_argument('--models', nargs='*', default=None, help=f'subset of {sorted(MODELS)}')
    p.add_argument('--impls', nargs='*', default=None, help=f'subset of {list(IMPLS)} (default: all available)')
    p.add_argument('--skip-missing', action='store_true',
                   help='drop --impls that are not available here (with a note) instead of stopping')
    p.add_argument('--keep-going', action='store_true',
                   help='print a failing implementation/shape and go on with the others (scripts/gpu_check.sh)')
    p.add_argument('--delta', default='low-rank', choices=['low-rank', 'full', 'both'],
                   help="Δ as the models pass it (rank-R factor + dt_proj weight), as a full tensor, or both")
    p.add_argument('--smoke', action='store_true', help='tiny shapes, one iteration: checks the script runs')
    p.add_argument('--schedule', action='store_true',
                   help='print the cost-model table at the shapes the models meet (no timing, no GPU) and exit')
    p.add_argument('--compare', metavar='MODEL', default=None,
                   help='every available backend side by side on one scan layer of this built vssm model')
    p.add_argument('--layer', type=int, default=0, help='with --compare: the distinct scan layer (in call order)')
    p.add_argument('--img-size', type=int, default=224, help='with --compare: the input size the model sees')
    p.add_argument('--warmup', type=int, default=None)
    p.add_argument('--iters', type=int, default=None)
    p.add_argument('--copy-mib', type=int, default=None, help='size of the bandwidth probe (default 1024, 16 smoke)')
    p.add_argument('--csv', default=None, help='write the rows to this CSV file')
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> List:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ['--mode', 'ssd']:  # the SSD (Mamba-2) scan at vmamba_tiny_m2's shapes: tools/benchmark_ssd.py
        sys.path.insert(0, str(ROOT / 'tools'))
        import benchmark_ssd
        return benchmark_ssd.main(argv[2:])
    args = parse_args(argv)
    if args.schedule:
        rows = schedule_table(getattr(torch, args.dtype or 'bfloat16'))
        print(f'# fused Triton scan: cost model for a 132-SM GPU, {args.dtype or "bfloat16"} inputs, low-rank Δ')
        print(format_cost_table(rows, ('host ms',)))
        return rows
    if args.device == 'cpu':
        torch.set_num_threads(1)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ('float16' if device.type == 'cuda' else 'float32'))
    if args.compare:
        return compare_backends(args.compare, args.layer, args.batch or (1 if args.smoke else 8), dtype, device,
                                args.warmup if args.warmup is not None else (0 if args.smoke else 2),
                                args.iters if args.iters is not None else (1 if args.smoke else 10), args.img_size,
                                args.impls)
    (height, width), set_batch = SHAPE_SETS[args.shape_set]
    set_layers = layers_at(height, width)
    batch = args.batch or (2 if args.smoke else set_batch)
    warmup = args.warmup if args.warmup is not None else (0 if args.smoke else 5)
    iters = args.iters if args.iters is not None else (1 if args.smoke else 20)
    layers = smoke_layers(set_layers) if args.smoke else set_layers
    if args.models:
        unknown = set(args.models) - set(MODELS)
        if unknown:
            raise SystemExit(f'unknown models {sorted(unknown)}; expected some of {sorted(MODELS)}')
        layers = [s for s in layers if s.model in args.models]
    impls = available_impls(device)
    if args.impls:
        missing = [i for i in args.impls if i not in impls]
        if missing and args.skip_missing:
            print(f'# not available on {device.type} here, skipped: {missing}')
        elif missing:
            raise SystemExit(f'implementations {missing} are not available on {device.type} here; available: {impls}')
        impls = [i for i in args.impls if i in impls]
    forms = {'low-rank': [True], 'full': [False], 'both': [True, False]}[args.delta]
    n_sm = torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 132

    copy_mib = args.copy_mib or (16 if args.smoke else 1024)
    bw = copy_bandwidth(device, copy_mib << 20, warmup=max(warmup, 1), iters=max(iters, 3))
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'
    print(f'# device {name}; copy bandwidth {bw / 1e9:.1f} GB/s (read + write of {copy_mib} MiB); '
          f'dtype {dtype}; shape set {args.shape_set}; batch {batch}; implementations {impls}; Δ {args.delta}')
    if not args.smoke:
        for model in sorted({s.model for s in layers}):
            print(f'# {model}: fused-minimum forward bytes of all scan layers = '
                  f'{per_image_mb(model, dtype, forms[0], layers):.1f} MB/image ({"low-rank" if forms[0] else "full"} Δ)')
    rows = []
    header = (f'{"model":<18}{"stage":<7}{"impl":<15}{"Δ":<9}{"fwd ms":>9}{"GB/s":>8}{"%copy":>7}'
              f'{"f+b ms":>10}{"GB/s":>8}{"%copy":>7}   cost model: fwd MB (x min), bwd MB, passes f/b, programs')
    print(header)
    for shape in layers:
        for low_rank in forms:
            for impl in impls:
                try:
                    row = bench_layer(shape, impl, batch, dtype, device, warmup, iters, bw, low_rank, n_sm)
                except torch.cuda.OutOfMemoryError:  # the unfused PyTorch path keeps per-chunk states for backward
                    torch.cuda.empty_cache()
                    print(f'{shape.model:<18}{shape.stage:<7}{impl:<15} out of memory', flush=True)
                    continue
                except Exception as e:  # noqa: BLE001  (--keep-going: one failing kernel must not lose the other rows)
                    if not args.keep_going:
                        raise
                    print(f'{shape.model:<18}{shape.stage:<7}{impl:<15} failed: {type(e).__name__}: '
                          f'{str(e).splitlines()[0] if str(e) else ""}', flush=True)
                    continue
                rows.append(row)
                if args.csv:  # rewritten after every row: a run stopped by a time limit keeps what it measured
                    write_csv(args.csv, rows, name, bw)
                print(f'{row.model:<18}{row.stage:<7}{row.impl:<15}{row.delta:<9}{row.fwd_ms:>9.3f}'
                      f'{row.fwd_bytes_per_s / 1e9:>8.1f}{100 * row.fwd_frac_copy_bw:>6.1f}%{row.fwd_bwd_ms:>10.3f}'
                      f'{row.fwd_bwd_bytes_per_s / 1e9:>8.1f}{100 * row.fwd_bwd_frac_copy_bw:>6.1f}%   '
                      f'{row.model_fwd_bytes / 1e6:.1f} ({row.model_fwd_bytes / row.fwd_min_bytes:.1f}x), '
                      f'{row.model_bwd_bytes / 1e6:.1f}, {row.model_fwd_passes}/{row.model_bwd_passes}, '
                      f'{row.model_programs_fwd}', flush=True)
    return rows


def write_csv(path: str, rows: List, device_name: str, copy_bw: float) -> None:
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(asdict(rows[0]).keys()) + ['device', 'copy_bytes_per_s'])
        writer.writeheader()
        for row in rows:
            writer.writerow({**asdict(row), 'device': device_name, 'copy_bytes_per_s': copy_bw})


if __name__ == '__main__':
    main()
