"""Backbone initialisation from checkpoints: our classification checkpoints, official layouts, vssm detector
checkpoints; incomplete or mismatched files raise; mmengine's loader works on torch >= 2.6 checkpoints."""
import argparse
import copy
import re
from pathlib import Path

import pytest
import timm
import torch

pytest.importorskip('mmdet', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')

import vssm.mm  # noqa: E402
from mmengine.config import Config  # noqa: E402
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.registry import MODELS as ROOT_MODELS  # noqa: E402
from mmengine.runner.checkpoint import CheckpointLoader  # noqa: E402
from vssm.mm.testing import shrink_model_cfg  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = dict(depths=(1, 1, 1, 1), dims=16)


def _classifier(**kw):
    return timm.create_model('vmamba_tiny_s1l8', **{'num_classes': 10, **TINY, **kw})


def _save_like_train_py(model, path):
    """What tools/train.py (timm's CheckpointSaver) writes: weights plus Python objects (args)."""
    torch.save({'epoch': 3, 'arch': 'vmamba_tiny_s1l8', 'state_dict': model.state_dict(), 'optimizer': {},
                'version': 2, 'args': argparse.Namespace(lr=1e-3, model='vmamba_tiny_s1l8'), 'metric': 1.0}, path)


def _to_official_v2(sd):
    """Our VMamba keys -> the official v2 release layout (patch_embed / layers / classifier)."""
    out = {}
    for k, v in sd.items():
        k = re.sub(r'^stem\.', 'patch_embed.', k)
        m = re.match(r'^stages\.(\d+)\.downsample\.(.*)$', k)
        if m:
            k = f'layers.{int(m.group(1)) - 1}.downsample.{m.group(2)}'
        k = re.sub(r'^stages\.(\d+)\.blocks\.', r'layers.\1.blocks.', k)
        k = re.sub(r'^norm\.', 'classifier.norm.', k)
        k = re.sub(r'^head\.fc\.', 'classifier.head.', k)
        out[k] = v
    return out


def _detector(init_cfg):
    cfg = Config.fromfile(str(REPO / 'configs/mmdet/mask-rcnn_vmamba-tiny_fpn_1x_coco.py'))
    with DefaultScope.overwrite_default_scope('mmdet'):
        from mmdet.registry import MODELS
        model_cfg = shrink_model_cfg(cfg.model, **TINY)
        model_cfg['backbone']['init_cfg'] = init_cfg
        return MODELS.build(model_cfg)


def _assert_body_equals(backbone, sd):
    body = backbone.body.model.state_dict()
    assert body, 'empty backbone'
    for k, v in body.items():
        assert k in sd, f'{k} not initialised from the checkpoint'
        torch.testing.assert_close(v, sd[k], rtol=0, atol=0, msg=k)


def test_classification_checkpoint_initialises_detector_backbone(tmp_path):
    clf = _classifier()
    path = tmp_path / 'model_best.pth.tar'
    _save_like_train_py(clf, path)
    det = _detector(dict(type='Pretrained', checkpoint=str(path)))
    outnorm_before = det.backbone.outnorm0.weight.clone()
    det.init_weights()
    # no missing keys: every backbone weight equals the classifier's
    _assert_body_equals(det.backbone, clf.state_dict())
    assert set(det.backbone.body.model.state_dict()) <= set(clf.state_dict())
    torch.testing.assert_close(det.backbone.outnorm0.weight, outnorm_before)  # new layer, fresh init
    assert det.backbone.is_init


def test_plain_state_dict_and_pretrained_shorthand(tmp_path):
    clf = _classifier()
    path = tmp_path / 'plain.pth'
    torch.save(clf.state_dict(), path)
    bb = ROOT_MODELS.build(dict(type='vssm.VMamba', pretrained=str(path), **TINY))
    bb.init_weights()
    _assert_body_equals(bb, clf.state_dict())


def test_official_layout_checkpoint_loads_through_filter_fn(tmp_path):
    clf = _classifier(num_classes=1000)
    official = {'module.' + k: v for k, v in _to_official_v2(clf.state_dict()).items()}
    assert 'patch_embed.0.weight' in _to_official_v2(clf.state_dict())
    path = tmp_path / 'vssm1_tiny_ckpt_epoch_1.pth'
    torch.save({'model': official, 'model_ema': {}, 'epoch': 1}, path)
    bb = ROOT_MODELS.build(dict(type='vssm.VMamba', init_cfg=dict(type='Pretrained', checkpoint=str(path)), **TINY))
    bb.init_weights()
    _assert_body_equals(bb, clf.state_dict())


def test_incomplete_or_mismatched_checkpoints_raise(tmp_path):
    # one backbone weight missing
    sd = _classifier().state_dict()
    sd.pop('stages.2.blocks.0.op.A_logs')
    torch.save({'state_dict': sd}, tmp_path / 'missing.pth')
    # another depth
    torch.save({'state_dict': _classifier(depths=(1, 1, 2, 1)).state_dict()}, tmp_path / 'deeper.pth')
    # another width
    torch.save({'state_dict': _classifier(dims=24).state_dict()}, tmp_path / 'wider.pth')
    for name in ('missing', 'deeper', 'wider'):
        bb = ROOT_MODELS.build(dict(type='vssm.VMamba', pretrained=str(tmp_path / f'{name}.pth'), **TINY))
        with pytest.raises(ValueError, match='cannot load|does not initialise'):
            bb.init_weights()
    bb = ROOT_MODELS.build(dict(type='vssm.VMamba', pretrained=str(tmp_path / 'nope.pth'), **TINY))
    with pytest.raises(FileNotFoundError):
        bb.init_weights()


@pytest.mark.parametrize('prefix', [None, 'backbone.'])
def test_detector_checkpoint_initialises_backbone_with_out_norms(tmp_path, prefix):
    det = _detector(None)
    with torch.no_grad():
        det.backbone.outnorm2.weight.uniform_()
    path = tmp_path / 'epoch_1.pth'
    torch.save({'meta': {'epoch': 1}, 'state_dict': det.state_dict()}, path)
    init_cfg = dict(type='Pretrained', checkpoint=str(path), **({'prefix': prefix} if prefix else {}))
    bb = ROOT_MODELS.build(dict(type='vssm.VMamba', init_cfg=init_cfg, **TINY))
    bb.init_weights()
    for k, v in bb.state_dict().items():
        torch.testing.assert_close(v, det.state_dict()['backbone.' + k], rtol=0, atol=0, msg=k)


def test_mmengine_loader_reads_checkpoints_with_python_objects(tmp_path):
    from mmengine.logging import HistoryBuffer
    sd = {'w': torch.ones(2)}
    path = tmp_path / 'runner.pth'
    torch.save({'state_dict': copy.deepcopy(sd), 'message_hub': {'loss': HistoryBuffer([1.0, 2.0], [1, 1])}}, path)
    with pytest.raises(Exception):  # what torch >= 2.6 does by default
        torch.load(path)
    ckpt = CheckpointLoader.load_checkpoint(str(path), map_location='cpu')
    torch.testing.assert_close(ckpt['state_dict']['w'], sd['w'])
    assert isinstance(ckpt['message_hub']['loss'], HistoryBuffer)


@pytest.mark.parametrize('name', ['EfficientVMamba', 'LocalVMamba', 'GroupMamba', 'Vim', 'LocalVim', 'MambaVision',
                                  'SpatialMamba'])
def test_every_family_loads_its_classification_checkpoint(name, tmp_path):
    from vssm.mm.testing import tiny_backbone_overrides
    cfg = dict(type=f'vssm.{name}')
    cfg.update(tiny_backbone_overrides(cfg))
    probe = ROOT_MODELS.build(cfg)
    clf = timm.create_model(probe.arch, num_classes=7, **probe.model_kwargs)  # same architecture
    path = tmp_path / 'last.pth.tar'
    _save_like_train_py(clf, path)
    bb = ROOT_MODELS.build(dict(cfg, pretrained=str(path)))
    bb.init_weights()
    _assert_body_equals(bb, clf.state_dict())


def test_official_groupmamba_release_initialises_backbone(tmp_path):
    """The HF release layout (a bare EMA state dict of the official model) through the backbone's loader."""
    from vssm.models.groupmamba import checkpoint_to_official
    clf = timm.create_model('groupmamba_tiny', depths=(1, 1, 1, 1), dims=16)
    official = checkpoint_to_official(clf.state_dict(), clf)
    assert 'block3.0.attn.mamba_g3.A_logs' in official and 'dist_head.weight' in official
    path = tmp_path / 'groupmamba_tiny_ema.pth'
    torch.save(official, path)
    bb = ROOT_MODELS.build(dict(type='vssm.GroupMamba', depths=(1, 1, 1, 1), dims=16, pretrained=str(path)))
    bb.init_weights()
    _assert_body_equals(bb, clf.state_dict())


def test_official_mambavision_safetensors_initialises_backbone(tmp_path):
    """NVIDIA's HF safetensors layout (the transformers wrapper: official keys under `model.`), built from the
    official key list, through the backbone's loader."""
    import gzip
    from safetensors.torch import save_file
    lines = gzip.decompress((REPO / 'tests' / 'data' / 'mambavision_tiny.official_keys.txt.gz').read_bytes())
    official = {}
    for line in lines.decode().splitlines():
        key, shape = line.split('\t')
        shape = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
        counter = key.endswith('num_batches_tracked')
        official[key] = torch.zeros(shape, dtype=torch.long) if counter else torch.randn(shape)
    path = tmp_path / 'model.safetensors'
    save_file({'model.' + k: v for k, v in official.items()}, str(path))
    bb = ROOT_MODELS.build(dict(type='vssm.MambaVision', pretrained=str(path)))
    bb.init_weights()
    body = bb.body.model
    assert torch.equal(body.stages[2].blocks[0].mixer.dt_proj.bias, official['levels.2.blocks.0.mixer.dt_proj.bias'])
    assert torch.equal(body.stages[1].downsample.weight, official['levels.0.downsample.reduction.0.weight'])
    assert torch.equal(body.stem[1].conv.weight, official['patch_embed.conv_down.3.weight'])


def test_official_spatial_mamba_checkpoint_initialises_backbone(tmp_path):
    """The official main.py layout ({'model': official keys, ...}) through the backbone's loader."""
    from vssm.models.spatial_mamba import checkpoint_to_official
    clf = timm.create_model('spatial_mamba_tiny', depths=(1, 1, 1, 1), dims=16)
    official = checkpoint_to_official(clf.state_dict(), clf)
    assert 'layers.2.blocks.0.self_attention.state_fusion.kernel_3_1' in official
    path = tmp_path / 'spatialmamba_tiny.pth'
    torch.save({'model': official, 'epoch': 299}, path)
    bb = ROOT_MODELS.build(dict(type='vssm.SpatialMamba', depths=(1, 1, 1, 1), dims=16, pretrained=str(path)))
    bb.init_weights()
    _assert_body_equals(bb, clf.state_dict())


def _to_official_vim(sd):
    """Our Vim keys -> hustvl/Vim names (layers, norm_f, *_b backward-direction tensors)."""
    names = {'dirs.0.conv1d.': 'conv1d.', 'dirs.0.x_proj.': 'x_proj.', 'dirs.0.dt_proj.': 'dt_proj.',
             'dirs.0.A_log': 'A_log', 'dirs.0.D': 'D', 'dirs.1.conv1d.': 'conv1d_b.', 'dirs.1.x_proj.': 'x_proj_b.',
             'dirs.1.dt_proj.': 'dt_proj_b.', 'dirs.1.A_log': 'A_b_log', 'dirs.1.D': 'D_b'}
    out = {}
    for k, v in sd.items():
        k = re.sub(r'^blocks\.', 'layers.', k)
        k = re.sub(r'^norm\.', 'norm_f.', k)
        head, sep, rest = k.partition('.mixer.')
        for ours, theirs in names.items():
            if sep and rest.startswith(ours):
                k = head + sep + theirs + rest[len(ours):]
                break
        out[k] = v
    return out


def test_official_vim_checkpoint_loads_with_position_embedding_resampled(tmp_path):
    from vssm.models.vim import resample_pos_embed
    clf = timm.create_model('vim_tiny', embed_dim=32, depth=2)  # trained at 224: 14x14 table + class token
    official = _to_official_vim(clf.state_dict())
    assert 'layers.0.mixer.A_b_log' in official and 'norm_f.weight' in official
    path = tmp_path / 'vim_t_midclstok.pth'
    torch.save({'model': official}, path)
    bb = ROOT_MODELS.build(dict(type='vssm.Vim', embed_dim=32, depth=2, img_size=96, pretrained=str(path)))
    bb.init_weights()
    body = bb.body.model.state_dict()
    assert body['pos_embed'].shape == (1, 6 * 6 + 1, 32)
    torch.testing.assert_close(body['pos_embed'], resample_pos_embed(clf.pos_embed.detach(), bb.body.model))
    torch.testing.assert_close(body['cls_token'], clf.cls_token.detach())
    _assert_body_equals(bb, {**clf.state_dict(), 'pos_embed': body['pos_embed']})
    # and it runs on another input size (the table is resampled again on the fly)
    assert [f.shape[-2:] for f in bb(torch.randn(1, 3, 64, 128))][2] == (4, 8)


def test_detector_checkpoint_with_other_out_indices_keeps_fresh_out_norms(tmp_path):
    det = _detector(None)  # out_indices (0, 1, 2, 3)
    path = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': det.state_dict()}, path)
    bb = ROOT_MODELS.build(dict(type='vssm.VMamba', out_indices=(1, 2, 3), pretrained=str(path), **TINY))
    fresh = bb.outnorm1.weight.clone()
    bb.init_weights()  # the body loads; the out norms of another layout are left as initialised (warning)
    _assert_body_equals(bb, {k[len('backbone.body.model.'):]: v for k, v in det.state_dict().items()
                             if k.startswith('backbone.body.model.')})
    torch.testing.assert_close(bb.outnorm1.weight, fresh)


def test_official_release_file_with_yacs_config_initialises_backbone_under_weights_only(tmp_path):
    """The VMamba release format (yacs config, optimizer, scheduler pickled) loads with weights_only=True;
    a file that pickles any other class is refused (never unpickled in full)."""
    from test_release_files import _vmamba_files, _Unknown
    _, kw, path, expected = _vmamba_files(tmp_path)
    bb = ROOT_MODELS.build(dict(type='vssm.VMamba', pretrained=str(path), **kw))
    bb.init_weights()
    _assert_body_equals(bb, expected)
    torch.save({'state_dict': expected, 'extra': _Unknown()}, tmp_path / 'other.pth')
    with pytest.raises(Exception, match='_Unknown'):
        CheckpointLoader.load_checkpoint(str(tmp_path / 'other.pth'), map_location='cpu')


def test_official_mobilemamba_trainer_checkpoint_initialises_backbone(tmp_path):
    """The official trainer file ({net, net_E, optimizer, ...}; EMA net_E taken) through the backbone's loader."""
    from vssm.models.mobilemamba import _RENAMES
    clf = timm.create_model('mobilemamba_b', depths=(1, 1, 1), dims=(16, 24, 32))
    official = {}
    for k, v in clf.state_dict().items():  # our keys -> the official layout (blocks{i}, wrappers, Conv2d_BN names)
        for theirs, ours in _RENAMES:
            k = k.replace(ours, theirs)
        m = re.match(r'^stages\.(\d)\.(downsample|blocks)\.(\d+)\.(.*)$', k)
        if m:
            i, idx = int(m.group(1)), int(m.group(3)) + (3 if m.group(2) == 'blocks' and m.group(1) != '0' else 0)
            k = f'blocks{i + 1}.{idx}.{m.group(4)}'
        official[k.replace('stem.', 'patch_embed.')] = v
    assert 'blocks2.3.mixer.m.attn.global_op.global_atten.in_proj.c.weight' in official
    path = tmp_path / 'ckpt.pth'
    torch.save({'net': {k: torch.zeros_like(v) for k, v in official.items()}, 'net_E': official, 'optimizer': {}},
               path)
    bb = ROOT_MODELS.build(dict(type='vssm.MobileMamba', depths=(1, 1, 1), dims=(16, 24, 32), out_indices=(0, 1, 2),
                                pretrained=str(path)))
    bb.init_weights()
    _assert_body_equals(bb, clf.state_dict())
