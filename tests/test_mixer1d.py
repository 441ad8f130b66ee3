"""MultiMamba (the 1-D multi-direction Mamba mixer of Vim / LocalVim) against the official formulations."""
import math

import pytest
import torch
import torch.nn.functional as F

from vssm.layers import MultiMamba
from vssm.layers.mamba1d import _causal_depthwise_conv
from vssm.ops import selective_scan_ref


def _mamba_inner(xz, d):
    """mamba_ssm's mamba_inner_fn_no_out_proj on a (B, 2D, L) sequence, with one direction's parameters."""
    L = xz.shape[-1]
    x, z = xz.chunk(2, dim=1)
    k = d.conv1d.weight.shape[-1]
    x = F.silu(F.conv1d(x, d.conv1d.weight, d.conv1d.bias, padding=k - 1, groups=x.shape[1])[..., :L])
    x_dbl = F.linear(x.transpose(1, 2), d.x_proj.weight)  # (B, L, R + 2N)
    R, N = d.dt_proj.weight.shape[1], d.A_log.shape[1]
    dt, B, C = torch.split(x_dbl, [R, N, N], dim=-1)
    dt = d.dt_proj.weight @ dt.transpose(1, 2)
    return selective_scan_ref(x, dt, -torch.exp(d.A_log), B.transpose(1, 2), C.transpose(1, 2), d.D, z=z,
                              delta_bias=d.dt_proj.bias, delta_softplus=True)


def _official_bimamba_v2(m: MultiMamba, x):
    """hustvl/Vim's Mamba(bimamba_type='v2', if_divide_out=True).forward."""
    xz = m.in_proj.weight @ x.transpose(1, 2)  # (B, 2D, L)
    out = _mamba_inner(xz, m.dirs[0])
    out_b = _mamba_inner(xz.flip(-1), m.dirs[1])
    return F.linear((out + out_b.flip(-1)).transpose(1, 2) / 2, m.out_proj.weight)


# LocalMamba's scans (official local_scan / MultiScan), with the column scan inverted correctly
def _scan(x, direction, H, W):
    """(B, L, C) map tokens -> (B, C, Lk) along `direction`."""
    B, L, C = x.shape
    name, flip = (direction[:-5], True) if direction.endswith('_flip') else (direction, False)
    if name == 'h':
        s = x.transpose(1, 2)
    elif name == 'v':
        s = x.view(B, H, W, C).permute(0, 3, 2, 1).reshape(B, C, L)
    else:
        k = int(name[1:])
        Hg, Wg = math.ceil(H / k), math.ceil(W / k)
        xp = F.pad(x.view(B, H, W, C), (0, 0, 0, Wg * k - W, 0, Hg * k - H))
        s = xp.view(B, Hg, k, Wg, k, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, -1)
    return s.flip(-1) if flip else s


def _reverse(s, direction, H, W):
    """(B, C, Lk) sequence -> (B, C, H*W) map order (padded windows cropped)."""
    B, C, _ = s.shape
    name, flip = (direction[:-5], True) if direction.endswith('_flip') else (direction, False)
    if flip:
        s = s.flip(-1)
    if name == 'h':
        return s
    if name == 'v':
        return s.view(B, C, W, H).transpose(2, 3).reshape(B, C, H * W)
    k = int(name[1:])
    Hg, Wg = math.ceil(H / k), math.ceil(W / k)
    s = s.view(B, C, Hg, Wg, k, k).permute(0, 1, 2, 4, 3, 5).reshape(B, C, Hg * k, Wg * k)
    return s[:, :, :H, :W].reshape(B, C, H * W)


def _bi_attn(gate, y):
    """LocalMamba's BiAttn on (B, L, C): x * sigmoid(select(gelu(reduce(mean_L(LN(x))))))."""
    g = F.layer_norm(y, y.shape[-1:], gate.norm.weight, gate.norm.bias).mean(1, keepdim=True)
    g = F.linear(F.gelu(F.linear(g, gate.global_reduce.weight, gate.global_reduce.bias)),
                 gate.channel_select.weight, gate.channel_select.bias)
    return y * torch.sigmoid(g)


def _official_multi_mamba(m: MultiMamba, x, H, W):
    """hunto/LocalMamba's MultiMamba.forward (no class token)."""
    xz = F.linear(x, m.in_proj.weight)
    outs = []
    for d, direction in zip(m.dirs, m.plan.directions):
        out = _mamba_inner(_scan(xz, direction, H, W), d)
        outs.append(_bi_attn(m.direction_gate, _reverse(out, direction, H, W).transpose(1, 2)))
    return F.linear(torch.stack(outs).sum(0), m.out_proj.weight)


