"""timm's model contract (the asserts of timm's tests/test_models.py) for every model vssm registers.

Real-tensor checks run the full-size models at small inputs (96-128 px); config and API checks run on
the meta device, as timm's own suite does.
"""
import copy
import fnmatch
import inspect
import math

import pytest
import timm
import torch
from timm.layers import get_channel_dim, get_spatial_dim
from timm.models._manipulate import group_parameters

import vssm  # noqa: F401  (registers the models)


def _vssm_models():
    return sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('vssm.'))


ALL_MODELS = _vssm_models()
# families whose larger sizes (MambaVision up to 740M parameters) run only the meta-device checks, as timm's
# suite skips its giants: the smallest model of the family runs the real-tensor ones
META_ONLY = ('mambavision_tiny2', 'mambavision_small', 'mambavision_base', 'mambavision_large*')
MODELS = [n for n in ALL_MODELS if not any(fnmatch.fnmatch(n, p) for p in META_ONLY)]
FWD_SIZE = 96
BWD_SIZE = 96  # timm uses 128; the full-size models' CPU backward dominates CI time
PRUNE_SIZE = 64


def _non_std(model) -> bool:
    """Token-output (ViT-like) models: timm's 'non-standard' set."""
    return getattr(model, 'output_fmt', 'NCHW') == 'NLC'


def test_models_registered():
    assert any(n.startswith('vmamba_') for n in MODELS), MODELS


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward(model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    x = torch.randn(1, 3, FWD_SIZE, FWD_SIZE)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (1, model.num_classes)
        assert not torch.isnan(out).any()
        model.set_grad_checkpointing()
        out2 = model(x)
    torch.testing.assert_close(out, out2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODELS)
def test_model_backward(model_name):
    model = timm.create_model(model_name, pretrained=False, num_classes=42).train()
    x = torch.randn(2, 3, BWD_SIZE, BWD_SIZE)
    out = model(x)
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing[:5]}'
    assert out.shape == (2, 42)
    assert not torch.isnan(out).any()


def _assert_api_contract(model, model_name):
    with pytest.raises(TypeError):
        timm.create_model(model_name, pretrained=False, device='meta', not_a_model_arg=1)
    param = inspect.signature(model.reset_classifier).parameters.get('global_pool')
    assert param is not None and param.default is None
    names = [n for n, _ in model.named_parameters()]
    groups = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
    assert len(set(groups.values())) > 1, 'group_matcher() puts all params in one group'
    for pattern in model.no_weight_decay():
        assert any(fnmatch.fnmatch(n, pattern) for n in names), f'no_weight_decay {pattern!r} matches nothing'


@pytest.mark.parametrize('model_name', ALL_MODELS)
def test_model_default_cfgs(model_name):
    with torch.device('meta'):
        model = timm.create_model(model_name, pretrained=False, device='meta', dtype=torch.float32).eval()
    _assert_api_contract(model, model_name)
    cfg = model.default_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    assert model.in_chans == cfg['input_size'][0]
    state_dict = model.state_dict()
    x = torch.randn((1, *cfg['input_size']), device='meta')
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert pre.shape[1] == model.head_hidden_size
    if _non_std(model):
        assert feats.shape[-1] == model.num_features
    else:
        fmt = getattr(model, 'output_fmt', 'NCHW')
        spatial, chan = get_spatial_dim(fmt), get_channel_dim(fmt)
        assert tuple(feats.shape[s] for s in spatial) == tuple(cfg['pool_size'])
        assert feats.shape[chan] == model.num_features
    # dtype change after a forward: bfloat16 in, bfloat16 out
    model.to(torch.bfloat16)
    assert model(x.to(torch.bfloat16)).dtype == torch.bfloat16
    model.to(torch.float32)
    model.reset_classifier(0)
    assert model.num_classes == 0
    out = model(x)
    assert out.shape == pre.shape
    if not _non_std(model):
        model.reset_classifier(0, '')
        assert model(x).dim() == 4
        unpooled = timm.create_model(model_name, num_classes=0, global_pool='', device='meta')
        assert unpooled(x).dim() == 4
    headless = timm.create_model(model_name, num_classes=0, device='meta', dtype=torch.float32)
    assert headless(x).shape == pre.shape
    for c in (cfg['classifier'],) if isinstance(cfg['classifier'], str) else cfg['classifier']:
        assert c + '.weight' in state_dict
    for c in (cfg['first_conv'],) if isinstance(cfg['first_conv'], str) else cfg['first_conv']:
        assert c + '.weight' in state_dict
    # reset_classifier keeps device, dtype and train / eval mode of the model (timm's
    # _assert_reset_classifier_preserves_parent_device_dtype: a new head must not start in training mode)
    model.to(device='meta', dtype=torch.float64)
    for mode in (False, True):
        model.train(mode)
        model.reset_classifier(0)
        model.reset_classifier(2)
        heads = model.get_classifier()  # a tuple with a distillation head (DeiT, GroupMamba), as timm's test allows
        params = [p for head in (heads if isinstance(heads, tuple) else (heads,)) for p in head.parameters()]
        assert params and all(p.dtype == torch.float64 and p.device.type == 'meta' for p in params)
        assert [n for n, m in model.named_modules() if m.training != mode] == [], f'modes after reset ({mode})'
    # factory device placement; frozen params stay frozen through reset
    placed = timm.create_model(model_name, device='meta', dtype=torch.float32)
    assert all(t.device.type == 'meta' for t in [*placed.parameters(), *placed.buffers()])
    placed.requires_grad_(False)
    placed.reset_classifier(0)
    assert not [n for n, p in placed.named_parameters() if p.requires_grad]


