"""Files in each family's official release / training format load through timm's ``pretrained=True`` under
``weights_only=True``, with the Python objects their training scripts pickle (vssm/serialization.py lists them):
VMamba and EfficientVMamba save a yacs ``CfgNode`` config, Vim (DeiT-style) an ``argparse.Namespace``, LocalMamba
only state dicts. yacs is not installed for this: the test defines a class at ``yacs.config.CfgNode`` that
behaves as yacs 0.1.8's (a dict subclass with its flags in ``__dict__``), pickles it, and removes it again.
"""
import argparse
import contextlib
import math
import pickle
import shutil
import sys
import types
from collections import OrderedDict

import pytest
import timm
import torch
from timm.scheduler import CosineLRScheduler

import vssm  # noqa: F401
from vssm.serialization import load_checkpoint_file
from vssm.tools_common.official_layout import vmamba_to_official

from test_efficient_vmamba import official_state_dict as official_efficient_vmamba_state_dict
from test_localmamba import official_local_vim_state_dict, official_local_vmamba_state_dict
from test_vim import official_vim_state_dict


# --------------------------------------------------------------------------------- the pickled objects

class _CfgNode(dict):
    """yacs.config.CfgNode as yacs 0.1.8 defines its state: entries in the dict, four flags in __dict__."""

    def __init__(self, init_dict=None, new_allowed=False):
        super().__init__(init_dict or {})
        self.__dict__['__immutable__'] = False
        self.__dict__['__deprecated_keys__'] = set()
        self.__dict__['__renamed_keys__'] = {}
        self.__dict__['__new_allowed__'] = new_allowed

    def __getattr__(self, name):
        if name in self:
            return self[name]
        raise AttributeError(name)

    def __setattr__(self, name, value):
        self[name] = value


@contextlib.contextmanager
def _yacs_importable():
    """Make `yacs.config.CfgNode` resolvable for pickling, then gone again (the loader must not need it)."""
    saved = {k: sys.modules.get(k) for k in ('yacs', 'yacs.config')}
    yacs, config = types.ModuleType('yacs'), types.ModuleType('yacs.config')
    _CfgNode.__module__, _CfgNode.__qualname__ = 'yacs.config', 'CfgNode'
    config.CfgNode, yacs.config = _CfgNode, config
    sys.modules.update({'yacs': yacs, 'yacs.config': config})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def _vmamba_config(model_type='vssm'):
    """The shape of MzeroMiko/VMamba's config.py defaults (nested nodes, tuples, lists), frozen as train does."""
    c = _CfgNode()
    c.BASE = ['']
    c.DATA = _CfgNode(dict(BATCH_SIZE=128, DATA_PATH='/data/imagenet', IMG_SIZE=224, INTERPOLATION='bicubic'))
    c.MODEL = _CfgNode(dict(TYPE=model_type, NAME='vssm1_tiny_0230s', NUM_CLASSES=1000, DROP_PATH_RATE=0.2))
    c.MODEL.VSSM = _CfgNode(dict(DEPTHS=[2, 2, 8, 2], EMBED_DIM=96, SSM_D_STATE=1, SSM_DT_RANK='auto'))
    c.TRAIN = _CfgNode(dict(EPOCHS=300, BASE_LR=5e-4, CLIP_GRAD=5.0, AUTO_RESUME=True))
    c.TRAIN.OPTIMIZER = _CfgNode(dict(NAME='adamw', EPS=1e-8, BETAS=(0.9, 0.999)))
    c.TRAIN.LR_SCHEDULER = _CfgNode(dict(NAME='cosine', MULTISTEPS=[], WARMUP_PREFIX=True))
    c.OUTPUT = 'output/vssm1_tiny_0230s'
    c.AMP_ENABLE = True
    for node in (c, c.DATA, c.MODEL, c.MODEL.VSSM, c.TRAIN, c.TRAIN.OPTIMIZER, c.TRAIN.LR_SCHEDULER):
        node.__dict__['__immutable__'] = True  # config.freeze()
    return c


