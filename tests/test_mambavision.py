"""MambaVision: exact sizes, official checkpoint layouts, float64 equivalence with a literal re-implementation of
the official formulation (written here from the issue's facts), any input size, pretrained-tag windows, bf16."""
import argparse
import math

import pytest
import timm
import torch
import torch.nn.functional as F

import vssm  # noqa: F401  (registers the models)
from vssm.models.mambavision import MambaVision, MambaVisionMixer, checkpoint_filter_fn
from vssm.serialization import load_checkpoint_file
from official_keys import official_shapes


# parameter counts of the official definitions (num_classes 1000)
OFFICIAL_PARAMS = {
    'mambavision_tiny': 31_794_248, 'mambavision_tiny2': 35_104_008, 'mambavision_small': 50_140_584,
    'mambavision_base': 97_685_288, 'mambavision_large': 227_961_048, 'mambavision_large2': 241_554_824,
    'mambavision_large3': 739_570_472,
}

SHRUNK = dict(depths=(1, 1, 3, 2), dim=16, in_dim=8, num_heads=(1, 1, 2, 2), window_sizes=(4, 3), layer_scale=0.5)




@pytest.mark.parametrize('name', sorted(OFFICIAL_PARAMS))
def test_exact_parameter_counts_and_official_keys(name):
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    official = {k: torch.empty(s, device='meta') for k, s in official_shapes(name).items()}
    mapped = checkpoint_filter_fn(official, model)  # raises on any missing / unexpected key or wrong shape
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def _random_official_state_dict(name):
    g = torch.Generator().manual_seed(1)
    return {k: (torch.randint(0, 9, s, generator=g) if k.endswith('num_batches_tracked')
                else torch.randn(s, generator=g)) for k, s in official_shapes(name).items()}


