"""VMamba: exact parameter counts, FLOPs, official checkpoints, SS2D against the official formulation, bad input."""
import gzip
import math
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vssm  # noqa: F401
from vssm.layers import SS2D
from vssm.ops import selective_scan_ref
from vssm.ops.flops import count_flops

# the official state_dict keys and shapes (key<TAB>shape), gzipped into tests/data: the tests need no ../shared
OFFICIAL_KEYS = Path(__file__).resolve().parent / 'data'

# DESIGN §3: counted from the official state_dicts
OFFICIAL_PARAMS = {
    'vmamba_tiny_s1l8': 30_249_064, 'vmamba_small_s1l20': 49_012_840, 'vmamba_base_s1l20': 86_614_504,
    'vmamba_tiny_s2l5': 30_705_832, 'vmamba_small_s2l15': 50_147_752, 'vmamba_base_s2l15': 88_557_800,
    'vmamba_tiny_v0': 22_893_448, 'vmamba_small_v0': 44_417_416, 'vmamba_base_v0': 76_254_056,
}
PUBLISHED_GFLOPS = {'vmamba_tiny_s1l8': 4.9, 'vmamba_tiny_s2l5': 4.9, 'vmamba_tiny_v0': 5.6}


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_param_counts_equal_official(name):
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', list(PUBLISHED_GFLOPS))
def test_flops_match_published(name):
    gflops = count_flops(timm.create_model(name)) / 1e9
    print(f'{name}: {gflops:.3f} GFLOPs (published {PUBLISHED_GFLOPS[name]})')
    assert abs(gflops - PUBLISHED_GFLOPS[name]) / PUBLISHED_GFLOPS[name] < 0.05


def _official_state_dict(stem: str):
    """Random tensors with the official keys and shapes (tests/data/<stem>.official_keys.txt.gz)."""
    sd = {}
    for line in gzip.decompress((OFFICIAL_KEYS / f'{stem}.official_keys.txt.gz').read_bytes()).decode().splitlines():
        key, shape = line.split('\t')
        sd[key] = torch.randn(tuple(int(s) for s in re.findall(r'\d+', shape)))
    return sd


def _official_files():
    return sorted(p.name[:-len('.official_keys.txt.gz')] for p in OFFICIAL_KEYS.glob('vmamba_*.official_keys.txt.gz'))


@pytest.mark.parametrize('stem', _official_files())
def test_official_checkpoint_loads(stem, tmp_path):
    sd = _official_state_dict(stem)
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': sd, 'epoch': 3}, path)
    model = timm.create_model(stem, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.state_dict()
    # every official tensor landed somewhere, unchanged
    assert len(ours) == len(sd)
    torch.testing.assert_close(ours['stem.0.weight'], sd['patch_embed.0.weight'])
    torch.testing.assert_close(ours['head.fc.weight'], sd['classifier.head.weight'])
    # downsample v3 (s1/s2 and m2 models: conv, LayerNorm) or v1 (v0 models: PatchMerging)
    v3 = stem.split('_')[-1] != 'v0'
    torch.testing.assert_close(ours['stages.1.downsample.' + ('1.weight' if v3 else 'reduction.weight')],
                               sd['layers.0.downsample.' + ('1.weight' if v3 else 'reduction.weight')])


def test_official_checkpoint_new_head_and_module_prefix(tmp_path):
    sd = {'module.' + k: v for k, v in _official_state_dict('vmamba_tiny_s1l8').items()}
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': sd}, path)
    model = timm.create_model('vmamba_tiny_s1l8', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.get_classifier().out_features == 10
    torch.testing.assert_close(model.state_dict()['norm.weight'], sd['module.classifier.norm.weight'])


def test_legacy_v0_names_load():
    """Early vanilla releases: patch_embed.proj, ln_1, self_attention, top-level norm/head."""
    from vssm.models.vmamba import checkpoint_filter_fn
    legacy = {}
    for k, v in _official_state_dict('vmamba_tiny_v0').items():
        k = k.replace('patch_embed.0.', 'patch_embed.proj.').replace('patch_embed.2.', 'patch_embed.norm.')
        k = k.replace('.blocks.', '.blocks.').replace('.norm.', '.ln_1.') if '.blocks.' in k else k
        k = k.replace('.op.', '.self_attention.')
        k = k.replace('classifier.norm.', 'norm.').replace('classifier.head.', 'head.')
        legacy[k] = v
    model = timm.create_model('vmamba_tiny_v0', device='meta')
    mapped = checkpoint_filter_fn(legacy, model)
    assert set(mapped) == set(model.state_dict())


def test_checkpoint_for_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': _official_state_dict('vmamba_tiny_v0')}, path)
    with pytest.raises(ValueError, match='checkpoint does not match vmamba_tiny_s1l8'):
        timm.create_model('vmamba_tiny_s1l8', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


def test_wrong_channels_and_too_small_images():
    model = timm.create_model('vmamba_tiny_s1l8', depths=(1, 1, 1, 1), dims=16).eval()
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(ValueError, match='NCHW image batch'):
        model(torch.randn(3, 64, 64))


def _official_ss2d(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D written the way the official code does it: copy 4 scans, project each, scan, flip back, sum."""
    Bt, H, W, _ = x.shape
    xz = F.linear(x, m.in_proj.weight)
    x, z = (xz.chunk(2, dim=-1) if m.gate else (xz, None))
    x = m.act(m.conv2d(x.permute(0, 3, 1, 2)))
    L = H * W
    x_hw = x.flatten(2)
    x_wh = x.transpose(2, 3).flatten(2)
    xs = torch.stack([x_hw, x_wh, x_hw.flip(-1), x_wh.flip(-1)], dim=1)  # (B, 4, D, L)
    x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, m.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=2)
    dts = torch.einsum('bkrl,kdr->bkdl', dts, m.dt_projs_weight)
    y = selective_scan_ref(xs.flatten(1, 2), dts.flatten(1, 2), -torch.exp(m.A_logs), Bs, Cs, m.Ds,
                           delta_bias=m.dt_projs_bias.flatten(), delta_softplus=True).view(Bt, 4, -1, L)
    y = y[:, 0] + y[:, 2].flip(-1) + (y[:, 1] + y[:, 3].flip(-1)).view(Bt, -1, W, H).transpose(2, 3).flatten(2)
    y = m.out_norm(y.transpose(1, 2).view(Bt, H, W, -1))
    if z is not None:
        y = y * m.act(z)
    return F.linear(y, m.out_proj.weight)


@pytest.mark.parametrize('gate,d_state,H,W', [(False, 1, 5, 7), (True, 4, 6, 3)])
def test_ss2d_equals_official_formulation(gate, d_state, H, W):
    m = SS2D(8, d_state=d_state, ssm_ratio=2.0, gate=gate, conv_bias=gate).double()
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_ss2d(m, x))


def test_dt_init_range():
    m = SS2D(32, d_state=4)
    dt = F.softplus(m.dt_projs_bias)
    assert dt.min() >= 1e-4 - 1e-9 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(torch.exp(m.A_logs[0]), torch.arange(1, 5, dtype=torch.float32))
    assert math.isclose(m.Ds.mean().item(), 1.0)
