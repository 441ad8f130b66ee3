#!/usr/bin/env python3
"""Train, fine-tune or evaluate an image classifier with timm's machinery (every vssm model is registered).

    python tools/train.py                        # embedded default: a small VMamba on scikit-learn's digits, CPU
    python tools/train.py -c configs/imagenet/vmamba_tiny_s1l8.yaml --digits      # a recipe on the digits set
    python tools/train.py -c configs/imagenet/vmamba_tiny_s1l8.yaml --data-dir /data/imagenet
    torchrun --nproc_per_node 8 tools/train.py -c configs/imagenet/vmamba_tiny_s1l8.yaml --data-dir /data/imagenet
    python tools/train.py --data-dir DIR --model vmamba_tiny_s1l8 --initial-checkpoint W.pth --num-classes 37
    python tools/train.py --data-dir DIR --model vmamba_tiny_s1l8 --initial-checkpoint W.pth --evaluate
    python tools/train.py configs/mmdet/CONFIG.py --work-dir work_dirs/x    # OpenMMLab config: vssm.mm.runner

Argument names are timm's train.py names, so timm-style YAML files work with -c. Precedence: command line >
YAML > the embedded-default preset (only when no data is given) > timm's defaults.
Resume is exact: the checkpoint holds model, optimizer, EMA, AMP scaler and epoch; the LR schedule is a
function of epoch / update count (timm's schedulers), and every RNG is re-seeded from (seed, epoch, rank) at
the start of each epoch, so a resumed run repeats the uninterrupted one step for step.
"""
import argparse
import json
import logging
import math
import os
import sys
import time
from collections import OrderedDict
from contextlib import nullcontext
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import yaml

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, _ROOT)

import vssm  # noqa: F401,E402  (registers the models)
from vssm.serialization import is_safetensors, release_file_globals  # noqa: E402
from timm.data import Mixup, create_dataset, create_loader, resolve_data_config  # noqa: E402
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # noqa: E402
from timm.models import create_model, load_checkpoint, model_parameters, resume_checkpoint, safe_model_name  # noqa: E402
from timm.optim import create_optimizer_v2, optimizer_kwargs  # noqa: E402
from timm.scheduler import create_scheduler_v2, scheduler_kwargs  # noqa: E402
from timm.utils import (CheckpointSaver, ModelEmaV3, NativeScaler, ParseKwargs, accuracy,  # noqa: E402
                        dispatch_clip_grad, get_outdir, random_seed, update_summary)

_logger = logging.getLogger('train')

# The embedded default: no data argument trains this on scikit-learn's digits (32x32 RGB, 10 classes).
DIGITS_PRESET = dict(
    model='vmamba_tiny_s1l8',
    model_kwargs=dict(depths=(1, 1, 2, 1), dims=32),
    img_size=32,
    batch_size=64,
    epochs=12,
    opt='adamw',
    lr=2e-3,
    weight_decay=0.05,
    sched='cosine',
    warmup_epochs=1,
    warmup_lr=1e-4,
    min_lr=1e-5,
    smoothing=0.1,
    drop_path=0.0,
    clip_grad=5.0,
    workers=0,
    num_threads=1,  # a tiny model: more threads only spin (and collapse when the cores are shared)
    checkpoint_hist=1,
    log_interval=10,
)