def test_three_checkpoint_layouts_load_the_same_weights(tmp_path):
    """CheckpointSaver .pth.tar (state_dict taken, as the official loader; `module.` stripped), the HF
    transformers wrapper's `model.`-prefixed safetensors, and a bare dict: same weights, strict load."""
    from safetensors.torch import save_file
    official = _random_official_state_dict('mambavision_tiny')
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in official.items()}
    saver = tmp_path / 'mambavision_tiny_1k.pth.tar'
    torch.save({'epoch': 309, 'arch': 'mamba_vision_T', 'state_dict': {'module.' + k: v for k, v in official.items()},
                'state_dict_ema': ema, 'optimizer': {'state': {}, 'param_groups': []},
                'args': argparse.Namespace(model='mamba_vision_T', lr=1e-3), 'metric': 82.3}, saver)
    safetensors = tmp_path / 'model.safetensors'
    save_file({'model.' + k: v.contiguous() for k, v in official.items()}, str(safetensors))
    bare = tmp_path / 'bare.pth'
    torch.save(official, bare)

    model = timm.create_model('mambavision_tiny', device='meta')
    loaded = []
    for path in (saver, safetensors, bare):
        sd = checkpoint_filter_fn(load_checkpoint_file(path), model)
        target = timm.create_model('mambavision_tiny', device='meta').to_empty(device='cpu')
        target.load_state_dict(sd, strict=True)  # no missing or unexpected keys
        loaded.append(target.state_dict())
    for other in loaded[1:]:
        assert all(torch.equal(loaded[0][k], other[k]) for k in loaded[0])
    assert torch.equal(loaded[0]['stages.2.blocks.0.mixer.A_log'], official['levels.2.blocks.0.mixer.A_log'])
    assert torch.equal(loaded[0]['stages.3.downsample.weight'], official['levels.2.downsample.reduction.0.weight'])
    assert torch.equal(loaded[0]['head.fc.weight'], official['head.weight'])

    # through timm's own pretrained path (a local file in place of the hub download)
    model = timm.create_model('mambavision_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(safetensors)))
    assert torch.equal(model.stem[0].bn.running_var, official['patch_embed.conv_down.1.running_var'])
    assert torch.equal(model.stages[3].blocks[3].mixer.qkv.weight, official['levels.3.blocks.3.mixer.qkv.weight'])


def test_checkpoint_for_another_size_fails_clearly():
    model = timm.create_model('mambavision_small', device='meta')
    official = {k: torch.empty(s, device='meta') for k, s in official_shapes('mambavision_tiny').items()}
    with pytest.raises(ValueError, match='does not match mambavision_small'):
        checkpoint_filter_fn(official, model)


# ------------------------------------------------- literal re-implementation of the official formulation

def _official_mixer(m: MambaVisionMixer, x: torch.Tensor) -> torch.Tensor:
    """The official mixer, step by step: x (B, L, C)."""
    Bt, L, C = x.shape
    half, N, R = C // 2, m.d_state, m.dt_rank
    xz = (x @ m.in_proj.weight.t()).transpose(1, 2)  # (B, C, L)
    xs, z = xz[:, :half], xz[:, half:]
    xs = F.silu(F.conv1d(xs, m.conv1d_x.weight, padding='same', groups=half))
    z = F.silu(F.conv1d(z, m.conv1d_z.weight, padding='same', groups=half))
    x_dbl = xs.transpose(1, 2) @ m.x_proj.weight.t()  # (B, L, R + 2N)
    dt, Bm, Cm = x_dbl[..., :R], x_dbl[..., R:R + N], x_dbl[..., R + N:]
    dt = dt @ m.dt_proj.weight.t() + m.dt_proj.bias  # dt_proj with its bias ...
    delta = F.softplus(dt + m.dt_proj.bias)  # ... and the bias again as the scan's delta bias
    A = -torch.exp(m.A_log)
    h = x.new_zeros(Bt, half, N)
    ys = []
    for t in range(L):
        d = delta[:, t, :, None]  # (B, half, 1)
        h = torch.exp(d * A) * h + d * Bm[:, t, None, :] * xs[:, :, t, None]
        ys.append((h * Cm[:, t, None, :]).sum(-1) + m.D * xs[:, :, t])
    y = torch.cat([torch.stack(ys, dim=-1), z], dim=1)  # z concatenated, not a gate
    return y.transpose(1, 2) @ m.out_proj.weight.t()


def _official_attention(attn, x):
    Bt, L, C = x.shape
    heads = attn.num_heads
    qkv = (x @ attn.qkv.weight.t() + attn.qkv.bias).view(Bt, L, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // heads), dim=-1)
    return (w @ v).transpose(1, 2).reshape(Bt, L, C) @ attn.proj.weight.t() + attn.proj.bias


def _official_block(blk, x):
    C = x.shape[-1]
    ln1, ln2 = blk.norm1, blk.norm2
    mixer = blk.mixer
    h = F.layer_norm(x, (C,), ln1.weight, ln1.bias, ln1.eps)
    h = _official_mixer(mixer, h) if isinstance(mixer, MambaVisionMixer) else _official_attention(mixer, h)
    x = x + blk.ls1.gamma * h
    h = F.layer_norm(x, (C,), ln2.weight, ln2.bias, ln2.eps)
    h = F.gelu(h @ blk.mlp.fc1.weight.t() + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.t() + blk.mlp.fc2.bias
    return x + blk.ls2.gamma * h


def _official_windowed_stage(stage, x):
    """Downsample, zero-pad right / bottom to whole windows once, every block on each window's row-major
    tokens, merge, crop."""
    x = F.conv2d(x, stage.downsample.weight, stride=2, padding=1)
    Bt, C, H, W = x.shape
    ws = stage.window_size
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    padded = x.new_zeros(Bt, C, Hp, Wp)
    padded[:, :, :H, :W] = x
    out = torch.empty_like(padded)
    for b in range(Bt):  # windows in row-major order; each one's tokens row-major
        for i in range(0, Hp, ws):
            for j in range(0, Wp, ws):
                tokens = padded[b, :, i:i + ws, j:j + ws].reshape(C, ws * ws).t()[None]
                for blk in stage.blocks:
                    tokens = _official_block(blk, tokens)
                out[b, :, i:i + ws, j:j + ws] = tokens[0].t().reshape(C, ws, ws)
    return out[:, :, :H, :W]


def _randomize(module):
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        for m in module.modules():
            if isinstance(m, MambaVisionMixer):
                m.A_log.copy_(torch.rand(m.A_log.shape, generator=g, dtype=m.A_log.dtype))


def test_mixer_matches_official_formulation_float64():
    m = MambaVisionMixer(48, dtype=torch.float64)
    _randomize(m)
    x = torch.randn(3, 37, 48, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_mixer(m, x), rtol=1e-10, atol=1e-10)
    # the twice-added dt bias matters: once only is far off
    with torch.no_grad():
        m.dt_proj.bias.mul_(0.5)
        once = m(x)
        m.dt_proj.bias.mul_(2)
    assert (once - m(x)).abs().max() > 1e-3


def test_windowed_stage_matches_official_formulation_float64():
    """Stage 3 of a shrunk model: two mixers then one attention block, layer scale, a 7x10 map padded to 8x12."""
    model = MambaVision(num_classes=0, **SHRUNK, dtype=torch.float64).eval()
    stage = model.stages[2]
    assert [type(b.mixer).__name__ for b in stage.blocks] == ['MambaVisionMixer', 'MambaVisionMixer', 'Attention']
    _randomize(stage)
    x = torch.randn(2, 32, 14, 20, dtype=torch.float64)
    with torch.no_grad():
        ours = stage(x)
    assert ours.shape == (2, 64, 7, 10)
    torch.testing.assert_close(ours, _official_windowed_stage(stage, x), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ behaviour

@pytest.mark.parametrize('size', [(64, 64), (70, 45), (97, 131)])
def test_any_input_size_and_features(size):
    model = MambaVision(num_classes=5, **SHRUNK).eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        assert model(x).shape == (1, 5)
        feats = model.forward_intermediates(x, intermediates_only=True)
    expect = [(size[0], size[1])]
    for _ in range(5):  # each 3x3 stride-2 conv rounds up: the stem halves twice (stride 4), each later stage once
        expect.append(tuple(-(-s // 2) for s in expect[-1]))
    assert [tuple(f.shape[2:]) for f in feats] == expect[2:]
    assert [f.shape[1] for f in feats] == [16, 32, 64, 128]


def test_pretrained_tags_build_their_windows():
    def windows(name, **kw):
        m = timm.create_model(name, device='meta', **kw)
        return tuple(s.window_size for s in m.stages[2:])
    assert windows('mambavision_tiny') == (14, 7)
    assert windows('mambavision_large2') == (14, 7)
    assert windows('mambavision_large2.in21k_ft_in1k_512') == (32, 16)
    assert windows('mambavision_large3') == (16, 8)  # the default tag is the 256 px one (there is no 1K L3)
    assert windows('mambavision_large3.in21k_ft_in1k_512') == (32, 16)
    assert windows('mambavision_large3.in21k_ft_in1k_512', window_sizes=(8, 4)) == (8, 4)  # explicit wins
    cfg = timm.create_model('mambavision_large3.in21k_ft_in1k_512', device='meta').pretrained_cfg
    assert cfg['hf_hub_id'] == 'nvidia/MambaVision-L3-512-21K' and cfg['input_size'] == (3, 512, 512)
    assert 'non-commercial' in cfg['license']


def test_bf16_autocast_forward_backward_finite():
    model = MambaVision(num_classes=10, **SHRUNK).train()
    x = torch.randn(2, 3, 64, 80)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = model(x)
    assert out.dtype == torch.bfloat16
    out.float().logsumexp(-1).mean().backward()
    assert torch.isfinite(out.float()).all()
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), n


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match='window_sizes'):
        MambaVision(**dict(SHRUNK, window_sizes=(7,)), device='meta')
    with pytest.raises(ValueError, match='odd'):
        MambaVisionMixer(16, d_conv=4)
    with pytest.raises(ValueError, match='input channels'):
        MambaVision(**SHRUNK)(torch.randn(1, 1, 64, 64))


def test_flop_count_includes_windowed_attention():
    """fvcore has no SDPA handle: vssm.ops.flops counts q k^T and weights v per window (padded tokens included)."""
    from vssm.ops.flops import flops_by_operator
    flops = flops_by_operator(MambaVision(**SHRUNK), (3, 64, 64))
    # stage 3: one 4x4 window, 2 heads of 32; stage 4: a 2x2 map padded to one 3x3 window, 2 heads of 64
    assert flops['scaled_dot_product_attention'] == 2 * 16 * 16 * (32 + 32) + 2 * 9 * 9 * (64 + 64)
    assert flops['plan_scan'] > 0
