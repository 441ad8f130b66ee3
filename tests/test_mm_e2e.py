"""End to end through mmengine's Runner on tiny data sets written by the test: tools/train.py on a COCO-format
set (boxes + masks) then tools/test.py (COCO box / mask AP), and run_mm_train / run_mm_test on an ADE20K-style
segmentation set (mIoU). The shipped configs are used with the model shrunk and the data swapped."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip('mmdet', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')
pytest.importorskip('mmseg', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')

import cv2  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(depths=(1, 1, 1, 1), dims=16)
LOADER = dict(num_workers=0, persistent_workers=False)


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'vssm_tools_{name}', REPO / 'tools' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write_coco(root: Path, n: int = 4, size: int = 64):
    """n images with a red and a green rectangle each; boxes, polygon masks, 2 categories."""
    rng = np.random.default_rng(0)
    (root / 'imgs').mkdir(parents=True)
    images, anns = [], []
    for i in range(n):
        img = rng.integers(0, 40, (size, size, 3), dtype=np.uint8)
        for cat, color in ((1, (40, 40, 220)), (2, (40, 220, 40))):
            x, y = (int(v) for v in rng.integers(0, size // 2, 2))
            w, h = (int(v) for v in rng.integers(12, size // 2, 2))
            img[y:y + h, x:x + w] = color
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=cat, bbox=[x, y, w, h], area=w * h,
                             iscrowd=0, segmentation=[[x, y, x + w, y, x + w, y + h, x, y + h]]))
        cv2.imwrite(str(root / 'imgs' / f'{i}.jpg'), img)
        images.append(dict(id=i + 1, file_name=f'{i}.jpg', width=size, height=size))
    cats = [dict(id=1, name='red'), dict(id=2, name='green')]
    (root / 'ann.json').write_text(json.dumps(dict(images=images, annotations=anns, categories=cats)))


def _write_ade(root: Path, n: int = 4, size: int = 64):
    """ADE20K layout: images/{training,validation}/*.jpg, annotations/.../*.png (0 = ignore, 1..150 classes)."""
    rng = np.random.default_rng(0)
    for split in ('training', 'validation'):
        (root / 'images' / split).mkdir(parents=True)
        (root / 'annotations' / split).mkdir(parents=True)
        for i in range(n):
            label = np.zeros((size, size), np.uint8)
            label[:, : size // 2] = 1 + i % 3
            label[size // 2:, size // 2:] = 4
            img = (rng.integers(0, 30, (size, size, 3)) + label[..., None] * 40).astype(np.uint8)
            cv2.imwrite(str(root / 'images' / split / f'ADE_{i}.jpg'), img)
            cv2.imwrite(str(root / 'annotations' / split / f'ADE_{i}.png'), label)


def _shrunk(cfg, scope):
    from vssm.mm.testing import shrink_model_cfg
    with DefaultScope.overwrite_default_scope(scope):
        return shrink_model_cfg(cfg.model, **TINY)


def _tiny_coco_config(tmp_path: Path) -> Path:
    """The shipped Mask R-CNN VMamba-T config, shrunk, on a generated 4-image COCO set, 1 epoch."""
    data = tmp_path / 'coco'
    _write_coco(data)
    cfg = Config.fromfile(str(REPO / 'configs/mmdet/mask-rcnn_vmamba-tiny_fpn_1x_coco.py'))
    cfg.model = _shrunk(cfg, 'mmdet')
    cfg.model.roi_head.bbox_head.num_classes = 2
    cfg.model.roi_head.mask_head.num_classes = 2
    cfg.model.test_cfg.rcnn.score_thr = 0.0  # an untrained model still reports detections to score
    dataset = dict(type='CocoDataset', data_root=str(data) + '/', ann_file='ann.json',
                   data_prefix=dict(img='imgs/'), metainfo=dict(classes=('red', 'green')))
    resize = dict(type='Resize', scale=(64, 64), keep_ratio=True)
    cfg.train_dataloader = dict(
        batch_size=2, **LOADER, sampler=dict(type='DefaultSampler', shuffle=True),
        dataset=dict(dataset, filter_cfg=dict(filter_empty_gt=True, min_size=8), pipeline=[
            dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True), resize,
            dict(type='PackDetInputs')]))
    cfg.val_dataloader = cfg.test_dataloader = dict(
        batch_size=2, **LOADER, drop_last=False, sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(dataset, test_mode=True, pipeline=[
            dict(type='LoadImageFromFile'), resize, dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
            dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))]))
    cfg.val_evaluator = cfg.test_evaluator = dict(type='CocoMetric', ann_file=str(data / 'ann.json'),
                                                  metric=['bbox', 'segm'])
    cfg.train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=1, val_interval=1)  # 2 iterations
    cfg.default_hooks.logger.interval = 1
    cfg_file = tmp_path / 'mask_rcnn_tiny_coco.py'
    cfg.dump(str(cfg_file))
    return cfg_file


def test_mask_rcnn_train_py_then_test_py_on_tiny_coco(tmp_path):
    cfg_file = _tiny_coco_config(tmp_path)
    work = tmp_path / 'work'
    _tool('train').main([str(cfg_file), '--work-dir', str(work)])
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    saved = torch.load(ckpt, weights_only=False)
    assert any(k.startswith('backbone.body.model.stages.3.') for k in saved['state_dict'])

    out = tmp_path / 'metrics.json'
    metrics = _tool('test').main([str(cfg_file), str(ckpt), '--work-dir', str(tmp_path / 'test'),
                                  '--out', str(out)])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP'):
        assert 0.0 <= metrics[key] <= 1.0, metrics
    assert json.loads(out.read_text())['coco/bbox_mAP'] == metrics['coco/bbox_mAP']


def test_upernet_run_mm_train_and_test_on_tiny_ade(tmp_path):
    from vssm.mm.runner import run_mm_test, run_mm_train
    data = tmp_path / 'ade'
    _write_ade(data)
    cfg = Config.fromfile(str(REPO / 'configs/mmseg/upernet_vmamba-tiny_8xb2-160k_ade20k-512x512.py'))
    cfg.model.data_preprocessor.size = (64, 64)
    cfg.model = _shrunk(cfg, 'mmseg')
    resize = dict(type='Resize', scale=(64, 64), keep_ratio=True)
    load_ann = dict(type='LoadAnnotations', reduce_zero_label=True)
    dataset = dict(type='ADE20KDataset', data_root=str(data))
    cfg.train_dataloader = dict(
        batch_size=2, **LOADER, sampler=dict(type='InfiniteSampler', shuffle=True),
        dataset=dict(dataset, data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
                     pipeline=[dict(type='LoadImageFromFile'), load_ann, resize, dict(type='PackSegInputs')]))
    cfg.val_dataloader = cfg.test_dataloader = dict(
        batch_size=1, **LOADER, sampler=dict(type='DefaultSampler', shuffle=False),
        dataset=dict(dataset, data_prefix=dict(img_path='images/validation',
                                               seg_map_path='annotations/validation'),
                     pipeline=[dict(type='LoadImageFromFile'), resize, load_ann, dict(type='PackSegInputs')]))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=2, val_interval=2)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False, interval=2)
    cfg.default_hooks.logger.interval = 1
    cfg_file = tmp_path / 'upernet_tiny_ade.py'
    cfg.dump(str(cfg_file))

    work = tmp_path / 'work'
    runner = run_mm_train(str(cfg_file), work_dir=str(work))
    assert runner.iter == 2
    ckpt = work / 'iter_2.pth'
    assert ckpt.is_file()
    metrics = run_mm_test(str(cfg_file), str(ckpt), work_dir=str(tmp_path / 'test'))
    assert 0.0 <= metrics['mIoU'] <= 100.0, metrics


def test_torchrun_two_processes_on_cpu(tmp_path):
    """tools/train.py under torchrun: mmengine's 'pytorch' launcher, gloo and DDP without device ids on CPU."""
    cfg_file = _tiny_coco_config(tmp_path)
    work = tmp_path / 'ddp'
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', '--master_port', str(_free_port()),
         str(REPO / 'tools' / 'train.py'), str(cfg_file), '--work-dir', str(work)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / 'epoch_1.pth').is_file()
    log = next(work.glob('*/*.log')).read_text()
    assert 'Distributed training: True' in log and 'GPU number: 2' in log  # mmengine's name for world size
    assert 'Epoch(train) [1][1/1]' in log  # 4 images / (2 processes x 2 per batch)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]
