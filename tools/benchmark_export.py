#!/usr/bin/env python3
"""onnxruntime on the CPU against eager PyTorch on the CPU: img/s per model and batch size, and file sizes.

    python tools/benchmark_export.py --model vmamba_tiny_s1l8 efficient_vmamba_tiny --batch-size 1 8 \
        --img-size 224 --num-threads 1 --repeats 5 --results-file export_bench.json --plot export_bench.png

Each model is exported once (ONNX and pt2, dynamic batch, vssm.deploy) and both runtimes time the same random
batch: one warm-up run, then --repeats timed runs: the median is the figure (img/s), min and max are kept
beside it (eager_ms, eager_ms_min, eager_ms_max, ...; vssm/tools_common/timing.py). Eager PyTorch runs the default scan backend (the fused C++ CPU kernel when it builds); both runtimes
get --num-threads intra-op threads. Writes JSON or CSV rows and a PNG of img/s against batch size.
"""
import argparse
import csv
import json
import logging
import os
import platform
import sys
import tempfile
from datetime import date
from typing import Dict, List

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import torch  # noqa: E402
from timm.utils import ParseKwargs  # noqa: E402

from vssm.deploy import (  # noqa: E402
    ExportRequest, build_model, check_request, example_input, export_program, load_artifact, max_differences,
    save_artifact,
)
from vssm.ops import default_backend  # noqa: E402
from vssm.tools_common.timing import Timing, time_calls  # noqa: E402

_logger = logging.getLogger('vssm.benchmark_export')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='onnxruntime (CPU) vs eager PyTorch (CPU) img/s of exported models')
    p.add_argument('--model', '-m', nargs='+', default=['vmamba_tiny_s1l8', 'efficient_vmamba_tiny'])
    p.add_argument('--checkpoint', default=None, help='weights for every model (random init without)')
    p.add_argument('--batch-size', '-b', type=int, nargs='+', default=[1, 8])
    p.add_argument('--img-size', type=int, nargs='+', default=[224], metavar=('H', 'W'))
    p.add_argument('--num-threads', type=int, default=1, help='intra-op threads of both runtimes')
    p.add_argument('--repeats', type=int, default=5,
                   help='timed runs per measurement (the median is the figure, min and max are kept beside it)')
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs)
    p.add_argument('--out-dir', default=None, help='keep the exported files here (default: a temporary folder)')
    p.add_argument('--results-file', default='', help='.json or .csv')
    p.add_argument('--plot', default='', help='PNG: img/s against batch size, one line per model and runtime')
    return p


def time_runtime(fn, x, repeats: int) -> Timing:
    # one warm-up call: allocations, onnxruntime's first-run planning
    return time_calls(lambda: fn(x), runs=repeats, warmup=1)


def bench_model(name: str, args, out_dir: str) -> List[Dict]:
    img = tuple(args.img_size) * (2 if len(args.img_size) == 1 else 1)
    onnx_path, pt2_path = os.path.join(out_dir, f'{name}.onnx'), os.path.join(out_dir, f'{name}.pt2')
    req = ExportRequest(model=name, format='onnx', img_size=img, output=onnx_path, checkpoint=args.checkpoint,
                        batch_size=2, dynamic_batch=True, model_kwargs=dict(args.model_kwargs))
    check_request(req)
    model = build_model(req)
    _logger.info('%s: torch.export, then ONNX and pt2 files', name)
    ep = export_program(model, example_input(req, 2), dynamic_batch=True)
    save_artifact(ep, 'onnx', onnx_path)
    save_artifact(ep, 'pt2', pt2_path)
    sizes = {'onnx_mb': os.path.getsize(onnx_path) / 1e6, 'pt2_mb': os.path.getsize(pt2_path) / 1e6}
    ort_run = load_artifact(onnx_path, 'onnx', num_threads=args.num_threads)
    params = sum(p.numel() for p in model.parameters())
    rows = []
    for b in args.batch_size:
        x = example_input(req, b, seed=b)
        with torch.no_grad():
            eager = lambda t: model(t)  # noqa: E731
            t_eager = time_runtime(eager, x, args.repeats)
            t_ort = time_runtime(ort_run, x, args.repeats)
            max_abs, max_rel = max_differences([model(x)], ort_run(x))
        row = dict(model=name, batch_size=b, img_size=f'{img[0]}x{img[1]}', num_threads=args.num_threads,
                   param_count=params, eager_img_s=b / t_eager.median, onnxruntime_img_s=b / t_ort.median,
                   **t_eager.fields('eager_ms'), **t_ort.fields('onnxruntime_ms'),
                   speedup=t_eager.median / t_ort.median, max_abs_diff=max_abs, max_rel_diff=max_rel,
                   eager_scan_backend=default_backend('cpu'), **sizes)
        _logger.info('%s batch %d: eager %.2f img/s, onnxruntime %.2f img/s (x%.2f), max rel diff %.1e',
                     name, b, row['eager_img_s'], row['onnxruntime_img_s'], row['speedup'], max_rel)
        rows.append(row)
    return rows


def machine() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_results(rows: List[Dict], path: str) -> None:
    if path.endswith('.csv'):
        with open(path, 'w', newline='') as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    else:
        with open(path, 'w') as f:
            json.dump(rows, f, indent=1)


def plot(rows: List[Dict], path: str, title: str) -> None:
    from vssm.tools_common.plots import plot_xy_series
    series = {}
    for runtime, key in (('eager PyTorch', 'eager_img_s'), ('onnxruntime', 'onnxruntime_img_s')):
        for name in dict.fromkeys(r['model'] for r in rows):
            mine = [r for r in rows if r['model'] == name]
            series[f'{name}, {runtime}'] = ([r['batch_size'] for r in mine], [r[key] for r in mine])
    plot_xy_series(series, path, 'batch size', 'img/s (median of repeats)', title=title)


def main(argv=None) -> List[Dict]:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.num_threads)
    meta = dict(machine=machine(), date=date.today().isoformat(), torch=torch.__version__)
    import onnxruntime
    meta['onnxruntime'] = onnxruntime.__version__
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = args.out_dir or tmp
        os.makedirs(out_dir, exist_ok=True)
        for name in args.model:
            rows += [dict(r, **meta) for r in bench_model(name, args, out_dir)]
    if args.results_file:
        write_results(rows, args.results_file)
    if args.plot:
        plot(rows, args.plot, f"CPU, {args.num_threads} thread(s), {rows[0]['img_size']}: {meta['machine']}")
    for r in rows:
        print(f"{r['model']:24s} b={r['batch_size']:<3d} eager {r['eager_img_s']:7.2f} img/s   onnxruntime "
              f"{r['onnxruntime_img_s']:7.2f} img/s   x{r['speedup']:.2f}   onnx {r['onnx_mb']:.1f} MB   "
              f"pt2 {r['pt2_mb']:.1f} MB   max rel diff {r['max_rel_diff']:.1e}")
    return rows


if __name__ == '__main__':
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s')
    logging.getLogger('vssm').setLevel(logging.INFO)
    main()
