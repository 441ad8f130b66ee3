#!/usr/bin/env python3
"""Export a vssm model to ONNX, a torch.export program (.pt2) or an AOTInductor package, and check it.

    # ONNX, weights from a checkpoint, checked in onnxruntime against eager PyTorch
    python tools/export.py --model vmamba_tiny_s1l8 --checkpoint vmamba_tiny_s1l8.pth --format onnx \
        --img-size 224 --output vmamba_tiny_s1l8.onnx --check
    # a detection backbone (features_only), non-square input, a fixed batch of 2
    python tools/export.py --model efficient_vmamba_tiny --features-only --format pt2 --img-size 512 640 \
        --static-batch --batch-size 2 --output evm_backbone.pt2 --check
    # AOTInductor (compiles C++; minutes on a CPU)
    python tools/export.py --model vim_tiny --format aoti --img-size 224 --output vim_tiny_aoti.pt2 --check

The image size is fixed per export (the scan's index maps and loop lengths follow from it); the batch is
dynamic (1 to 4096, traced at --batch-size, default 2), as timm's ONNX exporter makes it, unless --static-batch
fixes it at --batch-size (default 1). --check prints the largest absolute and relative (over the largest
eager output) difference from eager PyTorch on random input. Any checkpoint that timm's
``pretrained_cfg_overlay=dict(file=...)`` loads works (official layouts included, see README).
"""
import argparse
import json
import logging
import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from timm.utils import ParseKwargs  # noqa: E402

from vssm.deploy import FORMATS, ExportConfigError, ExportRequest, export_and_check  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='export a vssm model to ONNX / torch.export (.pt2) / AOTInductor')
    p.add_argument('--model', '-m', required=True, help='a registered vssm model, e.g. vmamba_tiny_s1l8')
    p.add_argument('--checkpoint', default=None, help='weights file (anything pretrained_cfg_overlay=dict(file=) '
                                                      'loads); random init without it')
    p.add_argument('--format', required=True, choices=FORMATS)
    p.add_argument('--img-size', type=int, nargs='+', required=True, metavar=('H', 'W'),
                   help='input size, fixed per export: H (square) or H W')
    p.add_argument('--batch-size', '-b', type=int, default=None,
                   help='example batch (default 2); with --static-batch the only batch (default 1)')
    batch = p.add_mutually_exclusive_group()
    batch.add_argument('--static-batch', dest='dynamic_batch', action='store_false',
                       help='fix the batch at --batch-size (default: any batch from 1 to 4096 at run time)')
    batch.add_argument('--dynamic-batch', dest='dynamic_batch', action='store_true',
                       help='any batch at run time (the default; kept for existing scripts)')
    p.set_defaults(dynamic_batch=True)
    p.add_argument('--features-only', action='store_true', help='export the features_only backbone')
    p.add_argument('--reparameterize', action='store_true',
                   help="fuse for inference first (timm's reparameterize_model: Conv-BN folding, e.g. MobileMamba)")
    p.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra model constructor args, e.g. depths="(1,1,1,1)" dims=16 num_classes=10')
    p.add_argument('--output', '-o', required=True, help='file to write (.onnx, or .pt2 for pt2 and aoti)')
    p.add_argument('--check', action='store_true', help='run the artifact on random input against eager PyTorch')
    p.add_argument('--num-threads', type=int, default=None, help='onnxruntime intra-op threads for --check')
    p.add_argument('--json', action='store_true', help='print the result as one JSON line')
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    if len(args.img_size) not in (1, 2):
        raise ExportConfigError(f'--img-size takes H or H W, got {args.img_size}')
    img_size = tuple(args.img_size) * (2 if len(args.img_size) == 1 else 1)
    req = ExportRequest(model=args.model, format=args.format, img_size=img_size, output=args.output,
                        checkpoint=args.checkpoint, batch_size=args.batch_size, dynamic_batch=args.dynamic_batch,
                        features_only=args.features_only, model_kwargs=dict(args.model_kwargs),
                        reparameterize=args.reparameterize)
    result = export_and_check(req, check=args.check, num_threads=args.num_threads)
    print(f"{result['model']} -> {result['output']} ({result['format']}, {img_size[0]}x{img_size[1]}, "
          f"batch {'dynamic, example ' if req.dynamic_batch else ''}{req.batch_size}): "
          f"{result['size_mb']:.1f} MB in {result['export_s']:.0f} s")
    for c in result.get('checks', []):
        runner = {'onnx': 'onnxruntime', 'pt2': 'ExportedProgram', 'aoti': 'AOTInductor'}[args.format]
        print(f"check ({runner} vs eager PyTorch, batch {c['batch']}): max abs diff {c['max_abs']:.3e}, "
              f"max rel diff {c['max_rel']:.3e}")
    if args.json:
        print(json.dumps(result))
    return result


if __name__ == '__main__':
    logging.basicConfig(level=logging.WARNING, format='%(asctime)s %(message)s')
    logging.getLogger('vssm').setLevel(logging.INFO)  # our progress lines, not every exporter pass
    try:
        main()
    except ExportConfigError as e:
        sys.exit(f'error: {e}')