def _training_state(model):
    """Real optimizer / scheduler / AMP-scaler state dicts after one step, as the training scripts save them."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(1, 3, 64, 64)).sum().backward()
    opt.step()
    sched = CosineLRScheduler(opt, t_initial=300, lr_min=5e-6, warmup_lr_init=5e-7, warmup_t=20, t_in_epochs=False)
    scaler = {'scale': 65536.0, 'growth_factor': 2.0, 'backoff_factor': 0.5, 'growth_interval': 2000,
              '_growth_tracker': 117}  # torch.cuda.amp.GradScaler().state_dict() on a GPU run
    return opt.state_dict(), sched.state_dict(), scaler


def _save_swin_style(path, model, official_sd, model_type):
    """MzeroMiko/VMamba and TerryPei/EfficientVMamba classification/utils/utils.py save_checkpoint_ema."""
    opt, sched, scaler = _training_state(model)
    with _yacs_importable():
        torch.save({'model': official_sd, 'optimizer': opt, 'lr_scheduler': sched, 'max_accuracy': 82.49,
                    'scaler': scaler, 'epoch': 264, 'config': _vmamba_config(model_type),
                    'model_ema': official_sd, 'max_accuray_ema': 82.61}, path)


def _save_deit_style(path, model, official_sd):
    """hustvl/Vim vim/main.py: utils.save_on_master({... 'args': args}) with timm's scheduler and NativeScaler."""
    opt, sched, scaler = _training_state(model)
    args = argparse.Namespace(model='vim_tiny_patch16_224_bimambav2_final_pool_mean_abs_pos_embed_with_midclstok_div2',
                              batch_size=128, epochs=300, lr=5e-4, opt='adamw', opt_betas=None, sched='cosine',
                              data_path='/data/imagenet', output_dir='./output/vim_t', device='cuda', seed=0,
                              distributed=True, gpu=0, rank=0, world_size=8, dist_backend='nccl', nb_classes=1000)
    torch.save({'model': official_sd, 'optimizer': opt, 'lr_scheduler': sched, 'epoch': 299,
                'model_ema': official_sd, 'scaler': scaler, 'args': args}, path)


# ------------------------------------------------------------------------------------------- the files

def _vmamba_files(tmp_path):
    kw = dict(depths=(1, 1, 1, 1), dims=16)
    src = timm.create_model('vmamba_tiny_s1l8', **kw)
    official = {'module.' + k: v for k, v in vmamba_to_official(src.state_dict(), src).items()}
    path = tmp_path / 'vssm1_tiny_0230s_ckpt_epoch_264.pth'
    _save_swin_style(path, src, official, 'vssm')
    return 'vmamba_tiny_s1l8', kw, path, src.state_dict()


def _efficient_vmamba_files(tmp_path):
    kw = dict(depths=(1, 1, 1, 1), dims=16)
    src = timm.create_model('efficient_vmamba_tiny', **kw)
    dims = tuple(16 * 2 ** i for i in range(4))
    official = official_efficient_vmamba_state_dict(dims, kw['depths'], device='cpu')
    path = tmp_path / 'efficient_vmamba_tiny_ckpt_epoch_299.pth'
    _save_swin_style(path, src, {'module.' + k: v for k, v in official.items()}, 'efficient_vssm')
    return 'efficient_vmamba_tiny', kw, path, None


def _vim_files(tmp_path):
    kw = dict(embed_dim=32, depth=2)
    src = timm.create_model('vim_tiny', **kw)
    path = tmp_path / 'vim_t_midclstok_76p1acc.pth'
    _save_deit_style(path, src, official_vim_state_dict(32, depth=2, device='cpu'))
    return 'vim_tiny', kw, path, None


def _local_vim_release(tmp_path):
    """hunto/LocalMamba tools/convert_ckpt.py: {'state_dict': ckpt[key]} with the DDP `module.` prefix."""
    kw = dict(embed_dim=32, depth=2, directions=vssm.models.localmamba.LOCAL_VIM_DIRECTIONS['local_vim_tiny'][:2])
    params, buffers = official_local_vim_state_dict(32, depth=2, device='cpu')
    path = tmp_path / 'local_vim_tiny.ckpt'
    torch.save({'state_dict': {'module.' + k: v for k, v in {**params, **buffers}.items()}}, path)
    return 'local_vim_tiny', kw, path, None


def _local_vmamba_training_checkpoint(tmp_path):
    """hunto/LocalMamba lib/utils/misc.py CheckpointManager._save (epoch, model, ema_model, optimizer, additions)."""
    depths = (1, 1, 2, 1)
    kw = dict(depths=depths, dims=16,
              directions=vssm.models.localmamba.LOCAL_VMAMBA_DIRECTIONS['local_vmamba_tiny'][:sum(depths)])
    src = timm.create_model('local_vmamba_tiny', **kw)
    opt, _, _ = _training_state(src)
    sd = official_local_vmamba_state_dict(depths, dim=16, device='cpu')
    path = tmp_path / 'checkpoint-299.pth.tar'
    torch.save({'epoch': 299, 'model': sd, 'ema_model': {'module.' + k: v for k, v in sd.items()},
                'optimizer': opt, 'scaler': None, 'dyrep': None}, path)
    return 'local_vmamba_tiny', kw, path, None


