#!/usr/bin/env python3
"""The CPU speed table of issue 21: MobileMamba (fused) against timm's small CPU-friendly models.

One process, one thread, batch 1 and 8 in the same run, each model at its own published resolution, every
model through timm's reparameterize_model (Conv-BN folding; a no-op where a model has nothing to fuse).
Timing is tools/benchmark.py's (``bench_one``, process CPU time by default: steadier on a shared machine).
Writes a markdown table (img/s beside the published top-1, the speed / accuracy Pareto front per batch size
marked), the raw rows as JSON and a PNG (top-1 over img/s, one panel per batch size, the front drawn).

    python scripts/bench_mobilemamba_cpu.py --out-dir bench_mobilemamba   # on a quiet machine
    python scripts/bench_mobilemamba_cpu.py --iters 1 --warmup 0 --min-time 0 --out-dir /tmp/b  # smoke run

Published top-1 (ImageNet-1k, the models' own recipes without distillation): MobileMamba README (T2 71.5,
S6 78.0, B1 79.9; 76.9 / 80.7 / 82.2 with the dagger KD recipe, shown but not used for the front); EfficientViM
(timm docstrings, 300 epochs: M2 75.4 at 224, M4 79.4 at 256); MobileNetV3-Large 1.0 75.2 (paper);
EfficientNet-B0 77.1 (paper); LocalVim-T 76.2 (paper).
"""
import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (timm name, resolution, published top-1, top-1 with KD or None)
MODELS = [
    ('mobilemamba_t2', 192, 71.5, 76.9),
    ('mobilemamba_s6', 224, 78.0, 80.7),
    ('mobilemamba_b', 256, 79.9, 82.2),  # B1
    ('efficientvim_m2', 224, 75.4, None),
    ('efficientvim_m4', 256, 79.4, None),
    ('mobilenetv3_large_100', 224, 75.2, None),
    ('efficientnet_b0', 224, 77.1, None),
    ('local_vim_tiny', 224, 76.2, None),
]
LABELS = {'mobilemamba_b': 'mobilemamba_b (B1)'}


def _benchmark_tool():
    spec = importlib.util.spec_from_file_location('vssm_tools_benchmark', ROOT / 'tools' / 'benchmark.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pareto_front(points: Dict[str, tuple]) -> List[str]:
    """Names not dominated: no other model at least as fast and as accurate, and better in one."""
    front = []
    for name, (speed, acc) in points.items():
        dominated = any(s >= speed and a >= acc and (s > speed or a > acc)
                        for other, (s, a) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return front


def run(args) -> List[Dict]:
    import torch
    bench = _benchmark_tool()
    torch.set_num_threads(args.threads)
    rows = []
    for name, size, top1, top1_kd in MODELS:
        if args.models and name not in args.models:
            continue
        row = dict(model=name, img_size=size, top1=top1, top1_kd=top1_kd)
        for batch in args.batch_sizes:
            bargs = bench.build_parser().parse_args([
                '--model', name, '--device', 'cpu', '--num-threads', str(args.threads), '-b', str(batch),
                '--img-size', str(size), '--num-warm-iter', str(args.warmup), '--num-bench-iter', str(args.iters),
                '--min-bench-time', str(args.min_time), '--timer', args.timer, '--reparameterize',
                *([] if batch == args.batch_sizes[0] else ['--no-flops'])])
            print(f'{name} @ {size}, batch {batch}', file=sys.stderr, flush=True)
            r = bench.bench_one(name, size, bargs, torch.device('cpu'))
            row[f'img_s_b{batch}'] = r['infer_samples_per_sec']
            row.setdefault('params_m', r['param_count'])
            if 'infer_gmacs' in r:
                row['gflops'] = r['infer_gmacs']
        rows.append(row)
    for batch in args.batch_sizes:
        front = pareto_front({r['model']: (r[f'img_s_b{batch}'], r['top1']) for r in rows})
        for r in rows:
            r[f'pareto_b{batch}'] = r['model'] in front
    return rows


def markdown(rows: List[Dict], batch_sizes, threads: int) -> str:
    head = ['model', 'res', 'params (M, fused)', 'GFLOPs'] + [f'img/s b{b}' for b in batch_sizes] + \
        ['top-1 (published)', 'top-1 KD'] + [f'Pareto b{b}' for b in batch_sizes]
    lines = [f'CPU, {threads} thread(s), float32, fused (timm reparameterize_model), img/s = batch / step time',
             '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for r in rows:
        cells = [LABELS.get(r['model'], r['model']), str(r['img_size']), f"{r['params_m']:.2f}",
                 f"{r.get('gflops', float('nan')):.3f}"]
        cells += [f"{r[f'img_s_b{b}']:.1f}" for b in batch_sizes]
        cells += [f"{r['top1']:.1f}", '' if r['top1_kd'] is None else f"{r['top1_kd']:.1f}"]
        cells += ['yes' if r[f'pareto_b{b}'] else '' for b in batch_sizes]
        lines.append('| ' + ' | '.join(cells) + ' |')
    mm = [r for r in rows if r['model'].startswith('mobilemamba')]
    for b in batch_sizes:
        on = [LABELS.get(r['model'], r['model']) for r in mm if r[f'pareto_b{b}']]
        lines.append(f'\nbatch {b}: MobileMamba on the Pareto front: {len(on)} of {len(mm)} '
                     f'({", ".join(on) or "none"})')
    return '\n'.join(lines) + '\n'


def plot(rows: List[Dict], batch_sizes, path: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(batch_sizes), figsize=(6 * len(batch_sizes), 4.5), dpi=100, squeeze=False)
    for ax, b in zip(axes[0], batch_sizes):
        for r in rows:
            mm = r['model'].startswith('mobilemamba')
            ax.plot(r[f'img_s_b{b}'], r['top1'], 'o' if mm else 's', color='C3' if mm else 'C0')
            ax.annotate(LABELS.get(r['model'], r['model']), (r[f'img_s_b{b}'], r['top1']), textcoords='offset points',
                        xytext=(4, 4), fontsize=7)
        front = sorted((r[f'img_s_b{b}'], r['top1']) for r in rows if r[f'pareto_b{b}'])
        ax.plot([p[0] for p in front], [p[1] for p in front], '--', color='gray', label='Pareto front')
        ax.set_xscale('log')
        ax.set_xlabel(f'img/s, CPU, batch {b} (log)')
        ax.set_ylabel('ImageNet top-1 (published)')
        ax.grid(alpha=.3)
        ax.legend(loc='lower left', fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> List[Dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out-dir', default='bench_mobilemamba')
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--batch-sizes', type=int, nargs='+', default=[1, 8])
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--iters', type=int, default=20)
    p.add_argument('--min-time', type=float, default=10.0, help='seconds of timing per model and batch, at least')
    p.add_argument('--timer', default='process', choices=['wall', 'process'])
    p.add_argument('--models', nargs='*', default=None, help='a subset of the table (timm names)')
    args = p.parse_args(argv)
    rows = run(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'cpu_speed.json').write_text(json.dumps(rows, indent=1))
    table = markdown(rows, args.batch_sizes, args.threads)
    (out / 'cpu_speed.md').write_text(table)
    plot(rows, args.batch_sizes, str(out / 'cpu_speed.png'))
    print(table)
    return rows


if __name__ == '__main__':
    main()
