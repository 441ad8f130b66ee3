"""Train / evaluate an mmdet or mmseg config through mmengine's Runner (what tools/train.py and
tools/test.py call for a ``.py`` config).

    from vssm.mm.runner import run_mm_train, run_mm_test
    run_mm_train('configs/mmdet/mask-rcnn_vmamba-tiny_fpn_1x_coco.py', work_dir='work_dirs/mrcnn_t')
    metrics = run_mm_test('configs/mmdet/mask-rcnn_vmamba-tiny_fpn_1x_coco.py', 'work_dirs/mrcnn_t/epoch_12.pth')

Distributed: start with ``torchrun --nproc_per_node=N ...`` and pass ``launcher='pytorch'``; mmengine reads
the rank / world size from the environment torchrun sets.
"""
import os
import os.path as osp
from typing import Any, Dict, Optional, Union

from mmengine.config import Config
from mmengine.runner import Runner

from .checkpoint import patch_mmengine_checkpoint_loader

__all__ = ['load_mm_config', 'run_mm_train', 'run_mm_test']

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')


def load_mm_config(config_path: str, work_dir: Optional[str] = None, cfg_options: Optional[Dict[str, Any]] = None,
                   launcher: str = 'none') -> Config:
    """Read an mm config, apply ``cfg_options`` (dotted keys, as ``--cfg-options``), set launcher and work_dir.

    work_dir defaults to the config's own ``work_dir`` or ``./work_dirs/<config name>``, as mmdet's tools do.
    """
    if not str(config_path).endswith('.py'):
        raise ValueError(f'expected an mmdet / mmseg config file (.py), got {config_path!r}')
    if not osp.isfile(config_path):
        raise FileNotFoundError(f'config not found: {config_path}')
    if launcher not in LAUNCHERS:
        raise ValueError(f'launcher must be one of {LAUNCHERS}, got {launcher!r}')
    import vssm.mm  # noqa: F401  registers the backbones and patches checkpoint loading before the build
    patch_mmengine_checkpoint_loader()
    cfg = Config.fromfile(config_path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.launcher = launcher
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    return cfg


def _prepare_cpu_distributed(cfg: Config) -> None:
    """mmengine 0.10.7's 'pytorch' launcher assumes CUDA (torch.cuda.set_device, DDP device_ids). Without a
    GPU: join the torchrun group with gloo first (mmengine then uses the existing group) and wrap the model
    in DDP without device ids."""
    import torch
    import torch.distributed as dist
    if cfg.launcher != 'pytorch' or torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group('gloo', init_method='env://')
    if cfg.get('model_wrapper_cfg') is None:
        cfg.model_wrapper_cfg = dict(type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
                                     find_unused_parameters=cfg.get('find_unused_parameters', False))


def run_mm_train(config_path: str, work_dir: Optional[str] = None, cfg_options: Optional[Dict[str, Any]] = None,
                 launcher: str = 'none', resume: Union[bool, str] = False, amp: bool = False) -> Runner:
    """Train an mm config with mmengine's Runner; checkpoints and logs go to work_dir. Returns the runner.

    Args:
        config_path: mmdet / mmseg config (.py), e.g. one of configs/mmdet or configs/mmseg.
        work_dir: output folder (default: the config's, else ./work_dirs/<config name>).
        cfg_options: overrides with dotted keys, e.g. {'train_dataloader.batch_size': 4}.
        launcher: 'none' for one process, 'pytorch' under torchrun, 'slurm', 'mpi'.
        resume: True resumes from the latest checkpoint in work_dir; a path resumes from that file.
        amp: mixed precision (AmpOptimWrapper).
    """
    cfg = load_mm_config(config_path, work_dir, cfg_options, launcher)
    if amp:
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')
    if resume:
        cfg.resume = True
        cfg.load_from = resume if isinstance(resume, str) else None
    _prepare_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


def run_mm_test(config_path: str, checkpoint: str, work_dir: Optional[str] = None,
                cfg_options: Optional[Dict[str, Any]] = None, launcher: str = 'none') -> Dict[str, float]:
    """Evaluate a checkpoint on the config's test set with its test_evaluator; returns the metrics dict
    (e.g. 'coco/bbox_mAP', 'coco/segm_mAP' for mmdet, 'mIoU' for mmseg)."""
    if not osp.isfile(checkpoint) and not str(checkpoint).startswith(('http://', 'https://')):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    cfg = load_mm_config(config_path, work_dir, cfg_options, launcher)
    cfg.load_from = checkpoint
    cfg.resume = False
    os.makedirs(cfg.work_dir, exist_ok=True)
    _prepare_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg)
    return runner.test()
