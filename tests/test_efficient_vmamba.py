"""EfficientVMamba: parameter counts and FLOPs against the official models, official checkpoint layout,
ES2D / EVSS / inverted residual blocks against the official formulation, sizes and training.

The "official" side here is written from the official definitions (TerryPei/EfficientVMamba
classification/models/vmamba_efficient.py: EfficientVSSM, VSSBlock, SS2D, BiAttn, EfficientScan/Merge,
PatchMerging2D; hunto's lib/models/operations.py: InvertedResidual, SqueezeExcite), not from our model.
"""
import math

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import vssm  # noqa: F401
from vssm.layers import SS2D
from vssm.models.efficient_vmamba import EVSSBlock, checkpoint_filter_fn
from vssm.ops import EFFICIENT_VMAMBA_PLAN, selective_scan_ref
from vssm.ops.flops import count_flops

# official registrations: mobile_vssm_fusion_nano / _micro / _tiny (mlp_ratio 0, downsample v1, d_state 16)
CONFIGS = {
    'efficient_vmamba_tiny': dict(dims=(48, 96, 192, 384), depths=(2, 2, 4, 2)),
    'efficient_vmamba_small': dict(dims=(64, 128, 256, 512), depths=(2, 2, 4, 2)),
    'efficient_vmamba_base': dict(dims=(96, 192, 384, 768), depths=(2, 2, 9, 2)),
}
# README / paper: 6M 0.8G, 11M 1.3G (11.27M for the released S), 33M 4.0G
PUBLISHED_PARAMS_M = {'efficient_vmamba_tiny': 6, 'efficient_vmamba_small': 11.27, 'efficient_vmamba_base': 33}
PUBLISHED_GFLOPS = {'efficient_vmamba_tiny': 0.8, 'efficient_vmamba_small': 1.3, 'efficient_vmamba_base': 4.0}

_BN_BUFFERS = ('running_mean', 'running_var', 'num_batches_tracked')


def _bn(prefix, c):
    return {prefix + 'weight': (c,), prefix + 'bias': (c,), prefix + 'running_mean': (c,),
            prefix + 'running_var': (c,), prefix + 'num_batches_tracked': ()}


def _ln(prefix, c):
    return {prefix + 'weight': (c,), prefix + 'bias': (c,)}


def official_shapes(dims, depths, num_classes=1000, in_chans=3, d_state=16, ssm_ratio=2.0):
    """Key -> shape of the official EfficientVSSM state_dict, module by module as the official code builds it."""
    s = {'patch_embed.0.weight': (dims[0], in_chans, 4, 4), 'patch_embed.0.bias': (dims[0],)}
    s.update(_ln('patch_embed.2.', dims[0]))
    for i, (dim, depth) in enumerate(zip(dims, depths)):
        if i < 2:  # VSSM._make_layer: Sequential(blocks=..., downsample=...)
            d_inner, rank, N = int(ssm_ratio * dim), math.ceil(dim / 16), d_state
            red = int(dim * 0.125)
            for j in range(depth):
                p = f'layers.{i}.blocks.{j}.'
                s.update(_ln(p + 'norm.', dim))
                s[p + 'op.in_proj.weight'] = (2 * d_inner, dim)  # x and z
                s[p + 'op.conv2d.weight'] = (d_inner, 1, 3, 3)
                s[p + 'op.conv2d.bias'] = (d_inner,)
                s[p + 'op.x_proj_weight'] = (4, rank + 2 * N, d_inner)
                s[p + 'op.dt_projs_weight'] = (4, d_inner, rank)
                s[p + 'op.dt_projs_bias'] = (4, d_inner)
                s[p + 'op.A_logs'] = (4 * d_inner, N)
                s[p + 'op.Ds'] = (4 * d_inner,)
                s.update(_ln(p + 'op.out_norm.', d_inner))
                s[p + 'op.out_proj.weight'] = (dim, d_inner)
                s[p + 'conv_branch.0.weight'] = (dim, 1, 3, 3)
                s[p + 'conv_branch.0.bias'] = (dim,)
                s.update(_bn(p + 'conv_branch.1.', dim))
                s[p + 'conv_branch.3.weight'] = (dim, dim, 1, 1)
                s[p + 'conv_branch.3.bias'] = (dim,)
                s.update(_ln(p + 'se.norm.', dim))  # BiAttn
                s[p + 'se.global_reduce.weight'] = (red, dim)
                s[p + 'se.global_reduce.bias'] = (red,)
                s[p + 'se.channel_select.weight'] = (dim, red)
                s[p + 'se.channel_select.bias'] = (dim,)
            down = f'layers.{i}.downsample.'
        else:  # Sequential(Permute, *InvertedResidual, Permute, downsample)
            mid = dim * 4
            red = max(1, int(mid * 0.125))
            for j in range(depth):
                p = f'layers.{i}.{j + 1}.'
                s[p + 'conv_pw.0.weight'] = (mid, dim, 1, 1)
                s.update(_bn(p + 'conv_pw.1.', mid))
                s[p + 'conv_dw.0.weight'] = (mid, 1, 3, 3)
                s.update(_bn(p + 'conv_dw.1.', mid))
                s[p + 'se.conv_reduce.weight'] = (red, mid, 1, 1)
                s[p + 'se.conv_reduce.bias'] = (red,)
                s[p + 'se.conv_expand.weight'] = (mid, red, 1, 1)
                s[p + 'se.conv_expand.bias'] = (mid,)
                s[p + 'conv_pw2.0.weight'] = (dim, mid, 1, 1)
                s.update(_bn(p + 'conv_pw2.1.', dim))
            down = f'layers.{i}.{depth + 2}.'
        if i < len(dims) - 1:  # PatchMerging2D (downsample v1); the last stage has nn.Identity
            s[down + 'reduction.weight'] = (dims[i + 1], 4 * dim)
            s.update(_ln(down + 'norm.', 4 * dim))
    s.update(_ln('classifier.norm.', dims[-1]))
    s['classifier.head.weight'] = (num_classes, dims[-1])
    s['classifier.head.bias'] = (num_classes,)
    return s


