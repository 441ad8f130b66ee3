"""vssm.mm backbones: output maps (shapes, channels, strides), freezing, BN eval, registry, bad arguments.

Backbones are shrunk through their constructor (1 block per stage, 16 channels) to keep this fast on CPU.
"""
import math

import pytest
import torch

pytest.importorskip('mmdet', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')
pytest.importorskip('mmseg', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')

import vssm.mm  # noqa: E402
from mmengine.registry import MODELS as ROOT_MODELS  # noqa: E402
from vssm.mm.testing import tiny_backbone_overrides  # noqa: E402

HIERARCHICAL = ('VMamba', 'EfficientVMamba', 'LocalVMamba', 'GroupMamba', 'MambaVision', 'SpatialMamba')
PLAIN = ('Vim', 'LocalVim')


def _build(name, **kw):
    cfg = dict(type=f'vssm.{name}', **kw)
    return ROOT_MODELS.build({**cfg, **tiny_backbone_overrides(cfg), **kw})


def _down(n: int, times: int) -> int:
    for _ in range(times):  # each 3x3 stride-2 conv (padding 1) or 2x2 merge rounds up
        n = math.ceil(n / 2)
    return n


def _expected_hw(name, hw, level):
    if name in HIERARCHICAL:  # stem /4, then one stride-2 step per stage
        return _down(hw[0], level + 2), _down(hw[1], level + 2)
    # plain: 16x16 patch grid (LocalVim pads up to whole patches, Vim drops the remainder), then x4 x2 x1 /2
    grid = [math.ceil(n / 16) if name == 'LocalVim' else n // 16 for n in hw]
    return tuple(g * 4 // 2 ** level if level < 3 else math.ceil(g / 2) for g in grid)


@pytest.mark.parametrize('name', HIERARCHICAL + PLAIN)
@pytest.mark.parametrize('hw', [(512, 512), (200, 304)], ids=['512x512', '800x1216_div4'])
def test_output_maps_at_strides_4_to_32(name, hw):
    m = _build(name).eval()
    assert m.strides == (4, 8, 16, 32)
    assert m.channels == ((16, 32, 64, 128) if name in HIERARCHICAL else (8, 16, 32, 32))
    with torch.no_grad():
        feats = m(torch.randn(1, 3, *hw))
    assert isinstance(feats, tuple) and len(feats) == 4
    for i, (f, c) in enumerate(zip(feats, m.channels)):
        assert f.shape == (1, c, *_expected_hw(name, hw, i)), (i, f.shape)
        assert f.is_contiguous() and torch.isfinite(f).all()
    # per-output LayerNorm over channels: every position is normalised (weight 1, bias 0 at init)
    mean, var = feats[1].mean(1), feats[1].var(1, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-4, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-2, rtol=0)


def test_out_indices_subset_negative_and_no_out_norm():
    m = _build('VMamba', out_indices=(1, -1))
    assert m.out_indices == (1, 3) and m.channels == (32, 128)
    assert hasattr(m, 'outnorm1') and hasattr(m, 'outnorm3') and not hasattr(m, 'outnorm0')
    feats = m(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(32, 8, 8), (128, 2, 2)]
    raw = _build('VMamba', out_norm=False)
    assert not any(k.startswith('outnorm') for k, _ in raw.named_parameters())


def test_out_indices_up_to_2_prunes_last_stage():
    m = _build('VMamba', out_indices=(0, 1, 2))
    assert len(m.body.model.stages) == 3
    assert len(m(torch.randn(1, 3, 64, 64))) == 3


def test_frozen_stages():
    m = _build('VMamba', frozen_stages=2)
    m.train()
    model = m.body.model
    for mod in (model.stem, model.stages[0], model.stages[1], m.outnorm0, m.outnorm1):
        assert not mod.training
        assert all(not p.requires_grad for p in mod.parameters())
    for mod in (model.stages[2], model.stages[3], m.outnorm2):
        assert mod.training
        assert all(p.requires_grad for p in mod.parameters())
    with pytest.raises(ValueError, match='frozen_stages'):
        _build('VMamba', frozen_stages=5)


def test_plain_pyramid_taps_and_freezing():
    m = _build('Vim', depth=4, out_indices=(0, 1, 2, 3))
    assert m.block_indices == (0, 1, 2, 3) and m.tap_for_scale == [0, 1, 2, 3]
    vitdet = _build('Vim', depth=4)
    assert vitdet.block_indices == (3,) and vitdet.tap_for_scale == [0, 0, 0, 0]
    with pytest.raises(ValueError, match='one per scale'):
        _build('Vim', depth=4, out_indices=(1, 3))
    f = _build('Vim', depth=4, frozen_stages=2).train()
    model = f.body.model
    assert not model.pos_embed.requires_grad and not model.cls_token.requires_grad
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert not any(p.requires_grad for blk in model.blocks[:2] for p in blk.parameters())
    assert all(p.requires_grad for blk in model.blocks[2:] for p in blk.parameters())
    assert not model.blocks[0].training and model.blocks[2].training


def test_norm_eval_keeps_batchnorm_statistics():
    m = _build('EfficientVMamba', norm_eval=True)
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    assert bns, 'EfficientVMamba is expected to hold BatchNorm layers'
    m.train()
    assert all(not bn.training for bn in bns)
    before = [bn.running_mean.clone() for bn in bns]
    m(torch.randn(2, 3, 64, 64))
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
    m2 = _build('EfficientVMamba', norm_eval=False).train()
    assert all(mod.training for mod in m2.modules() if isinstance(mod, torch.nn.BatchNorm2d))


def test_gradient_checkpointing_same_output():
    torch.manual_seed(0)
    a = _build('VMamba', drop_path_rate=0.)
    b = _build('VMamba', drop_path_rate=0., with_cp=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 64, 64)
    fa, fb = a.train()(x), b.train()(x)
    for u, v in zip(fa, fb):
        torch.testing.assert_close(u, v)
    sum(f.sum() for f in fb).backward()
    assert all(p.grad is not None for p in b.parameters())


@pytest.mark.parametrize('name', HIERARCHICAL + PLAIN)
def test_registered_for_mmdet_and_mmseg_scopes(name):
    from mmdet.registry import MODELS as DET
    from mmengine.registry import DefaultScope
    from mmseg.registry import MODELS as SEG
    for scope, registry in (('mmdet', DET), ('mmseg', SEG)):
        cfg = dict(type=f'vssm.{name}')
        with DefaultScope.overwrite_default_scope(scope):
            m = registry.build({**cfg, **tiny_backbone_overrides(cfg)})
        assert type(m).__name__ == f'{name}Backbone'


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match='efficient_vmamba_tiny'):
        _build('VMamba', arch='efficient_vmamba_tiny')  # another family's model
    with pytest.raises(ValueError, match='local_vim_tiny'):
        _build('LocalVMamba', arch='local_vim_tiny')  # same module, the other (plain) model
    with pytest.raises(ValueError, match='unknown timm model'):
        _build('VMamba', arch='vmamba_huge')
    with pytest.raises(TypeError):
        _build('VMamba', no_such_arg=1)  # the timm constructor rejects unknown names
    with pytest.raises(ValueError, match='not both'):
        _build('VMamba', pretrained='a.pth', init_cfg=dict(type='Pretrained', checkpoint='a.pth'))


def test_mobilemamba_maps_at_strides_16_to_64_and_bn_eval():
    """MobileMamba's three stages (it starts at stride 16), frozen stem + stage 0, BatchNorm statistics kept."""
    m = _build('MobileMamba', out_indices=(0, 1, 2), frozen_stages=1, norm_eval=True)
    assert m.strides == (16, 32, 64) and m.channels == (16, 24, 32)
    m.train()
    model = m.body.model
    assert not model.stages[0].training and model.stages[1].training
    assert all(not p.requires_grad for p in [*model.stem.parameters(), *model.stages[0].parameters()])
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    before = [bn.running_mean.clone() for bn in bns]
    feats = m(torch.randn(2, 3, 200, 304))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 13, 19), (24, 7, 10), (32, 4, 5)]
    assert all(torch.equal(b, bn.running_mean) for b, bn in zip(before, bns))
