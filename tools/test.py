#!/usr/bin/env python
"""Evaluate a detection / segmentation checkpoint: an mmdet or mmseg config (.py) and a checkpoint.

    python tools/test.py configs/mmdet/mask-rcnn_vmamba-tiny_fpn_1x_coco.py work_dirs/x/epoch_12.pth
    torchrun --nproc_per_node=8 tools/test.py CONFIG CHECKPOINT --launcher pytorch

Prints the test evaluator's metrics (COCO box / mask AP, mIoU, ...) and writes logs under --work-dir.
Needs the OpenMMLab stack (scripts/install_mm.sh).
"""
import argparse
import json


def parse_args(argv=None):
    from mmengine.config import DictAction
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config', help='mmdet / mmseg config file (.py)')
    p.add_argument('checkpoint', help='checkpoint file (path or URL)')
    p.add_argument('--work-dir', help='where logs go (default ./work_dirs/<config name>)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                   help='override config entries, e.g. test_dataloader.batch_size=2')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
                   help="'pytorch' under torchrun")
    p.add_argument('--out', help='also write the metrics to this JSON file')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from vssm.mm.runner import run_mm_test
    metrics = run_mm_test(args.config, args.checkpoint, work_dir=args.work_dir, cfg_options=args.cfg_options,
                          launcher=args.launcher)
    metrics = {k: float(v) if isinstance(v, (int, float)) else v for k, v in metrics.items()}
    print(json.dumps(metrics, indent=2, default=str))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(metrics, f, indent=2, default=str)
    return metrics


if __name__ == '__main__':
    main()