def official_state_dict(dims, depths, device=None, **kwargs):
    out = {}
    for k, shape in official_shapes(dims, depths, **kwargs).items():
        if k.endswith('num_batches_tracked'):
            out[k] = torch.tensor(7, device=device)
        elif k.endswith('running_var'):
            out[k] = torch.rand(shape, device=device) + 0.5
        else:
            out[k] = torch.randn(shape, device=device)
    return out


def official_param_count(dims, depths):
    return sum(math.prod(shape) for k, shape in official_shapes(dims, depths).items() if not k.endswith(_BN_BUFFERS))


# ------------------------------------------------------------------------------------ counts, FLOPs

@pytest.mark.parametrize('name', list(CONFIGS))
def test_param_counts_equal_official(name):
    ours = sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
    official = official_param_count(**CONFIGS[name])
    print(f'{name}: {ours:,} params (official definition {official:,}; published {PUBLISHED_PARAMS_M[name]}M)')
    assert ours == official
    if name == 'efficient_vmamba_small':
        assert abs(ours / 1e6 - 11.27) / 11.27 < 0.005
    else:  # the paper rounds down to whole millions (6.49M -> 6M, 33.72M -> 33M)
        assert int(ours / 1e6) == PUBLISHED_PARAMS_M[name]


@pytest.mark.parametrize('name', list(CONFIGS))
def test_flops_match_published(name):
    gflops = count_flops(timm.create_model(name)) / 1e9
    print(f'{name}: {gflops:.3f} GFLOPs at 224x224 (published {PUBLISHED_GFLOPS[name]})')
    assert abs(gflops - PUBLISHED_GFLOPS[name]) / PUBLISHED_GFLOPS[name] < 0.05