def _official_multi_mamba_middle_cls(m: MultiMamba, x, H, W):
    """hunto/LocalMamba's MultiMamba.forward with use_middle_cls_token: the class token is split off, each
    direction scans the patches and gets the class token back at step (L - 1) // 2 of its sequence, and after
    the scan the token is split off again, the patches reversed, the token put back in the middle."""
    xz = F.linear(x, m.in_proj.weight)
    c = (xz.shape[1] - 1) // 2
    cls, patches = xz[:, c:c + 1], torch.cat([xz[:, :c], xz[:, c + 1:]], dim=1)
    outs = []
    for d, direction in zip(m.dirs, m.plan.directions):
        s = _scan(patches, direction, H, W)
        out = _mamba_inner(torch.cat([s[..., :c], cls.transpose(1, 2), s[..., c:]], dim=-1), d)
        cls_out, out = out[..., c:c + 1], torch.cat([out[..., :c], out[..., c + 1:]], dim=-1)
        out = _reverse(out, direction, H, W)
        out = torch.cat([out[..., :c], cls_out, out[..., c:]], dim=-1)
        outs.append(_bi_attn(m.direction_gate, out.transpose(1, 2)))
    return F.linear(torch.stack(outs).sum(0), m.out_proj.weight)


@pytest.mark.parametrize('H,W,directions', [
    (5, 5, ('h_flip', 'v', 'w2', 'w7_flip')),  # 25 patches: odd, so a flip is not the mirror of the token order
    (3, 4, ('h', 'v_flip', 'w2_flip', 'w7')),
])
def test_local_vim_mixer_with_middle_class_token_equals_official(H, W, directions):
    m = MultiMamba(8, directions, direction_gate=True, d_state=3).double()
    x = torch.randn(2, H * W + 1, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x, (H, W), middle_token=True), _official_multi_mamba_middle_cls(m, x, H, W))
    with pytest.raises(ValueError, match='plus a class token'):
        m(x[:, 1:], (H, W), middle_token=True)


def test_vim_mixer_equals_official_bimamba_v2():
    m = MultiMamba(12, ('h', 'h_flip'), d_state=4).double()
    x = torch.randn(2, 11, 12, dtype=torch.float64)
    torch.testing.assert_close(m(x), _official_bimamba_v2(m, x))


@pytest.mark.parametrize('H,W,directions', [
    (5, 7, ('h', 'v_flip', 'w2', 'w3_flip')),
    (6, 4, ('h_flip', 'v', 'w7', 'w2_flip')),
])
def test_local_vim_mixer_equals_official_multi_mamba(H, W, directions):
    m = MultiMamba(8, directions, direction_gate=True, d_state=3).double()
    x = torch.randn(2, H * W, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x, (H, W)), _official_multi_mamba(m, x, H, W))


def test_flipped_direction_contributes():
    """Changing the last token changes the first output only through the flipped scan."""
    torch.manual_seed(0)
    bi = MultiMamba(8, ('h', 'h_flip'), d_state=4).double().eval()
    uni = MultiMamba(8, ('h',), d_state=4).double().eval()
    x = torch.randn(1, 9, 8, dtype=torch.float64)
    x2 = x.clone()
    x2[:, -1] += 1.0
    with torch.no_grad():
        assert (bi(x)[:, 0] - bi(x2)[:, 0]).abs().max() > 1e-6  # float64 noise is ~1e-16
        assert torch.equal(uni(x)[:, 0], uni(x2)[:, 0])


def test_directions_own_their_parameters():
    """Upstream LocalMamba aliased every A_log_k to one tensor; here each direction trains its own."""
    m = MultiMamba(8, ('h', 'v', 'w2', 'w2_flip'), direction_gate=True, d_state=2)
    ptrs = {d.A_log.data_ptr() for d in m.dirs}
    assert len(ptrs) == 4
    m(torch.randn(1, 12, 8), (3, 4)).sum().backward()
    grads = [d.A_log.grad for d in m.dirs]
    assert all(g is not None for g in grads)
    assert not torch.allclose(grads[0], grads[1])


def test_causal_conv_equals_conv1d():
    x = torch.randn(2, 3, 10, 5, dtype=torch.float64)  # (B, K, L, C)
    w = torch.randn(3, 5, 4, dtype=torch.float64)
    b = torch.randn(3, 5, dtype=torch.float64)
    out = _causal_depthwise_conv(x, w, b)
    for k in range(3):
        ref = F.conv1d(x[:, k].transpose(1, 2), w[k][:, None], b[k], padding=3, groups=5)[..., :10]
        torch.testing.assert_close(out[:, k], ref.transpose(1, 2))


def test_dtypes_devices_and_bad_grid():
    m = MultiMamba(8, ('h', 'h_flip'), d_state=2)
    out = m.to(torch.bfloat16)(torch.randn(2, 7, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 7, 8)
    meta = MultiMamba(8, ('h', 'v', 'w2', 'w2_flip'), direction_gate=True, device='meta')
    assert meta(torch.randn(2, 12, 8, device='meta'), (3, 4)).shape == (2, 12, 8)
    with pytest.raises(ValueError, match='12 tokens for a 3x5 grid'):
        meta(torch.randn(2, 12, 8, device='meta'), (3, 5))
    with pytest.raises(ValueError, match='unknown scan direction'):
        MultiMamba(8, ('h', 'diagonal'))