# ----------------------------------------------------------------------------------------------- arguments

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description='vssm image classification training (timm argument names)')
    g = p.add_argument_group('Dataset (none given: the embedded digits set)')
    g.add_argument('data', nargs='?', metavar='DIR', default=None,
                   help='dataset path (deprecated positional, use --data-dir); a .py file runs an OpenMMLab config')
    g.add_argument('--data-dir', metavar='DIR', default=None, help='dataset root (ImageNet-style train/ and val/ folders)')
    g.add_argument('--dataset', '-d', metavar='NAME', default='', help='timm dataset type (default: folder)')
    g.add_argument('--train-split', default='train')
    g.add_argument('--val-split', default='validation')
    g.add_argument('--train-num-samples', type=int, default=None, help='use only this many training images')
    g.add_argument('--val-num-samples', type=int, default=None, help='use only this many validation images')
    g.add_argument('--class-map', default='', type=str, metavar='FILENAME')
    g.add_argument('--dataset-download', action='store_true', default=False)
    g.add_argument('--digits', action='store_true', default=False,
                   help='train on the embedded digits set: the default with no data and no -c; with -c a YAML '
                        'recipe runs on the digits set only when asked for with this flag')

    g = p.add_argument_group('Model')
    g.add_argument('--model', default='vmamba_tiny_s1l8', type=str, metavar='MODEL')
    g.add_argument('--pretrained', action='store_true', default=False)
    g.add_argument('--pretrained-path', default=None, type=str, help='file for --pretrained (official or ours)')
    g.add_argument('--initial-checkpoint', default='', type=str, metavar='PATH',
                   help='start from these weights (official or ours); another --num-classes gets a new head')
    g.add_argument('--resume', default='', type=str, metavar='PATH', help='resume training exactly from a checkpoint')
    g.add_argument('--no-resume-opt', action='store_true', default=False)
    g.add_argument('--num-classes', type=int, default=None, metavar='N')
    g.add_argument('--gp', default=None, type=str, metavar='POOL')
    g.add_argument('--img-size', type=int, default=None, metavar='N')
    g.add_argument('--in-chans', type=int, default=None, metavar='N')
    g.add_argument('--input-size', default=None, nargs=3, type=int, metavar='N N N')
    g.add_argument('--crop-pct', default=None, type=float, metavar='N')
    g.add_argument('--mean', type=float, nargs='+', default=None, metavar='MEAN')
    g.add_argument('--std', type=float, nargs='+', default=None, metavar='STD')
    g.add_argument('--interpolation', default='', type=str, metavar='NAME')
    g.add_argument('-b', '--batch-size', type=int, default=128, metavar='N', help='per-process batch size')
    g.add_argument('-vb', '--validation-batch-size', type=int, default=None, metavar='N')
    g.add_argument('--channels-last', action='store_true', default=False)
    g.add_argument('--grad-accum-steps', type=int, default=1, metavar='N')
    g.add_argument('--grad-checkpointing', action='store_true', default=False)
    g.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                   help='extra model constructor args, e.g. depths="(1,1,2,1)" dims=32')
    g.add_argument('--torchcompile', '--torch-compile', nargs='?', type=str, default=None, const='inductor',
                   help='torch.compile the model with this backend (default inductor)')
    g.add_argument('--torchcompile-mode', type=str, default=None)

    g = p.add_argument_group('Device, precision, distributed')
    g.add_argument('--device', default=None, type=str, help="'cpu', 'cuda' (default: cuda when available)")
    g.add_argument('--amp', action='store_true', default=False, help='mixed precision (autocast)')
    g.add_argument('--amp-dtype', default='float16', type=str, help='float16 (with loss scaling) or bfloat16')
    g.add_argument('--num-threads', type=int, default=None, help='torch CPU threads per process')
    g.add_argument('--dist-backend', default=None, type=str, help='default: nccl on GPU, gloo on CPU')
    g.add_argument('--fsdp', action='store_true', default=False,
                   help='shard parameters, gradients and optimizer state (FSDP) instead of DDP')
    g.add_argument('--local_rank', '--local-rank', default=0, type=int, help=argparse.SUPPRESS)

    g = p.add_argument_group('Optimizer')
    g.add_argument('--opt', default='sgd', type=str, metavar='OPTIMIZER')
    g.add_argument('--opt-eps', default=None, type=float)
    g.add_argument('--opt-betas', default=None, type=float, nargs='+')
    g.add_argument('--momentum', type=float, default=0.9)
    g.add_argument('--weight-decay', type=float, default=2e-5)
    g.add_argument('--clip-grad', type=float, default=None, metavar='NORM')
    g.add_argument('--clip-mode', type=str, default='norm', help='norm, value or agc')
    g.add_argument('--layer-decay', type=float, default=None)
    g.add_argument('--opt-kwargs', nargs='*', default={}, action=ParseKwargs)

    g = p.add_argument_group('Learning rate schedule')
    g.add_argument('--sched', type=str, default='cosine')
    g.add_argument('--sched-on-updates', action='store_true', default=False)
    g.add_argument('--lr', type=float, default=None, help='default: --lr-base scaled by the global batch')
    g.add_argument('--lr-base', type=float, default=0.1)
    g.add_argument('--lr-base-size', type=int, default=256)
    g.add_argument('--lr-base-scale', type=str, default='', help="'linear' or 'sqrt' (default by optimizer)")
    g.add_argument('--lr-noise', type=float, nargs='+', default=None)
    g.add_argument('--lr-noise-pct', type=float, default=0.67)
    g.add_argument('--lr-noise-std', type=float, default=1.0)
    g.add_argument('--lr-cycle-mul', type=float, default=1.0)
    g.add_argument('--lr-cycle-decay', type=float, default=0.5)
    g.add_argument('--lr-cycle-limit', type=int, default=1)
    g.add_argument('--lr-k-decay', type=float, default=1.0)
    g.add_argument('--warmup-lr', type=float, default=1e-5)
    g.add_argument('--min-lr', type=float, default=0)
    g.add_argument('--epochs', type=int, default=300)
    g.add_argument('--start-epoch', default=None, type=int)
    g.add_argument('--decay-milestones', default=[90, 180, 270], type=int, nargs='+')
    g.add_argument('--decay-epochs', type=float, default=90)
    g.add_argument('--warmup-epochs', type=int, default=5)
    g.add_argument('--warmup-prefix', action='store_true', default=False)
    g.add_argument('--cooldown-epochs', type=int, default=0)
    g.add_argument('--patience-epochs', type=int, default=10)
    g.add_argument('--decay-rate', '--dr', type=float, default=0.1)

    g = p.add_argument_group('Augmentation and regularisation')
    g.add_argument('--no-aug', action='store_true', default=False)
    g.add_argument('--train-crop-mode', type=str, default=None)
    g.add_argument('--scale', type=float, nargs='+', default=[0.08, 1.0])
    g.add_argument('--ratio', type=float, nargs='+', default=[3. / 4., 4. / 3.])
    g.add_argument('--hflip', type=float, default=0.5)
    g.add_argument('--vflip', type=float, default=0.)
    g.add_argument('--color-jitter', type=float, default=0.4)
    g.add_argument('--aa', type=str, default=None, help='AutoAugment / RandAugment policy, e.g. rand-m9-mstd0.5-inc1')
    g.add_argument('--aug-repeats', type=float, default=0)
    g.add_argument('--bce-loss', action='store_true', default=False)
    g.add_argument('--bce-target-thresh', type=float, default=None)
    g.add_argument('--reprob', type=float, default=0.)
    g.add_argument('--remode', type=str, default='pixel')
    g.add_argument('--recount', type=int, default=1)
    g.add_argument('--resplit', action='store_true', default=False)
    g.add_argument('--mixup', type=float, default=0.0)
    g.add_argument('--cutmix', type=float, default=0.0)
    g.add_argument('--cutmix-minmax', type=float, nargs='+', default=None)
    g.add_argument('--mixup-prob', type=float, default=1.0)
    g.add_argument('--mixup-switch-prob', type=float, default=0.5)
    g.add_argument('--mixup-mode', type=str, default='batch')
    g.add_argument('--mixup-off-epoch', default=0, type=int)
    g.add_argument('--smoothing', type=float, default=0.1)
    g.add_argument('--train-interpolation', type=str, default='random')
    g.add_argument('--drop', type=float, default=0.0)
    g.add_argument('--drop-path', type=float, default=None)
    g.add_argument('--drop-block', type=float, default=None)

    g = p.add_argument_group('Knowledge distillation (timm.task; timm train.py names)')
    g.add_argument('--kd-model-name', default=None, type=str, metavar='MODEL',
                   help='teacher model (timm name, e.g. regnety_160.deit_in1k); enables distillation')
    g.add_argument('--kd-model-checkpoint', default=None, type=str, metavar='PATH',
                   help="teacher weights file (default: the teacher's pretrained weights)")
    g.add_argument('--kd-distill-type', default='logit', type=str, choices=['logit', 'feature', 'token'],
                   help="'token': models with a distillation head (DeiT, GroupMamba)")
    g.add_argument('--kd-loss-type', default='kl', type=str, help="logit distillation loss (only 'kl')")
    g.add_argument('--kd-token-distill-type', default='soft', type=str, choices=['soft', 'hard'],
                   help="token distillation: 'soft' KL with temperature, 'hard' CE on the teacher's argmax")
    g.add_argument('--kd-temperature', default=4.0, type=float)
    g.add_argument('--kd-student-feature-dim', default=None, type=int)
    g.add_argument('--kd-teacher-feature-dim', default=None, type=int)
    g.add_argument('--distill-loss-weight', default=None, type=float,
                   help='with --task-loss-weight: independent weights; alone: task weight 1')
    g.add_argument('--task-loss-weight', default=None, type=float,
                   help='alone: loss = w * task + (1 - w) * distillation (DeiT hard distillation: 0.5)')

    g = p.add_argument_group('Model EMA')
    g.add_argument('--model-ema', action='store_true', default=False)
    g.add_argument('--model-ema-force-cpu', action='store_true', default=False)
    g.add_argument('--model-ema-decay', type=float, default=0.9998)
    g.add_argument('--model-ema-warmup', action='store_true', default=False)

    g = p.add_argument_group('Run')
    g.add_argument('--evaluate', action='store_true', default=False, help='evaluate only (no training)')
    g.add_argument('--seed', type=int, default=42)
    g.add_argument('--worker-seeding', type=str, default='all')
    g.add_argument('--log-interval', type=int, default=50)
    g.add_argument('--checkpoint-hist', type=int, default=10)
    g.add_argument('-j', '--workers', type=int, default=4)
    g.add_argument('--pin-mem', action='store_true', default=False)
    g.add_argument('--no-prefetcher', action='store_true', default=False)
    g.add_argument('--output', default='', type=str, metavar='PATH', help='output root (default ./output/train)')
    g.add_argument('--experiment', default='', type=str, metavar='NAME', help='run folder name under --output')
    g.add_argument('--eval-metric', default='top1', type=str)
    g.add_argument('--no-progress', action='store_true', default=False, help='no tqdm progress bars')
    return p


