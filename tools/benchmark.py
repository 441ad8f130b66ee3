#!/usr/bin/env python3
"""Throughput, step time, peak memory, parameters and FLOPs (selective scan counted) of any timm / vssm models.

    # CPU, one thread, batch 8, 224x224: VMamba-T beside ConvNeXt-T and Swin-T in one run
    python tools/benchmark.py --model vmamba_tiny_s1l8 convnext_tiny swin_tiny_patch4_window7_224 \
        --device cpu --num-threads 1 -b 8 --img-size 224 --results-file bench.csv
    # the linear-complexity story: img/s from 224 to 1024 on a GPU, plotted
    python tools/benchmark.py --model 'vmamba_tiny_*' swin_tiny_patch4_window7_224 --device cuda \
        --precision amp --img-size 224 384 512 768 1024 -b 16 --plot resolution.png --results-file res.json

Result fields follow timm's benchmark.py (infer_samples_per_sec, infer_step_time, infer_batch_size,
infer_img_size, infer_gmacs, param_count, train_samples_per_sec, ...) plus peak memory and the scan backend.
Every step is timed on its own: the step time is the median (img/s follows from it), with its min and max
beside it (infer_step_time_min / _max), the statistic of every benchmark tool (vssm/tools_common/timing.py).
FLOPs: multiply-adds as fvcore counts them (the papers' "FLOPs"), with the scan counted by vssm.ops.flops.
Peak memory: torch.cuda.max_memory_allocated on GPU; on CPU the peak resident set (Linux VmHWM, reset
before each measurement) above the resident set just before it.
"""
import argparse
import csv
import fnmatch
import gc
import json
import math
import os
import re
import sys
from contextlib import nullcontext
from typing import Dict, List, Optional

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
import timm  # noqa: E402
import vssm  # noqa: F401,E402
from timm.utils import ParseKwargs  # noqa: E402

from vssm.tools_common.timing import CLOCKS, Timing, time_calls  # noqa: E402

PRECISIONS = {'float32': torch.float32, 'float16': torch.float16, 'bfloat16': torch.bfloat16}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='benchmark timm / vssm models (img/s, step time, memory, FLOPs)')
    p.add_argument('--model', '-m', nargs='+', default=['vmamba_tiny_s1l8'],
                   help="model names or wildcards ('vmamba_*'), any registered timm model")
    p.add_argument('--model-list', default='', help='file with one model name (or wildcard) per line')
    p.add_argument('--bench', default='inference', choices=['inference', 'train', 'both'])
    p.add_argument('-b', '--batch-size', type=int, default=8)
    p.add_argument('--img-size', type=int, nargs='+', default=[224], help='one or more square resolutions')
    p.add_argument('--in-chans', type=int, default=3)
    p.add_argument('--num-classes', type=int, default=1000)
    p.add_argument('--precision', default='float32', choices=['float32', 'amp', 'float16', 'bfloat16'],
                   help="'amp' = autocast in --amp-dtype; float16 / bfloat16 = the whole model in that dtype")
    p.add_argument('--amp-dtype', default='bfloat16', choices=['float16', 'bfloat16'])
    p.add_argument('--backend', default=None, help='scan backend for vssm models (sets VSSM_SCAN_BACKEND)')
    p.add_argument('--device', default=None, help="'cpu' or 'cuda' (default: cuda when available)")
    p.add_argument('--num-threads', type=int, default=None, help='torch CPU threads (intra-op)')
    p.add_argument('--num-warm-iter', type=int, default=3)
    p.add_argument('--num-bench-iter', type=int, default=10)
    p.add_argument('--min-bench-time', type=float, default=0.0,
                   help='keep timing past --num-bench-iter until this many seconds have passed')
    p.add_argument('--timer', default='wall', choices=sorted(CLOCKS),
                   help="'process' = this process's CPU time: steadier on a shared machine (CPU, 1 thread)")
    p.add_argument('--channels-last', action='store_true', default=False)
    p.add_argument('--grad-checkpointing', action='store_true', default=False)
    p.add_argument('--torchcompile', nargs='?', type=str, default=None, const='inductor')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--reparameterize', action='store_true', default=False,
                   help="fuse for inference first (timm's reparameterize_model: Conv-BN folding; no-op for others)")
    p.add_argument('--no-flops', action='store_true', default=False, help='skip the FLOP count (fvcore trace)')
    p.add_argument('--results-file', default='', help='write results here (.csv or .json)')
    p.add_argument('--results-format', default='', choices=['', 'csv', 'json'])
    p.add_argument('--plot', default='', help='PNG: img/s vs resolution (several sizes) or vs GFLOPs (one size)')
    p.add_argument('--plot-x', default='auto', choices=['auto', 'resolution', 'flops'])
    return p