# ------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize('name', list(CONFIGS))
def test_official_layout_maps_onto_every_key(name):
    model = timm.create_model(name, device='meta')
    mapped = checkpoint_filter_fn({'state_dict': official_state_dict(**CONFIGS[name], device='meta')}, model)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def test_official_checkpoint_loads(tmp_path):
    """An official-layout checkpoint (state_dict wrapper, DDP `module.module.` prefix) loads by timm's path."""
    sd = official_state_dict(**CONFIGS['efficient_vmamba_small'])
    path = tmp_path / 'efficient_vmamba_small.ckpt'
    torch.save({'state_dict': {'module.module.' + k: v for k, v in sd.items()}, 'epoch': 299}, path)
    model = timm.create_model('efficient_vmamba_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.state_dict()
    assert len(ours) == len(sd)  # every official tensor landed somewhere
    pairs = {
        'stem.0.weight': 'patch_embed.0.weight',
        'stages.0.blocks.1.op.A_logs': 'layers.0.blocks.1.op.A_logs',
        'stages.1.blocks.0.se.channel_select.weight': 'layers.1.blocks.0.se.channel_select.weight',
        'stages.1.downsample.reduction.weight': 'layers.0.downsample.reduction.weight',
        'stages.2.downsample.norm.weight': 'layers.1.downsample.norm.weight',
        'stages.2.blocks.0.conv_pw.weight': 'layers.2.1.conv_pw.0.weight',
        'stages.2.blocks.3.bn2.running_var': 'layers.2.4.conv_dw.1.running_var',
        'stages.3.blocks.1.conv_pwl.weight': 'layers.3.2.conv_pw2.0.weight',
        'stages.3.blocks.1.bn3.bias': 'layers.3.2.conv_pw2.1.bias',
        'stages.3.blocks.0.se.conv_expand.bias': 'layers.3.1.se.conv_expand.bias',
        'stages.3.downsample.reduction.weight': 'layers.2.6.reduction.weight',
        'norm.weight': 'classifier.norm.weight',
        'head.fc.weight': 'classifier.head.weight',
    }
    for ours_key, official_key in pairs.items():
        torch.testing.assert_close(ours[ours_key], sd[official_key], rtol=0, atol=0)


def test_official_checkpoint_new_head(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': official_state_dict(**CONFIGS['efficient_vmamba_tiny'])}, path)
    model = timm.create_model('efficient_vmamba_tiny', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert model.get_classifier().out_features == 10


def test_checkpoint_for_another_model_is_a_clear_error(tmp_path):
    path = tmp_path / 'ckpt.pth'
    torch.save({'state_dict': official_state_dict(**CONFIGS['efficient_vmamba_tiny'])}, path)
    with pytest.raises(ValueError, match='checkpoint does not match efficient_vmamba_small'):
        timm.create_model('efficient_vmamba_small', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))


# ------------------------------------------------------------------- blocks vs the official formulation

def _official_es2d(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """Official SS2D.forward + cross_selective_scan (forward_type v2, step 2) on channel-last x."""
    Bt, H, W, _ = x.shape
    x, z = F.linear(x, m.in_proj.weight).chunk(2, dim=-1)
    z = F.silu(z)
    x = F.silu(m.conv2d(x.permute(0, 3, 1, 2)))
    D = x.shape[1]
    # EfficientScan: pad to even, four strided slices
    xp = F.pad(x, (0, W % 2, 0, H % 2))
    h, w = xp.shape[2] // 2, xp.shape[3] // 2
    xt = xp.transpose(2, 3)
    xs = torch.stack([xp[:, :, ::2, ::2].flatten(2), xt[:, :, ::2, 1::2].flatten(2),
                      xp[:, :, ::2, 1::2].flatten(2), xt[:, :, 1::2, 1::2].flatten(2)], dim=1)
    x_dbl = torch.einsum('bkdl,kcd->bkcl', xs, m.x_proj_weight)
    dts, Bs, Cs = torch.split(x_dbl, [m.dt_rank, m.d_state, m.d_state], dim=2)
    dts = torch.einsum('bkrl,kdr->bkdl', dts, m.dt_projs_weight)
    ys = selective_scan_ref(xs.flatten(1, 2), dts.flatten(1, 2), -torch.exp(m.A_logs), Bs, Cs, m.Ds,
                            delta_bias=m.dt_projs_bias.flatten(), delta_softplus=True).view(Bt, 4, D, h * w)
    # EfficientMerge: write each phase back, crop
    y = ys.new_zeros(Bt, D, 2 * h, 2 * w)
    y[:, :, ::2, ::2] = ys[:, 0].reshape(Bt, D, h, w)
    y[:, :, 1::2, ::2] = ys[:, 1].reshape(Bt, D, w, h).transpose(2, 3)
    y[:, :, ::2, 1::2] = ys[:, 2].reshape(Bt, D, h, w)
    y[:, :, 1::2, 1::2] = ys[:, 3].reshape(Bt, D, w, h).transpose(2, 3)
    y = m.out_norm(y[:, :, :H, :W].permute(0, 2, 3, 1))
    return F.linear(y * z, m.out_proj.weight)


def _official_biattn(se: nn.Module, x: torch.Tensor) -> torch.Tensor:
    g = se.norm(x).mean([1, 2], keepdim=True)
    g = se.channel_select(F.gelu(se.global_reduce(g)))
    return x * torch.sigmoid(g)


def _randomise(module: nn.Module) -> None:
    """Random weights and BN statistics (not the init), so every tensor's role shows in the output."""
    with torch.no_grad():
        for name, t in module.named_parameters():
            scale = 0.02 if 'proj' in name else 0.5
            t.copy_(torch.randn_like(t) * scale + (1.0 if name.endswith('norm.weight') else 0.0))
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)


@pytest.mark.parametrize('H,W', [(6, 8), (5, 7), (7, 4), (3, 9)])
def test_evss_block_equals_official_formulation(H, W):
    """x + SE(ES2D(LN x)) + SE(conv(LN x)) with the official atrous scan, odd maps padded as upstream."""
    block = EVSSBlock(8, d_state=4).double().eval()
    _randomise(block)
    x = torch.randn(2, H, W, 8, dtype=torch.float64)
    with torch.no_grad():
        h = block.norm(x)
        local = block.conv_branch(h.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        official = x + _official_biattn(block.se, _official_es2d(block.op, h)) + _official_biattn(block.se, local)
        torch.testing.assert_close(block.op(h), _official_es2d(block.op, h))
        torch.testing.assert_close(block(x), official)
        if H % 2 or W % 2:  # the padded tokens matter: skipping them (a plain atrous plan) gives other values
            block.op.pad_multiple = 1
            assert not torch.allclose(block.op(h), _official_es2d(block.op, h), rtol=1e-6, atol=1e-7)


class _OfficialInvertedResidual(nn.Module):
    """hunto's InvertedResidual(dim, dim, expand_ratio=4, se_ratio=0.125): ReLU, sigmoid SE on the expansion."""

    def __init__(self, dim):
        super().__init__()
        mid, red = dim * 4, max(1, int(dim * 4 * 0.125))
        self.conv_pw = nn.Sequential(nn.Conv2d(dim, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU())
        self.conv_dw = nn.Sequential(nn.Conv2d(mid, mid, 3, 1, 1, groups=mid, bias=False), nn.BatchNorm2d(mid),
                                     nn.ReLU())
        self.se = nn.Module()
        self.se.conv_reduce = nn.Conv2d(mid, red, 1)
        self.se.conv_expand = nn.Conv2d(red, mid, 1)
        self.conv_pw2 = nn.Sequential(nn.Conv2d(mid, dim, 1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x):
        y = self.conv_dw(self.conv_pw(x))
        g = self.se.conv_expand(F.relu(self.se.conv_reduce(y.mean((2, 3), keepdim=True))))
        return x + self.conv_pw2(y * torch.sigmoid(g))


def test_inverted_residual_stage_equals_official_after_key_mapping():
    """Official IR weights mapped by checkpoint_filter_fn compute the same stage-3 output."""
    dims, depths = (8, 16, 24, 32), (1, 1, 1, 1)
    model = timm.create_model('efficient_vmamba_tiny', dims=dims, depths=depths, num_classes=0).double().eval()
    sd = {k: v.double() if v.is_floating_point() else v for k, v in official_state_dict(dims, depths).items()}
    model.load_state_dict(checkpoint_filter_fn(sd, model), strict=False)
    official = _OfficialInvertedResidual(24).double().eval()
    official.load_state_dict({k[len('layers.2.1.'):]: v for k, v in sd.items() if k.startswith('layers.2.1.')})
    x = torch.randn(2, 5, 7, 24, dtype=torch.float64)  # NHWC, as between stages
    with torch.no_grad():
        ours = model.stages[2].blocks(x.permute(0, 3, 1, 2))
        torch.testing.assert_close(ours, official(x.permute(0, 3, 1, 2)))


# ----------------------------------------------------------------------------- sizes, training, input

def _tiny_model(**kwargs):
    return timm.create_model('efficient_vmamba_tiny', dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), **kwargs)


def test_runs_at_square_non_square_and_odd_sizes():
    model = _tiny_model(num_classes=5).eval()
    with torch.no_grad():
        for size in ((96, 96), (128, 128), (96, 160), (100, 68)):  # 100x68: odd stage-1/2 maps (25x17, 13x9)
            out = model(torch.randn(1, 3, *size))
            assert out.shape == (1, 5) and torch.isfinite(out).all()
        feats = model.forward_intermediates(torch.randn(1, 3, 100, 68), intermediates_only=True)
    assert [tuple(f.shape[2:]) for f in feats] == [(25, 17), (13, 9), (7, 5), (4, 3)]


def test_a_few_training_steps_without_nan():
    model = _tiny_model(num_classes=4, drop_path_rate=0.1).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 3])
    losses = []
    for _ in range(4):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]


def test_bad_input_is_a_clear_error():
    model = _tiny_model().eval()
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='at least 32x32'):
        model(torch.randn(1, 3, 16, 64))
    with pytest.raises(TypeError):
        _tiny_model(not_an_arg=1)
    with pytest.raises(ValueError, match='ssm_stages'):
        _tiny_model(ssm_stages=5)


def test_plan_and_stage_kinds():
    model = timm.create_model('efficient_vmamba_base', device='meta')
    kinds = [type(s.blocks[0]).__name__ for s in model.stages]
    assert kinds == ['EVSSBlock', 'EVSSBlock', 'InvertedResidual', 'InvertedResidual']
    assert model.stages[0].blocks[0].op.plan == EFFICIENT_VMAMBA_PLAN
    assert [f['reduction'] for f in model.feature_info] == [4, 8, 16, 32]