def parse_args(argv: List[str]):
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help='YAML of argument defaults')
    known, remaining = config_parser.parse_known_args(argv)
    parser = build_parser()
    parser.add_argument('-c', '--config', default='', type=str, metavar='FILE', help='YAML file of argument defaults')
    cfg = {}
    if known.config:
        if not os.path.isfile(known.config):
            parser.error(f'config file not found: {known.config}')
        with open(known.config) as f:
            cfg = yaml.safe_load(f) or {}
        if not isinstance(cfg, dict):
            parser.error(f'{known.config}: expected a mapping of argument names to values')
        cfg = {k.replace('-', '_'): v for k, v in cfg.items()}
        valid = {a.dest for a in parser._actions}
        unknown = sorted(set(cfg) - valid)
        if unknown:
            parser.error(f'{known.config}: unknown argument(s) {unknown}; names are train.py long options '
                         f'with _ for - (see --help)')
        parser.set_defaults(**cfg)
    probe = parser.parse_args(remaining)
    no_data = probe.data is None and probe.data_dir is None and not probe.dataset
    if no_data and known.config and not probe.digits:
        parser.error(f'{known.config} is a training recipe, but no data was given: pass --data-dir DIR (train/ and '
                     f'validation/ image folders) or --dataset NAME; to run this recipe on the embedded digits set, '
                     f'add --digits')
    if probe.digits and not no_data:
        parser.error('--digits trains on the embedded digits set: drop --data-dir / --dataset, or drop --digits')
    if no_data:
        # embedded default: the digits preset fills what neither the YAML nor the command line sets
        parser.set_defaults(**DIGITS_PRESET)
        parser.set_defaults(**cfg)
    args = parser.parse_args(remaining)
    args.config = known.config
    args.data_dir = args.data_dir or args.data
    if args.resume and is_safetensors(args.resume):
        parser.error(f'--resume {args.resume}: a .safetensors file holds weights only, while resuming needs the '
                     f'optimizer, scheduler and epoch of a training checkpoint; start from these weights with '
                     f'--initial-checkpoint instead')
    args.prefetcher = not args.no_prefetcher
    return args