def expand_models(patterns: List[str]) -> List[str]:
    names: List[str] = []
    for pat in patterns:
        if any(c in pat for c in '*?['):
            found = timm.list_models(pat)
            if not found:
                raise ValueError(f'no registered model matches {pat!r}')
            names += found
        else:
            if not timm.is_model(pat):
                raise ValueError(f'unknown model {pat!r}; see timm.list_models()')
            names.append(pat)
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------------- memory

def _malloc_trim():
    try:
        import ctypes
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory of a block: CUDA allocator peak, or on Linux the resident-set high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device
        self.mb = float('nan')

    @staticmethod
    def _status_kb(field: str) -> Optional[int]:
        try:
            m = re.search(rf'^{field}:\s+(\d+) kB', open('/proc/self/status').read(), re.M)
            return int(m.group(1)) if m else None
        except OSError:
            return None

    def __enter__(self):
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
        else:
            _malloc_trim()  # hand freed heap pages back, so memory reused from earlier runs shows up again
            try:
                with open('/proc/self/clear_refs', 'w') as f:
                    f.write('5')  # resets VmHWM to the current resident set
                self.base = self._status_kb('VmRSS')
            except OSError:
                self.base = None
        return self

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.mb = (torch.cuda.max_memory_allocated(self.device) - self.base) / 2 ** 20
        elif self.base is not None:
            peak = self._status_kb('VmHWM')
            if peak is not None:
                self.mb = (peak - self.base) / 1024
        return False


# ------------------------------------------------------------------------------------------- benchmark

def create(name: str, img_size: int, args, device, dtype):
    kwargs = dict(num_classes=args.num_classes, in_chans=args.in_chans, **args.model_kwargs)
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is not None and getattr(cfg, 'fixed_input_size', False):
        kwargs['img_size'] = img_size  # ViT / Swin style models are built for one resolution
    model = timm.create_model(name, **kwargs)
    if getattr(args, 'reparameterize', False):
        from timm.utils.model import reparameterize_model
        model = reparameterize_model(model.eval(), inplace=True)
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(device=device, dtype=dtype)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def time_steps(step, args, device) -> Timing:
    """Seconds per call of step() after warm-up: median, min and max (vssm.tools_common.timing)."""
    return time_calls(step, runs=args.num_bench_iter, warmup=args.num_warm_iter, min_time=args.min_bench_time,
                      device=device, clock=args.timer)


def bench_one(name: str, img_size: int, args, device) -> Dict:
    dtype = PRECISIONS.get(args.precision, torch.float32)
    autocast = (lambda: torch.autocast(device.type, dtype=PRECISIONS[args.amp_dtype])) \
        if args.precision == 'amp' else nullcontext
    model = create(name, img_size, args, device, dtype)
    row = dict(model=name, param_count=round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
               device=device.type, precision=args.precision if args.precision != 'amp' else f'amp_{args.amp_dtype}',
               num_threads=torch.get_num_threads() if device.type == 'cpu' else '', timer=args.timer,
               scan_backend=_scan_backend(model, device, args))
    x = torch.randn(args.batch_size, args.in_chans, img_size, img_size, device=device, dtype=dtype)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if not args.no_flops:
        row['infer_gmacs'] = _gflops(model, img_size, args)
    run = torch.compile(model, backend=args.torchcompile) if args.torchcompile else model

    if args.bench in ('inference', 'both'):
        model.eval()

        def infer():
            with torch.inference_mode(), autocast():
                run(x)
        with PeakMemory(device) as mem:
            step = time_steps(infer, args, device)
        row.update(infer_samples_per_sec=round(args.batch_size / step.median, 2), **step.fields('infer_step_time'),
                   infer_batch_size=args.batch_size, infer_img_size=img_size, infer_peak_mem_mb=round(mem.mb, 1))

    if args.bench in ('train', 'both'):
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=1e-6)
        target = torch.randint(0, args.num_classes, (args.batch_size,), device=device)

        def train():
            with autocast():
                loss = torch.nn.functional.cross_entropy(run(x).float(), target)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        with PeakMemory(device) as mem:
            step = time_steps(train, args, device)
        row.update(train_samples_per_sec=round(args.batch_size / step.median, 2), **step.fields('train_step_time'),
                   train_batch_size=args.batch_size, train_img_size=img_size, train_peak_mem_mb=round(mem.mb, 1))
    del model, run, x
    gc.collect()
    return row


def _scan_backend(model, device, args) -> str:
    if not type(model).__module__.startswith('vssm.'):
        return ''
    from vssm.ops import default_backend
    from vssm.layers import SSD2D
    mode = 'ssd' if any(isinstance(m, SSD2D) for m in model.modules()) else 'selective'  # Mamba-2 (m2) models
    try:
        return default_backend(device, mode=mode, backend=args.backend)
    except ValueError as e:
        return f'error: {e}'


