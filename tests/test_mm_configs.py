"""Every shipped config in configs/mmdet and configs/mmseg: loads with mmengine's Config, declares the published
recipe, matches its backbone's channels at full size, and (shrunk in the test) builds the whole detector /
segmentor through the registries, trains a step with a gradient on every backbone parameter, and predicts."""
from pathlib import Path

import pytest
import torch

pytest.importorskip('mmdet', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')
pytest.importorskip('mmseg', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')

from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import PixelData  # noqa: E402
from mmengine.utils import import_modules_from_strings  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DET = sorted((REPO / 'configs' / 'mmdet').glob('*.py'))
SEG = sorted((REPO / 'configs' / 'mmseg').glob('*.py'))


def test_configs_present():
    names = {p.name for p in DET + SEG}
    for family in ('efficient-vmamba', 'local-vmamba'):
        for recipe in ('mask-rcnn_{}-tiny_fpn_1x_coco', 'mask-rcnn_{}-tiny_fpn_ms-crop-3x_coco',
                       'retinanet_{}-tiny_fpn_1x_coco', 'upernet_{}-tiny_8xb2-160k_ade20k-512x512'):
            assert recipe.format(family) + '.py' in names
    for family in ('vim', 'local-vim'):
        assert f'upernet_{family}-tiny_8xb2-160k_ade20k-512x512.py' in names
    for size in ('tiny', 'small', 'base'):
        assert f'mask-rcnn_vmamba-{size}_fpn_1x_coco.py' in names
        assert f'mask-rcnn_vmamba-{size}_fpn_ms-crop-3x_coco.py' in names
        assert f'retinanet_vmamba-{size}_fpn_1x_coco.py' in names
        assert f'upernet_vmamba-{size}_8xb2-160k_ade20k-512x512.py' in names


def _load(path: Path) -> Config:
    cfg = Config.fromfile(str(path))
    assert 'vssm.mm' in cfg.custom_imports['imports']
    import_modules_from_strings(**cfg.custom_imports)
    return cfg


def _registry(scope):
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS


def _det_batch():
    from mmdet.testing import demo_mm_inputs
    return demo_mm_inputs(2, [[3, 64, 64], [3, 64, 96]], num_items=[2, 3], with_mask=True, num_classes=80)


def _seg_batch():
    from mmseg.structures import SegDataSample
    samples = []
    for _ in range(2):
        s = SegDataSample(gt_sem_seg=PixelData(data=torch.randint(0, 150, (1, 64, 64))))
        s.set_metainfo(dict(img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64), padding_size=[0, 0, 0, 0]))
        samples.append(s)
    return dict(inputs=[torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8) for _ in range(2)],
                data_samples=samples)


def _check_recipe(cfg, path):
    opt = cfg.optim_wrapper.optimizer
    assert opt.type == 'AdamW'
    if cfg.default_scope == 'mmdet':
        assert (opt.lr, opt.weight_decay) == (1e-4, 0.05)
        epochs = 36 if '3x' in path.name else 12
        assert cfg.train_cfg.max_epochs == epochs
    else:
        assert (opt.lr, opt.weight_decay) == (6e-5, 0.01)
        assert cfg.train_cfg.max_iters == 160000 and cfg.crop_size == (512, 512)
    assert cfg.optim_wrapper.paramwise_cfg.norm_decay_mult == 0.0
    assert cfg.model.backbone.init_cfg.type == 'Pretrained' and cfg.model.backbone.init_cfg.checkpoint


def _check_full_size_channels(cfg, registry):
    """The config's neck / head widths match the real (full-size) backbone, built on `meta`."""
    bb = dict(cfg.model.backbone, init_cfg=None, device='meta')
    channels = list(registry.build(bb).channels)
    if cfg.default_scope == 'mmdet':
        assert list(cfg.model.neck.in_channels) == channels
    else:
        assert list(cfg.model.decode_head.in_channels) == channels
        assert cfg.model.auxiliary_head.in_channels == channels[cfg.model.auxiliary_head.in_index]


@pytest.mark.parametrize('path', DET + SEG, ids=lambda p: p.stem)
def test_config_builds_trains_and_predicts(path):
    from vssm.mm.testing import shrink_model_cfg
    cfg = _load(path)
    _check_recipe(cfg, path)
    registry = _registry(cfg.default_scope)
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        _check_full_size_channels(cfg, registry)
        model_cfg = cfg.model
        if cfg.default_scope == 'mmseg':
            model_cfg.data_preprocessor.size = (64, 64)
        model = registry.build(shrink_model_cfg(model_cfg))
        model.init_weights()
        batch = _det_batch() if cfg.default_scope == 'mmdet' else _seg_batch()

        # one optimiser step with the config's own optimiser (param-wise: no decay on norms)
        optim = build_optim_wrapper(model, cfg.optim_wrapper)
        decay = {id(p): g['weight_decay'] for g in optim.optimizer.param_groups for p in g['params']}
        body = model.backbone.body.model
        first_conv = next(m for m in body.modules() if isinstance(m, torch.nn.Conv2d))
        assert decay[id(first_conv.weight)] == cfg.optim_wrapper.optimizer.weight_decay
        assert decay[id(getattr(model.backbone, f'outnorm{model.backbone.out_indices[-1]}').weight)] == 0.0
        for name in ('pos_embed', 'cls_token'):
            if getattr(body, name, None) is not None:
                assert decay[id(getattr(body, name))] == 0.0, name

        model.train()
        data = model.data_preprocessor(batch, True)
        loss, _ = model.parse_losses(model(**data, mode='loss'))
        assert torch.isfinite(loss)
        optim.zero_grad()
        loss.backward()
        no_grad = [n for n, p in model.backbone.named_parameters() if p.grad is None]
        assert not no_grad, f'backbone parameters without a gradient: {no_grad}'
        optim.step()

        model.eval()
        with torch.no_grad():
            preds = model.test_step(batch)
        assert len(preds) == 2
        if cfg.default_scope == 'mmdet':
            assert 'bboxes' in preds[0].pred_instances
        else:
            assert preds[0].pred_sem_seg.data.shape[-2:] == (64, 64)


# VMamba paper (v3, tables 2 and 3): Mask R-CNN / UperNet parameter counts with the s1l8 / s2l15 backbones
PUBLISHED_PARAMS_M = {
    'mask-rcnn_vmamba-tiny_fpn_1x_coco': 50, 'mask-rcnn_vmamba-small_fpn_1x_coco': 70,
    'mask-rcnn_vmamba-base_fpn_1x_coco': 108, 'upernet_vmamba-tiny_8xb2-160k_ade20k-512x512': 62,
    'upernet_vmamba-small_8xb2-160k_ade20k-512x512': 82, 'upernet_vmamba-base_8xb2-160k_ade20k-512x512': 122,
    # Spatial-Mamba README (official repository)
    'mask-rcnn_spatial-mamba-tiny_fpn_1x_coco': 46, 'upernet_spatial-mamba-tiny_8xb2-160k_ade20k-512x512': 57,
}


@pytest.mark.parametrize('stem', list(PUBLISHED_PARAMS_M))
def test_full_size_parameter_count_matches_published(stem):
    path = next(p for p in DET + SEG if p.stem == stem)
    cfg = _load(path)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.device = 'meta'  # the backbone is the large part: no memory, no init
    with DefaultScope.overwrite_default_scope(cfg.default_scope):
        model = _registry(cfg.default_scope).build(cfg.model)
    assert round(sum(p.numel() for p in model.parameters()) / 1e6) == PUBLISHED_PARAMS_M[stem]