# ---------------------------------------------------------------------------------------- OpenMMLab branch

def _mm_config_path(argv: List[str]) -> Optional[str]:
    """The OpenMMLab config (.py) when it is the first positional argument or the --config value."""
    for i, a in enumerate(argv):
        if a in ('-c', '--config') and i + 1 < len(argv) and argv[i + 1].endswith('.py'):
            return argv[i + 1]
        if a.startswith('--config=') and a.endswith('.py'):
            return a.split('=', 1)[1]
    if argv and not argv[0].startswith('-') and argv[0].endswith('.py'):
        return argv[0]
    return None


def run_mm(argv: List[str], config_path: str):
    from vssm.mm.runner import run_mm_train  # OpenMMLab is imported only on this path
    p = argparse.ArgumentParser(description='train an OpenMMLab (mmdet / mmseg) config with a vssm backbone')
    p.add_argument('config', nargs='?')
    p.add_argument('-c', '--config', dest='config_opt', default=None)
    p.add_argument('--work-dir', default=None, help='output folder (default work_dirs/<config name>)')
    p.add_argument('--cfg-options', nargs='+', default={}, action=ParseKwargs,
                   help='override config entries, e.g. train_dataloader.batch_size=2')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                   default='pytorch' if int(os.environ.get('WORLD_SIZE', 1)) > 1 else 'none')
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    return run_mm_train(config_path, work_dir=a.work_dir, cfg_options=a.cfg_options or None, launcher=a.launcher)


# ------------------------------------------------------------------------------------------ distributed

def init_distributed(args) -> Dict:
    world = int(os.environ.get('WORLD_SIZE', 1))
    if args.device is None:
        args.device = 'cuda' if torch.cuda.is_available() else 'cpu'
    device = torch.device(args.device)
    if world > 1:
        local_rank = int(os.environ.get('LOCAL_RANK', 0))
        if device.type == 'cuda':
            device = torch.device('cuda', local_rank)
            torch.cuda.set_device(device)
        backend = args.dist_backend or ('nccl' if device.type == 'cuda' else 'gloo')
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, init_method='env://')
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        rank, local_rank = 0, 0
    return dict(distributed=world > 1, world_size=world, rank=rank, local_rank=local_rank, device=device,
                primary=rank == 0)


def all_reduce_sum(t: torch.Tensor, ctx: Dict) -> torch.Tensor:
    if ctx['distributed']:
        # gloo and nccl both reduce float64 on CPU / GPU; keep the sum on the process device
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


# ----------------------------------------------------------------------------------------------- data

def build_data(args, model, ctx):
    """(train loader, eval loader, train sampler or None) for the digits set or an image-folder data set."""
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    if args.data_dir is None and not args.dataset:
        from vssm.data import DigitsDataset
        size = args.img_size or 32
        train = DigitsDataset('train', img_size=size, augment=not args.no_aug, num_samples=args.train_num_samples)
        val = DigitsDataset('val', img_size=size, num_samples=args.val_num_samples)
        # DistributedSampler even for one process: the order is a function of (seed, epoch) only, so the
        # global batches of a 1-process run and an N-process run (batch / N each) hold the same images
        sampler = DistributedSampler(train, num_replicas=ctx['world_size'], rank=ctx['rank'], shuffle=True,
                                     seed=args.seed, drop_last=True)
        loader_train = DataLoader(train, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                                  drop_last=True, pin_memory=args.pin_mem)
        val_part = Subset(val, range(ctx['rank'], len(val), ctx['world_size']))  # disjoint shards, exact sums
        loader_eval = DataLoader(val_part, batch_size=args.validation_batch_size or args.batch_size,
                                 num_workers=args.workers, shuffle=False)
        if len(loader_train) == 0:
            raise ValueError(f'batch size {args.batch_size} x {ctx["world_size"]} processes is larger than the '
                             f'{len(train)} training images')
        return loader_train, loader_eval, sampler

    data_config = resolve_data_config(vars(args), model=model, verbose=ctx['primary'])
    common = dict(class_map=args.class_map, download=args.dataset_download, batch_size=args.batch_size)
    ds_train = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=True,
                              num_samples=args.train_num_samples, seed=args.seed, **common)
    ds_eval = create_dataset(args.dataset, root=args.data_dir, split=args.val_split, is_training=False,
                             num_samples=args.val_num_samples, **common)
    train_interpolation = data_config['interpolation'] if args.no_aug or not args.train_interpolation \
        else args.train_interpolation
    loader_train = create_loader(
        ds_train, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, re_split=args.resplit,
        train_crop_mode=args.train_crop_mode, scale=args.scale, ratio=args.ratio, hflip=args.hflip,
        vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa, num_aug_repeats=args.aug_repeats,
        interpolation=train_interpolation, mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, distributed=ctx['distributed'], pin_memory=args.pin_mem, device=ctx['device'],
        use_prefetcher=args.prefetcher, persistent_workers=False, worker_seeding=args.worker_seeding,
    )
    loader_eval = create_loader(
        ds_eval, input_size=data_config['input_size'], batch_size=args.validation_batch_size or args.batch_size,
        is_training=False, interpolation=data_config['interpolation'], mean=data_config['mean'],
        std=data_config['std'], num_workers=args.workers, distributed=ctx['distributed'],
        crop_pct=data_config['crop_pct'], pin_memory=args.pin_mem, device=ctx['device'],
        use_prefetcher=args.prefetcher, persistent_workers=False,
    )
    return loader_train, loader_eval, getattr(loader_train, 'sampler', None)


