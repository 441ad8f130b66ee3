"""Vim: exact parameter counts, official checkpoints, the official forward formulation, sizes, FLOPs."""
import math

import pytest
import timm
import torch

import vssm  # noqa: F401
from vssm.models.vim import checkpoint_filter_fn
from vssm.ops.flops import count_flops, scan_flops

VIM_MODELS = {  # name: (embed_dim, patch stride, published params)
    'vim_tiny': (192, 16, '7M'), 'vim_small': (384, 16, '26M'), 'vim_base': (768, 16, '98M'),
    'vim_tiny_stride8': (192, 8, '7M'), 'vim_small_stride8': (384, 8, '26M'),
}


def official_vim_state_dict(embed_dim, depth=24, stride=16, img_size=224, num_classes=1000, d_state=16,
                            device='meta'):
    """Random tensors with the key names and shapes of hustvl/Vim's VisionMamba (bimamba v2, middle cls token)."""
    E, Di, R, N = embed_dim, 2 * embed_dim, math.ceil(embed_dim / 16), d_state
    grid = (img_size - 16) // stride + 1
    shapes = {
        'patch_embed.proj.weight': (E, 3, 16, 16), 'patch_embed.proj.bias': (E,),
        'cls_token': (1, 1, E), 'pos_embed': (1, grid * grid + 1, E),
        'norm_f.weight': (E,), 'head.weight': (num_classes, E), 'head.bias': (num_classes,),
    }
    for i in range(depth):
        p = f'layers.{i}.'
        shapes.update({p + 'norm.weight': (E,), p + 'mixer.in_proj.weight': (2 * Di, E),
                       p + 'mixer.out_proj.weight': (E, Di)})
        for a, s in (('A_log', ''), ('A_b_log', '_b')):  # forward and backward direction
            shapes.update({
                f'{p}mixer.{a}': (Di, N), f'{p}mixer.D{s}': (Di,),
                f'{p}mixer.conv1d{s}.weight': (Di, 1, 4), f'{p}mixer.conv1d{s}.bias': (Di,),
                f'{p}mixer.x_proj{s}.weight': (R + 2 * N, Di),
                f'{p}mixer.dt_proj{s}.weight': (Di, R), f'{p}mixer.dt_proj{s}.bias': (Di,),
            })
    return {k: torch.randn(s, device=device) for k, s in shapes.items()}