def _gflops(model, img_size: int, args) -> float:
    try:
        from vssm.ops.flops import count_flops
    except ImportError:
        return float('nan')
    # fvcore has no handle for F.scaled_dot_product_attention: count timm attention through its explicit matmuls
    fused = [m for m in model.modules() if getattr(m, 'fused_attn', False) is True]
    for m in fused:
        m.fused_attn = False
    try:
        return round(count_flops(model, input_size=(args.in_chans, img_size, img_size)) / 1e9, 6)
    except Exception as e:  # fvcore missing or a trace it cannot follow: keep the timing, say why
        print(f'  (FLOPs of {model.__class__.__name__} at {img_size} not counted: {type(e).__name__}: {e})',
              file=sys.stderr)
        return float('nan')
    finally:
        for m in fused:
            m.fused_attn = True


# --------------------------------------------------------------------------------------------- output

def write_results(rows: List[Dict], path: str, fmt: str = ''):
    fmt = fmt or ('json' if path.endswith('.json') else 'csv')
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if fmt == 'json':
        with open(path, 'w') as f:
            json.dump(rows, f, indent=2)
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, 'w', newline='') as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def format_table(rows: List[Dict]) -> str:
    cols = [('model', 'model'), ('img', 'infer_img_size'), ('batch', 'infer_batch_size'),
            ('infer img/s', 'infer_samples_per_sec'), ('infer ms/step', 'infer_step_time'),
            ('train img/s', 'train_samples_per_sec'), ('train ms/step', 'train_step_time'),
            ('params (M)', 'param_count'), ('GFLOPs', 'infer_gmacs'),
            ('peak MB (infer)', 'infer_peak_mem_mb'), ('peak MB (train)', 'train_peak_mem_mb'), ('scan', 'scan_backend')]
    cols = [(h, k) for h, k in cols if any(k in r for r in rows)]
    lines = ['| ' + ' | '.join(h for h, _ in cols) + ' |', '|' + '---|' * len(cols)]
    for r in rows:
        if 'error' in r:
            lines.append(f'| {r["model"]} | error: {r["error"]} |')
            continue
        cell = {k: r.get(k, '') for _, k in cols}
        cell['infer_img_size'] = r.get('infer_img_size', r.get('train_img_size', ''))
        cell['infer_batch_size'] = r.get('infer_batch_size', r.get('train_batch_size', ''))
        lines.append('| ' + ' | '.join(str(cell[k]) for _, k in cols) + ' |')
    return '\n'.join(lines)


def plot_results(rows: List[Dict], path: str, x: str = 'auto') -> str:
    from vssm.tools_common.plots import plot_xy_series
    rows = [r for r in rows if 'error' not in r]
    key = 'infer_samples_per_sec' if any('infer_samples_per_sec' in r for r in rows) else 'train_samples_per_sec'
    size_key = 'infer_img_size' if key.startswith('infer') else 'train_img_size'
    sizes = {r[size_key] for r in rows}
    if x == 'auto':
        x = 'resolution' if len(sizes) > 1 else 'flops'
    series: Dict[str, List[List[float]]] = {}
    for r in rows:
        xv = r[size_key] if x == 'resolution' else r.get('infer_gmacs', float('nan'))
        s = series.setdefault(r['model'], [[], []])
        s[0].append(xv)
        s[1].append(r[key])
    what = 'inference' if key.startswith('infer') else 'training'
    dev = rows[0]['device'] if rows else ''
    if x == 'resolution':
        return plot_xy_series(series, path, xlabel='image side (pixels)', ylabel=f'{what} img/s',
                              title=f'{what} throughput vs resolution ({dev})\nlinear cost in pixels = slope -2 here',
                              logx=True, logy=True)
    return plot_xy_series(series, path, xlabel='GFLOPs per image', ylabel=f'{what} img/s',
                          title=f'{what} throughput vs FLOPs ({dev}, {sorted(sizes)[0]}px)', annotate=True)


def main(argv: Optional[List[str]] = None) -> List[Dict]:
    args = build_parser().parse_args(argv)
    if args.backend:
        os.environ['VSSM_SCAN_BACKEND'] = args.backend
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    device = torch.device(args.device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    patterns = list(args.model)
    if args.model_list:
        with open(args.model_list) as f:
            patterns += [line.strip() for line in f if line.strip() and not line.startswith('#')]
    names = expand_models(patterns)
    rows = []
    for name in names:
        for size in args.img_size:
            print(f'benchmarking {name} @ {size} (batch {args.batch_size}, {args.precision}, {device})',
                  file=sys.stderr)
            try:
                row = bench_one(name, size, args, device)
            except Exception as e:  # keep going: one model failing should not lose the others' numbers
                row = dict(model=name, infer_img_size=size, error=f'{type(e).__name__}: {e}'.splitlines()[0])
                if device.type == 'cuda':
                    torch.cuda.empty_cache()
            rows.append(row)
            if args.results_file:  # after every model: a run stopped by a time limit keeps what it measured
                write_results(rows, args.results_file, args.results_format)
    print(format_table(rows))
    if args.plot:
        plot_results(rows, args.plot, args.plot_x)
    return rows


if __name__ == '__main__':
    main()