def infer_num_classes(args) -> int:
    if args.num_classes is not None:
        return args.num_classes
    if args.data_dir is None and not args.dataset:
        return 10
    ds = create_dataset(args.dataset, root=args.data_dir, split=args.train_split, is_training=True,
                        class_map=args.class_map)
    reader = getattr(ds, 'reader', None)
    n = len(getattr(reader, 'class_to_idx', {}) or {})
    if n == 0:
        raise ValueError('cannot infer the number of classes from the data set; pass --num-classes')
    return n


# ----------------------------------------------------------------------------------------------- model

def build_model(args, num_classes: int, ctx):
    in_chans = args.input_size[0] if args.input_size is not None else args.in_chans
    overlay = dict(file=args.pretrained_path) if args.pretrained_path else None
    model = create_model(
        args.model, pretrained=args.pretrained, pretrained_cfg_overlay=overlay, num_classes=num_classes,
        in_chans=in_chans, drop_rate=args.drop, drop_path_rate=args.drop_path, drop_block_rate=args.drop_block,
        global_pool=args.gp, **args.model_kwargs,
    )
    if args.initial_checkpoint:
        from vssm.tools_common.checkpoints import load_weights
        report = load_weights(model, args.initial_checkpoint)
        if ctx['primary']:
            _logger.info(f'initial weights from {args.initial_checkpoint}:\n{report}')
    if args.grad_checkpointing:
        model.set_grad_checkpointing(True)
    model.to(ctx['device'])
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def wrap_parallel(model, args, ctx):
    if not ctx['distributed']:
        return model
    if args.fsdp:
        from torch.distributed.fsdp import fully_shard
        # shard each stage / block (whatever the family calls its repeated units), then the root
        for name in ('stages', 'layers', 'blocks'):
            units = getattr(model, name, None)
            if isinstance(units, (nn.Sequential, nn.ModuleList)):
                for unit in units:
                    fully_shard(unit)
                break
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    ids = [ctx['device'].index] if ctx['device'].type == 'cuda' else None
    return DistributedDataParallel(model, device_ids=ids)


def unwrap(model):
    model = getattr(model, '_orig_mod', model)  # torch.compile
    return model.module if hasattr(model, 'module') and not isinstance(model, ModelEmaV3) else model


# ---------------------------------------------------------------------------------------- train / eval

class StepLog:
    """Per-update training loss and learning rate as CSV (the source of the loss curve)."""

    def __init__(self, path: Optional[str], append: bool):
        self.path = path
        if path and not (append and os.path.exists(path)):
            with open(path, 'w') as f:
                f.write('epoch,update,epoch_float,loss,lr\n')

    def write(self, epoch: int, update: int, epoch_float: float, loss: float, lr: float):
        if self.path:
            with open(self.path, 'a') as f:
                f.write(f'{epoch},{update},{epoch_float:.5f},{loss:.6f},{lr:.8g}\n')


def build_task(model, train_loss, args, ctx):
    """timm's training task: plain classification, or distillation from --kd-model-name (teacher frozen, eval)."""
    from timm.task import ClassificationTask, FeatureDistillationTask, LogitDistillationTask, TokenDistillationTask
    common = dict(criterion=train_loss, device=ctx['device'], verbose=ctx['primary'])
    if args.kd_model_name is None:
        return ClassificationTask(model, **common)
    teacher = dict(teacher_model=args.kd_model_name, teacher_pretrained_path=args.kd_model_checkpoint,
                   distill_loss_weight=args.distill_loss_weight, task_loss_weight=args.task_loss_weight, **common)
    if args.kd_distill_type == 'token':
        return TokenDistillationTask(model, distill_type=args.kd_token_distill_type, temperature=args.kd_temperature,
                                     **teacher)
    if args.kd_distill_type == 'feature':
        return FeatureDistillationTask(model, student_feature_dim=args.kd_student_feature_dim,
                                       teacher_feature_dim=args.kd_teacher_feature_dim, **teacher)
    return LogitDistillationTask(model, loss_type=args.kd_loss_type, temperature=args.kd_temperature, **teacher)