@pytest.mark.parametrize('model_name', MODELS)
def test_model_features(model_name):
    model = timm.create_model(model_name, pretrained=False, features_only=True).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    size = (FWD_SIZE, FWD_SIZE + 32)  # non-square
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == len(channels)
    for c, r, o in zip(channels, reductions, outs):
        assert o.shape[1] == c
        for s, dim in zip(size, (2, 3)):
            assert s / (2 * r) < o.shape[dim] <= math.ceil(s / r) + 1
        assert not torch.isnan(o).any()
    sub = timm.create_model(model_name, features_only=True, out_indices=(1, 2))
    assert len(sub(torch.randn(1, 3, FWD_SIZE, FWD_SIZE))) == 2


@pytest.mark.parametrize('model_name', MODELS)
def test_model_forward_intermediates(model_name):
    model = timm.create_model(model_name, pretrained=False).eval()
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))
    x = torch.randn(1, 3, FWD_SIZE, FWD_SIZE)
    with torch.no_grad():
        final, inters = model.forward_intermediates(x, output_fmt='NCHW')
        assert len(inters) == len(info.channels())
        for c, r, o in zip(info.channels(), info.reduction(), inters):
            assert o.shape[1] == c
            assert o.shape[2] <= math.ceil(FWD_SIZE / r) + 1
        torch.testing.assert_close(final, model.forward_features(x), rtol=1e-5, atol=1e-6)
        model.set_grad_checkpointing()
        final2, _ = model.forward_intermediates(x)
    torch.testing.assert_close(final, final2, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('model_name', MODELS)
def test_prune_intermediate_layers(model_name):
    model = timm.create_model(model_name, drop_rate=0.5)
    x = torch.randn(2, 3, PRUNE_SIZE, PRUNE_SIZE)
    n = len(model.feature_info)
    with torch.no_grad():
        taps = model.eval().forward_intermediates(x, intermediates_only=True)
    for indices, prune_norm in (([0], False), ([n - 1], False), (list(range(n)), True)):
        pruned = copy.deepcopy(model).train()
        take = pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        feats = pruned.forward_intermediates(x, indices=take, norm=not prune_norm, intermediates_only=True)
        sum(f.sum() for f in feats).backward()
        assert not [k for k, p in pruned.named_parameters() if p.grad is None]
        # a fresh copy: the train-mode pass above moved BatchNorm running stats
        pruned = copy.deepcopy(model).eval()
        take = pruned.prune_intermediate_layers(indices, prune_norm=prune_norm)
        with torch.no_grad():
            sel = pruned.forward_intermediates(x, indices=take, intermediates_only=True)
            torch.testing.assert_close(sel[0], taps[take[0]])
            assert torch.equal(pruned(x), pruned(x))


@pytest.mark.parametrize('model_name', MODELS)
def test_init_weights_after_to_empty(model_name):
    model = timm.create_model(model_name, device='meta', dtype=torch.float64, num_classes=5)
    model = model.to_empty(device='cpu').eval()
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            if t.is_floating_point():
                t.fill_(float('nan'))
    model.init_weights()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        assert torch.isfinite(t).all(), name
    with torch.no_grad():
        assert torch.isfinite(model(torch.randn(1, 3, 64, 64, dtype=torch.float64))).all()


@pytest.mark.parametrize('model_name', MODELS)
def test_sizes_and_dtypes(model_name):
    """96, 128 and non-square inputs; bfloat16 in -> bfloat16 out."""
    model = timm.create_model(model_name, num_classes=7).eval()
    with torch.no_grad():
        for size in ((96, 96), (128, 128), (96, 160)):
            assert model(torch.randn(1, 3, *size)).shape == (1, 7)
        model.to(torch.bfloat16)
        out = model(torch.randn(1, 3, 96, 96, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