FAMILY_FILES = {'vmamba': _vmamba_files, 'efficient_vmamba': _efficient_vmamba_files, 'vim': _vim_files,
                'local_vim': _local_vim_release, 'local_vmamba': _local_vmamba_training_checkpoint}


@pytest.mark.parametrize('family', list(FAMILY_FILES))
def test_official_format_file_loads_through_pretrained(family, tmp_path):
    name, kw, path, expected = FAMILY_FILES[family](tmp_path)
    assert getattr(sys.modules.get('yacs.config'), 'CfgNode', None) is not _CfgNode  # our yacs is gone again
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kw)
    if expected is not None:
        for k, v in model.state_dict().items():
            torch.testing.assert_close(v, expected[k], rtol=0, atol=0, msg=k)
    # and the same file through vssm's own reader (tools, mm backbones): every object came back inert
    ckpt = load_checkpoint_file(path)
    if 'config' in ckpt:
        cfg = ckpt['config']
        assert type(cfg) is OrderedDict and cfg['TRAIN']['OPTIMIZER']['BETAS'] == (0.9, 0.999)
        assert cfg.__dict__['__immutable__'] is True and cfg.__dict__['__deprecated_keys__'] == set()
    if 'args' in ckpt:
        assert isinstance(ckpt['args'], argparse.Namespace) and ckpt['args'].world_size == 8


def test_default_url_loads_the_release_file_under_weights_only(tmp_path):
    """pretrained=True with the cfg's url: timm's torch.hub download path (the file already in the hub cache)."""
    name, kw, path, expected = _vmamba_files(tmp_path)
    url = timm.models.get_pretrained_cfg(name).url
    hub = tmp_path / 'hub'
    (hub / 'checkpoints').mkdir(parents=True)
    shutil.copy(path, hub / 'checkpoints' / url.rsplit('/', 1)[-1])
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(hub))
    try:
        model = timm.create_model(name, pretrained=True, **kw)
    finally:
        torch.hub.set_dir(old)
    torch.testing.assert_close(model.state_dict()['stages.2.blocks.0.op.A_logs'],
                               expected['stages.2.blocks.0.op.A_logs'], rtol=0, atol=0)


def test_other_pickled_objects_are_still_refused(tmp_path):
    """Only the named stand-ins are allowed: a file that pickles any other class fails, naming it."""
    path = tmp_path / 'evil.pth'
    torch.save({'model': {'w': torch.ones(1)}, 'extra': _Unknown()}, path)
    with pytest.raises(pickle.UnpicklingError, match='_Unknown'):
        load_checkpoint_file(path)
    with pytest.raises(Exception, match='_Unknown'):
        timm.create_model('vmamba_tiny_s1l8', depths=(1, 1, 1, 1), dims=16, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))


class _Unknown:
    pass


def test_safetensors_file_loads_everywhere_a_checkpoint_does(tmp_path):
    from safetensors.torch import save_file
    from vssm.tools_common.checkpoints import load_weights
    src = timm.create_model('vim_tiny', embed_dim=32, depth=2)
    path = tmp_path / 'vim_tiny.safetensors'
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = timm.create_model('vim_tiny', embed_dim=32, depth=2, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    other = timm.create_model('vim_tiny', embed_dim=32, depth=2, num_classes=3)
    report = load_weights(other, str(path))  # tools/train.py --initial-checkpoint, convert_checkpoint input
    assert sorted(report.reinitialised_keys) == ['head.bias', 'head.weight']
    for k, v in src.state_dict().items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=0)
    assert math.isclose(float(load_checkpoint_file(path)['norm.weight'].sum()), float(src.norm.weight.sum()))


def _readme_weights_column():
    from pathlib import Path
    rows = {}
    for line in (Path(__file__).resolve().parents[1] / 'README.md').read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if len(cells) == 6 and timm.is_model(cells[0].split(' ')[0]):
            rows[cells[0].split(' ')[0]] = cells[5]
    return rows


def test_readme_weights_column_says_what_pretrained_does():
    """Every vssm model has a README row; 'release URL' exactly where the cfg has a url, and otherwise
    pretrained=True raises (no silent random init)."""
    rows = _readme_weights_column()
    names = [n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('vssm.')]
    assert set(names) <= set(rows), sorted(set(names) - set(rows))
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        url = cfg.url or cfg.hf_hub_id  # a release file by URL, or in a HF hub repo (GroupMamba)
        assert rows[name].startswith('release URL') == bool(url), (name, rows[name], url)
        if not url:
            assert rows[name] == 'no release: raises'
            # timm's own error, or a family's that says where the files are and how to load one
            with pytest.raises((RuntimeError, ValueError), match='No pretrained weights|pretrained_cfg_overlay'):
                timm.create_model(name, pretrained=True, device='meta')