def train_one_epoch(epoch, model, loader, optimizer, task, args, ctx, lr_scheduler, model_ema, mixup,
                    amp_autocast, loss_scaler, step_log):
    from tqdm import tqdm
    if mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
        mixup.mixup_enabled = False
    accum = args.grad_accum_steps
    n_batches = len(loader)
    updates_per_epoch = (n_batches + accum - 1) // accum
    num_updates = epoch * updates_per_epoch
    last_accum = n_batches % accum or accum
    model.train()
    optimizer.zero_grad()
    loss_sum = torch.zeros(2, dtype=torch.float64, device=ctx['device'])
    bar = tqdm(loader, desc=f'train {epoch}', total=n_batches, leave=False, dynamic_ncols=True,
               disable=args.no_progress or not ctx['primary'])
    for batch_idx, (x, y) in enumerate(bar):
        need_update = batch_idx == n_batches - 1 or (batch_idx + 1) % accum == 0
        steps_in_update = last_accum if batch_idx >= n_batches - last_accum else accum
        x, y = x.to(ctx['device'], non_blocking=True), y.to(ctx['device'], non_blocking=True)
        if mixup is not None:
            x, y = mixup(x, y)
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sync = nullcontext() if need_update or not hasattr(model, 'no_sync') else model.no_sync()
        with sync:
            with amp_autocast():
                loss = task(x, y)['loss']
            scaled = loss / steps_in_update
            if loss_scaler is not None:
                loss_scaler(scaled, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode,
                            parameters=model_parameters(model, exclude_head='agc' in args.clip_mode),
                            need_update=need_update)
            else:
                scaled.backward()
                if need_update:
                    if args.clip_grad is not None:
                        dispatch_clip_grad(model_parameters(model, exclude_head='agc' in args.clip_mode),
                                           value=args.clip_grad, mode=args.clip_mode)
                    optimizer.step()
        loss_sum += torch.stack([loss.detach().double() * x.shape[0],
                                 torch.tensor(x.shape[0], dtype=torch.float64, device=loss.device)])
        if not need_update:
            continue
        optimizer.zero_grad()
        num_updates += 1
        if model_ema is not None:
            model_ema.update(model, step=num_updates)
        lr = optimizer.param_groups[0]['lr']
        if ctx['primary']:
            step_log.write(epoch, num_updates, epoch + (batch_idx + 1) / n_batches, loss.item(), lr)
            if (batch_idx // accum) % args.log_interval == 0:
                bar.set_postfix(loss=f'{loss.item():.4f}', lr=f'{lr:.3g}')
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
    bar.close()
    all_reduce_sum(loss_sum, ctx)
    return OrderedDict(loss=(loss_sum[0] / loss_sum[1].clamp(min=1)).item())


@torch.no_grad()
def validate(model, loader, args, ctx, amp_autocast, desc='eval') -> Dict[str, float]:
    from tqdm import tqdm
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=ctx['device'])  # loss * n, correct@1, correct@5, n
    ce = nn.CrossEntropyLoss()
    for x, y in tqdm(loader, desc=desc, leave=False, dynamic_ncols=True,
                     disable=args.no_progress or not ctx['primary']):
        x, y = x.to(ctx['device']), y.to(ctx['device'])
        if args.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with amp_autocast():
            out = model(x)
        if isinstance(out, (tuple, list)):
            out = out[0]
        out = out.float()
        n = x.shape[0]
        top1, top5 = accuracy(out, y, topk=(1, min(5, out.shape[-1])))
        sums += torch.tensor([ce(out, y).item() * n, top1.item() * n / 100, top5.item() * n / 100, n],
                             dtype=torch.float64, device=ctx['device'])
    all_reduce_sum(sums, ctx)
    n = max(sums[3].item(), 1)
    return OrderedDict(loss=sums[0].item() / n, top1=100 * sums[1].item() / n, top5=100 * sums[2].item() / n)


# ------------------------------------------------------------------------------------------------ main

def _resolve_lr(args, ctx):
    if args.lr is not None:
        return
    global_batch = args.batch_size * ctx['world_size'] * args.grad_accum_steps
    ratio = global_batch / args.lr_base_size
    scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
    args.lr = args.lr_base * (math.sqrt(ratio) if scale == 'sqrt' else ratio)
    if ctx['primary']:
        _logger.info(f'lr {args.lr:.3g} = lr_base {args.lr_base} x {scale}({global_batch} / {args.lr_base_size})')


def _amp(args, ctx):
    if not args.amp:
        return nullcontext, None
    dtype = {'float16': torch.float16, 'bfloat16': torch.bfloat16}.get(args.amp_dtype)
    if dtype is None:
        raise ValueError(f"--amp-dtype must be 'float16' or 'bfloat16', got {args.amp_dtype!r}")
    dev = ctx['device'].type

    def autocast():
        return torch.autocast(device_type=dev, dtype=dtype)
    scaler = NativeScaler(device=dev) if dtype == torch.float16 else None
    return autocast, scaler