@pytest.mark.parametrize('name', list(VIM_MODELS))
def test_param_counts_equal_official(name):
    E, stride, published = VIM_MODELS[name]
    official = official_vim_state_dict(E, stride=stride)
    model = timm.create_model(name, device='meta')
    n = sum(p.numel() for p in model.parameters())
    print(f'{name}: {n:,} params (official definition {sum(t.numel() for t in official.values()):,}, '
          f'published {published})')
    assert n == sum(t.numel() for t in official.values())
    # the full-size official layout maps onto the model with no missing or unexpected keys
    mapped = checkpoint_filter_fn({'model': official}, model)
    result = model.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_official_checkpoint_loads_values(tmp_path):
    sd = official_vim_state_dict(32, depth=2, device='cpu')
    path = tmp_path / 'vim.pth'
    torch.save({'model': {'module.' + k: v for k, v in sd.items()}, 'epoch': 1}, path)
    model = timm.create_model('vim_tiny', embed_dim=32, depth=2, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.state_dict()
    assert len(ours) == len(sd)
    pairs = {'blocks.1.mixer.dirs.1.A_log': 'layers.1.mixer.A_b_log',
             'blocks.1.mixer.dirs.0.A_log': 'layers.1.mixer.A_log',
             'blocks.0.mixer.dirs.1.conv1d.weight': 'layers.0.mixer.conv1d_b.weight',
             'blocks.0.mixer.dirs.1.dt_proj.bias': 'layers.0.mixer.dt_proj_b.bias',
             'blocks.0.mixer.dirs.1.D': 'layers.0.mixer.D_b',
             'norm.weight': 'norm_f.weight', 'pos_embed': 'pos_embed', 'head.weight': 'head.weight'}
    for k, ok in pairs.items():
        torch.testing.assert_close(ours[k], sd[ok])


def test_checkpoint_pos_embed_resampled_with_middle_class_token(tmp_path):
    sd = official_vim_state_dict(32, depth=1, device='cpu')
    path = tmp_path / 'vim.pth'
    torch.save({'model': sd}, path)
    model = timm.create_model('vim_tiny', embed_dim=32, depth=1, img_size=320, pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    pos = model.pos_embed
    assert pos.shape == (1, 20 * 20 + 1, 32)
    torch.testing.assert_close(pos[0, 200], sd['pos_embed'][0, 98])  # the class token's entry stays in the middle
    assert model.get_classifier().out_features == 10


def test_checkpoint_for_another_model_is_a_clear_error():
    model = timm.create_model('vim_small', device='meta')
    with pytest.raises(ValueError, match='checkpoint does not match'):
        checkpoint_filter_fn({'model': official_vim_state_dict(192)}, model)


def _rms(x, w, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _official_vim_forward(model, x):
    """hustvl/Vim VisionMamba.forward: add -> RMSNorm -> mixer with a running residual, middle class token."""
    x = model.patch_embed.proj(x).flatten(2).transpose(1, 2)
    B, M, _ = x.shape
    pos = M // 2
    x = torch.cat([x[:, :pos], model.cls_token.expand(B, -1, -1), x[:, pos:]], dim=1) + model.pos_embed
    residual, hidden = None, x
    for blk in model.blocks:
        residual = hidden if residual is None else residual + hidden
        hidden = blk.mixer(_rms(residual, blk.norm.weight))
    hidden = _rms(residual + hidden, model.norm.weight)
    return model.head(hidden[:, pos])


@pytest.mark.parametrize('patch_stride', [16, 8])
def test_forward_equals_official_formulation(patch_stride):
    model = timm.create_model('vim_tiny', embed_dim=16, depth=3, img_size=64, patch_stride=patch_stride,
                              num_classes=5).double().eval()
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), _official_vim_forward(model, x))


@pytest.mark.parametrize('name', list(VIM_MODELS))
def test_sizes_and_features(name):
    """96, 128 and non-square inputs run (position embedding resampled); NCHW intermediates without the cls token."""
    model = timm.create_model(name, embed_dim=32, depth=2, num_classes=7).eval()
    stride = model.patch_embed.stride
    with torch.no_grad():
        for size in ((96, 96), (128, 128), (96, 160)):
            x = torch.randn(1, 3, *size)
            assert model(x).shape == (1, 7)
            final, inters = model.forward_intermediates(x)
            grid = ((size[0] - 16) // stride + 1, (size[1] - 16) // stride + 1)
            assert final.shape == (1, grid[0] * grid[1] + 1, 32)
            assert [t.shape for t in inters] == [(1, 32, *grid)] * 2
        model.to(torch.bfloat16)
        out = model(torch.randn(1, 3, 96, 112, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


def test_pool_options_and_bad_config():
    model = timm.create_model('vim_tiny', embed_dim=16, depth=1, global_pool='avg').eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        mid = (feats.shape[1] - 1) // 2
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True),
                                   torch.cat([feats[:, :mid], feats[:, mid + 1:]], 1).mean(1))
    with pytest.raises(ValueError, match='1-D'):
        timm.create_model('vim_tiny', directions=('h', 'v'), device='meta')
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 64, 64))
    with pytest.raises(ValueError, match='at least 16x16'):
        model(torch.randn(1, 3, 8, 64))


def test_flops_match_the_analytic_count():
    """fvcore + the scan handle count exactly the projections and scans the model runs (224x224, Vim-Ti)."""
    E, Di, R, N, L, depth = 192, 384, 12, 16, 197, 24
    per_block = (L * E * 2 * Di + 2 * L * Di * (R + 2 * N) + 2 * L * R * Di + L * Di * E
                 + scan_flops(1, 2, Di, L, N, with_D=True, with_z=True, map_length=L))
    expected = 196 * E * 3 * 256 + depth * per_block + E * 1000
    flops = count_flops(timm.create_model('vim_tiny'))
    print(f'vim_tiny: {flops / 1e9:.3f} GFLOPs (fvcore, 9*L*D*N scans; analytic {expected / 1e9:.3f})')
    assert abs(flops - expected) / expected < 1e-3