def _setup_logging(primary: bool):
    root = logging.getLogger()
    if not any(getattr(h, '_vssm', False) for h in root.handlers):
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter('%(message)s'))
        h._vssm = True
        root.addHandler(h)
    root.setLevel(logging.INFO if primary else logging.WARNING)


def main(argv: Optional[List[str]] = None) -> Dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    mm_config = _mm_config_path(argv)
    if mm_config:
        return run_mm(argv, mm_config)
    args = parse_args(argv)
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    ctx = init_distributed(args)
    _setup_logging(ctx['primary'])
    random_seed(args.seed, 0)  # identical initial weights on every rank (FSDP / DDP also sync them)
    if args.fsdp and args.model_ema:
        raise ValueError('--model-ema with --fsdp is not supported; drop one of them')

    num_classes = infer_num_classes(args)
    model = build_model(args, num_classes, ctx)
    if ctx['primary']:
        n_params = sum(p.numel() for p in model.parameters())
        src = 'embedded digits set (scikit-learn)' if args.data_dir is None and not args.dataset else args.data_dir
        _logger.info(f'model {args.model} {args.model_kwargs or ""}: {n_params / 1e6:.2f}M params, '
                     f'{num_classes} classes; data: {src}; device {ctx["device"]} x {ctx["world_size"]}')
    loader_train, loader_eval, train_sampler = build_data(args, model, ctx)
    amp_autocast, loss_scaler = _amp(args, ctx)

    model_ema = None
    if args.model_ema:
        model_ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup,
                               device='cpu' if args.model_ema_force_cpu else None)

    fsdp = args.fsdp and ctx['distributed']
    if fsdp:  # FSDP replaces the parameters: shard before the optimizer is built on them
        model = wrap_parallel(model, args, ctx)
    _resolve_lr(args, ctx)
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **args.opt_kwargs)

    start_epoch = 0
    if args.resume and fsdp:
        start_epoch = _fsdp_resume(model, optimizer, args.resume, load_optimizer=not args.no_resume_opt)
    elif args.resume:
        with release_file_globals():  # weights_only=True, the pickled objects of release files mapped
            resumed = resume_checkpoint(model, args.resume, optimizer=None if args.no_resume_opt else optimizer,
                                        loss_scaler=None if args.no_resume_opt else loss_scaler,
                                        log_info=ctx['primary'])
            if model_ema is not None:
                load_checkpoint(model_ema.module, args.resume, use_ema=True)
        start_epoch = resumed or 0
    if args.start_epoch is not None:
        start_epoch = args.start_epoch

    if not fsdp:
        model = wrap_parallel(model, args, ctx)
    if args.torchcompile:
        # static shapes: one graph per input shape (train batch, last eval batch) instead of symbolic sizes
        model = torch.compile(model, backend=args.torchcompile, mode=args.torchcompile_mode, dynamic=False)

    if args.evaluate:
        metrics = validate(model, loader_eval, args, ctx, amp_autocast)
        if model_ema is not None:
            metrics.update({f'ema_{k}': v for k, v in validate(model_ema, loader_eval, args, ctx, amp_autocast,
                                                               'eval ema').items()})
        if ctx['primary']:
            _logger.info('evaluation: ' + ', '.join(f'{k} {v:.4f}' for k, v in metrics.items()))
            print(json.dumps(dict(model=args.model, **metrics)))
        _cleanup(ctx)
        return dict(eval=dict(metrics))

    updates_per_epoch = (len(loader_train) + args.grad_accum_steps - 1) // args.grad_accum_steps
    lr_scheduler, num_epochs = create_scheduler_v2(
        optimizer, **scheduler_kwargs(args, decreasing_metric=args.eval_metric == 'loss'),
        updates_per_epoch=updates_per_epoch)
    if lr_scheduler is not None and start_epoch > 0:
        if args.sched_on_updates:
            lr_scheduler.step_update(start_epoch * updates_per_epoch)
        else:
            lr_scheduler.step(start_epoch)

    mixup = None
    if args.mixup > 0 or args.cutmix > 0. or args.cutmix_minmax is not None:
        mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                      prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                      label_smoothing=args.smoothing, num_classes=num_classes)
    if args.bce_loss:
        train_loss = BinaryCrossEntropy(target_threshold=args.bce_target_thresh,
                                        smoothing=0. if mixup is not None else args.smoothing)
    elif mixup is not None:
        train_loss = SoftTargetCrossEntropy()
    elif args.smoothing:
        train_loss = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        train_loss = nn.CrossEntropyLoss()
    train_loss = train_loss.to(ctx['device'])
    task = build_task(model, train_loss, args, ctx)

    output_dir, saver, step_log = None, None, StepLog(None, False)
    if ctx['primary']:
        size = args.img_size or (args.input_size or unwrap(model).pretrained_cfg['input_size'])[-1]
        exp = args.experiment or '-'.join([time.strftime('%Y%m%d-%H%M%S'), safe_model_name(args.model), str(size)])
        output_dir = get_outdir(args.output or './output/train', exp)
        with open(os.path.join(output_dir, 'args.yaml'), 'w') as f:
            yaml.safe_dump({k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                            if isinstance(v, (int, float, str, bool, list, tuple, dict, type(None)))}, f)
        saver = CheckpointSaver(model=model, optimizer=optimizer, args=args, model_ema=model_ema,
                                amp_scaler=loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir,
                                decreasing=args.eval_metric == 'loss', max_history=args.checkpoint_hist)
        step_log = StepLog(os.path.join(output_dir, 'steps.csv'), append=start_epoch > 0)
        if args.resume and os.path.samefile(os.path.dirname(os.path.abspath(args.resume)), output_dir):
            # resuming in place: keep managing (and pruning) the checkpoints written before the stop
            from timm.utils.checkpoint_saver import load_checkpoint_metadata
            meta = load_checkpoint_metadata(args.resume)
            if isinstance(meta.get('saver'), dict):
                saver.load_state_dict(meta['saver'])
    if fsdp:
        saver = _FsdpSaver(saver, model, optimizer, ctx)

    t0 = time.time()
    best_metric, best_epoch, eval_metrics = None, None, {}
    for epoch in range(start_epoch, num_epochs):
        # every RNG is a function of (seed, epoch, rank): resumed runs repeat uninterrupted ones exactly
        random_seed(args.seed + 1000 * (epoch + 1), ctx['rank'])
        if hasattr(train_sampler, 'set_epoch'):
            train_sampler.set_epoch(epoch)
        train_metrics = train_one_epoch(epoch, model, loader_train, optimizer, task, args, ctx, lr_scheduler,
                                        model_ema, mixup, amp_autocast, loss_scaler, step_log)
        eval_metrics = validate(model, loader_eval, args, ctx, amp_autocast)
        if model_ema is not None:
            ema_metrics = validate(model_ema, loader_eval, args, ctx, amp_autocast, 'eval ema')
            eval_metrics.update({f'ema_{k}': v for k, v in ema_metrics.items()})
        lr = optimizer.param_groups[0]['lr']
        if lr_scheduler is not None:
            lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
        if saver is not None:
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=eval_metrics[args.eval_metric])
        if ctx['primary']:
            _logger.info(f'epoch {epoch}: train loss {train_metrics["loss"]:.4f} | eval loss {eval_metrics["loss"]:.4f}'
                         f' top1 {eval_metrics["top1"]:.2f} top5 {eval_metrics["top5"]:.2f} | lr {lr:.3g} | '
                         f'{time.time() - t0:.0f}s')
            summary = os.path.join(output_dir, 'summary.csv')
            update_summary(epoch, train_metrics, eval_metrics, filename=summary, lr=lr)
            from vssm.tools_common.plots import plot_training_curves
            plot_training_curves(summary, os.path.join(output_dir, 'curves.png'),
                                 steps_csv=os.path.join(output_dir, 'steps.csv'), title=f'{args.model}')
    wall = time.time() - t0
    result = dict(eval=dict(eval_metrics), best_metric=best_metric, best_epoch=best_epoch, output_dir=output_dir,
                  train_seconds=wall)
    if ctx['primary'] and output_dir:
        with open(os.path.join(output_dir, 'results.json'), 'w') as f:
            json.dump(result, f, indent=2)
        if eval_metrics:
            _logger.info(f'done in {wall:.0f}s: validation top-1 {eval_metrics["top1"]:.2f}% '
                         f'(best {best_metric} at epoch {best_epoch}); checkpoints in {output_dir}')
    _cleanup(ctx)
    return result


class _FsdpSaver:
    """With FSDP every rank must take part in gathering full state dicts; rank 0 then writes them."""

    def __init__(self, saver, model, optimizer, ctx):
        self.saver, self.model, self.optimizer, self.ctx = saver, model, optimizer, ctx

    def save_checkpoint(self, epoch, metric=None):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict
        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer, options=opts)
        if self.saver is None:
            return None, None
        self.saver.model, self.saver.optimizer = _Frozen(model_sd), _Frozen(optim_sd)
        self.saver.unwrap_fn = lambda m: m
        return self.saver.save_checkpoint(epoch, metric=metric)


def _fsdp_resume(model, optimizer, path: str, load_optimizer: bool = True) -> int:
    """Full (unsharded) checkpoint -> the sharded model and optimizer on every rank; returns the next epoch."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict
    from vssm.serialization import load_checkpoint_file
    ckpt = load_checkpoint_file(path, map_location='cpu')
    if load_optimizer:
        # entries the LR scheduler added to the saved param groups (initial_lr): the flattened load needs them
        for group, saved in zip(optimizer.param_groups, ckpt['optimizer']['param_groups']):
            for k, v in saved.items():
                group.setdefault(k, v)
    set_state_dict(model, optimizer, model_state_dict=ckpt['state_dict'],
                   optim_state_dict=ckpt['optimizer'] if load_optimizer else {},
                   options=StateDictOptions(full_state_dict=True))
    return ckpt.get('epoch', -1) + 1


class _Frozen:
    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd


def _cleanup(ctx):
    if ctx['distributed'] and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == '__main__':
    main()
