"""GroupMamba: exact parameter counts, FLOPs, official checkpoints, the layer and the whole model against a literal
re-implementation of the official formulation, the grouped plan on every scan backend, the distillation head.

The "official" side is written from the official definitions (Amshaker/GroupMamba classification/models/
groupmamba.py: GroupMambaLayer, Block_mamba, PVT2FFN, ClassBlock, Stem, DownSamples, GroupMamba; ss2d.py: SS2D
forward type v2; csms6s.py: CrossScan_1..4 / CrossMerge_1..4), not from our model: four separate SS2D branches,
each with its own one-direction cross-scan and a step-by-step selective scan.
"""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

import vssm  # noqa: F401
from vssm.models.groupmamba import checkpoint_filter_fn, checkpoint_to_official
from vssm.ops import GROUPED_PLAN, default_backend, plan_scan_reference, plan_selective_scan
from vssm.ops.flops import count_flops
from official_keys import official_param_count, official_state_dict

# ../shared/official_keys/groupmamba_*.keys.txt (made by instantiating the official code), gzipped into the repo
NAMES = ('groupmamba_tiny', 'groupmamba_small', 'groupmamba_base')
# ISSUE 14 / the official definitions with num_classes 1000 and the distillation head
OFFICIAL_PARAMS = {'groupmamba_tiny': 23_361_917, 'groupmamba_small': 34_781_555, 'groupmamba_base': 57_150_838}
PUBLISHED_GFLOPS = {'groupmamba_tiny': 4.5, 'groupmamba_small': 7.0, 'groupmamba_base': 14.0}
TINY = dict(depths=(1, 1, 1, 1), dims=(16, 32, 48, 64), stem_hidden_dim=8)






# ------------------------------------------------------------------------------------ counts, FLOPs

@pytest.mark.parametrize('name', NAMES)
def test_param_counts_equal_official(name):
    ours = sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
    from_keys = official_param_count(name)
    assert ours == from_keys == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', NAMES)
def test_flops_match_published(name):
    gflops = count_flops(timm.create_model(name)) / 1e9
    print(f'{name}: {gflops:.3f} GFLOPs at 224x224 (published {PUBLISHED_GFLOPS[name]})')
    assert abs(gflops - PUBLISHED_GFLOPS[name]) / PUBLISHED_GFLOPS[name] < 0.05


# ------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize('name', NAMES)
def test_official_layout_maps_onto_every_key(name):
    model = timm.create_model(name, device='meta')
    mapped = checkpoint_filter_fn(official_state_dict(name, device='meta'), model)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def test_official_release_loads_through_timm(tmp_path):
    """The HF release layout (a bare EMA state dict) loads by timm's pretrained path, every tensor in its place."""
    sd = official_state_dict('groupmamba_tiny')
    path = tmp_path / 'groupmamba_tiny_ema.pth'
    torch.save(sd, path)
    model = timm.create_model('groupmamba_tiny', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.state_dict()
    # every official tensor landed somewhere (the four groups' SS2D tensors are stacked: fewer, larger tensors)
    assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in sd.values())
    mapped = checkpoint_filter_fn(sd, model)
    assert set(mapped) == set(ours) and all(torch.equal(mapped[k], ours[k]) for k in ours)
    pairs = {
        'stem.conv.4.running_var': 'patch_embed1.conv.4.running_var',
        'stages.1.downsample.1.weight': 'patch_embed2.proj.weight',
        'stages.3.downsample.3.bias': 'patch_embed4.norm.bias',
        'stages.2.norm.weight': 'norm3.weight',
        'stages.2.blocks.8.mixer.affinity.global_reduce.weight': 'block3.8.attn.fc1.weight',
        'stages.0.blocks.2.mixer.skip_scale': 'block1.2.attn.skip_scale',
        'stages.0.blocks.2.mlp.dwconv.weight': 'block1.2.mlp.dwconv.dwconv.weight',
        'stages.1.blocks.0.norm2.bias': 'block2.0.norm2.bias',
        'head.cls_block.post_norm.weight': 'post_network.0.norm1.weight',
        'head.cls_block.mixer.proj.weight': 'post_network.0.attn.proj.weight',
        'head.norm.weight': 'norm4.weight',
        'head.fc.weight': 'head.weight',
        'head.fc_dist.bias': 'dist_head.bias',
    }
    for ours_key, official_key in pairs.items():
        torch.testing.assert_close(ours[ours_key], sd[official_key], rtol=0, atol=0)
    # group k of the stacked SS2D tensors is the official mamba_g{k+1}
    p, q = 'stages.1.blocks.3.mixer.ssm.', 'block2.3.attn.mamba_g'
    for k in range(4):
        assert torch.equal(ours[p + 'in_proj_weight'][k], sd[f'{q}{k + 1}.in_proj.weight'])
        assert torch.equal(ours[p + 'x_proj_weight'][k], sd[f'{q}{k + 1}.x_proj_weight'][0])
        assert torch.equal(ours[p + 'A_logs'].view(4, -1, 1)[k], sd[f'{q}{k + 1}.A_logs'])
        assert torch.equal(ours[p + 'conv2d.bias'].view(4, -1)[k], sd[f'{q}{k + 1}.conv2d.bias'])
        assert torch.equal(ours[p + 'out_norm.weight'][k], sd[f'{q}{k + 1}.out_norm.weight'])


def test_official_training_checkpoint_and_new_head(tmp_path):
    """The official train.py layout ({'model', 'model_ema', 'epoch', ...}, DDP prefix) loads; another num_classes
    gets new classifiers (both heads)."""
    sd = official_state_dict('groupmamba_small')
    path = tmp_path / 'ckpt_epoch_299.pth'
    torch.save({'model': {'module.' + k: v for k, v in sd.items()}, 'model_ema': sd, 'epoch': 299,
                'max_accuracy': 83.9}, path)
    model = timm.create_model('groupmamba_small', pretrained=True, num_classes=10,
                              pretrained_cfg_overlay=dict(file=str(path)))
    assert [c.out_features for c in model.get_classifier()] == [10, 10]
    torch.testing.assert_close(model.state_dict()['head.norm.bias'], sd['norm4.bias'], rtol=0, atol=0)


def test_checkpoint_for_another_model_is_a_clear_error():
    with pytest.raises(ValueError, match='checkpoint does not match groupmamba_small'):
        checkpoint_filter_fn(official_state_dict('groupmamba_tiny', device='meta'),
                             timm.create_model('groupmamba_small', device='meta'))


def test_official_layout_round_trip():
    from vssm.tools_common.official_layout import to_official
    model = timm.create_model('groupmamba_tiny', **TINY)
    official = to_official(model.state_dict(), model)  # raises unless the filter maps it back exactly
    assert any(k.endswith('attn.mamba_g4.dt_projs_weight') for k in official)
    assert 'dist_head.weight' in official and 'norm4.weight' in official


# --------------------------------------------------------- the official formulation, written out literally

def _ln(x, sd, p, eps):
    return F.layer_norm(x, x.shape[-1:], sd[p + 'weight'], sd[p + 'bias'], eps)


def _selective_scan_steps(u, delta, A, B, C, D):
    """h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t h_t + D u_t; u, delta (B, D, L), B, C (B, N, L)."""
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, :, t, None] * A) * h + delta[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, dim=-1)


# CrossScan_1..4 (B, D, H, W) -> (B, D, L) and CrossMerge_1..4 back to row-major positions
CROSS_SCAN = {
    1: lambda x: x.flatten(2),
    2: lambda x: x.transpose(2, 3).flatten(2),
    3: lambda x: x.flatten(2).flip(-1),
    4: lambda x: x.transpose(2, 3).flatten(2).flip(-1),
}
CROSS_MERGE = {
    1: lambda y, H, W: y,
    2: lambda y, H, W: y.reshape(y.shape[0], -1, W, H).transpose(2, 3).flatten(2),
    3: lambda y, H, W: y.flip(-1),
    4: lambda y, H, W: y.reshape(y.shape[0], -1, W, H).transpose(2, 3).flatten(2).flip(-1),
}


def official_ss2d(x, sd, p, direction, scan=None):
    """SS2D forward type v2 with k_group 1 on channel-last x (B, H, W, Dg): z-gated, out_norm LayerNorm."""
    x, z = F.linear(x, sd[p + 'in_proj.weight']).chunk(2, dim=-1)
    z = F.silu(z)
    D = x.shape[-1]
    x = F.silu(F.conv2d(x.permute(0, 3, 1, 2), sd[p + 'conv2d.weight'], sd[p + 'conv2d.bias'], padding=1, groups=D))
    Bt, _, H, W = x.shape
    xs = (scan or CROSS_SCAN[direction])(x)[:, None]  # (B, 1, D, L)
    R, N = sd[p + 'dt_projs_weight'].shape[-1], sd[p + 'A_logs'].shape[1]
    dts, Bs, Cs = torch.split(torch.einsum('bkdl,kcd->bkcl', xs, sd[p + 'x_proj_weight']), [R, N, N], dim=2)
    dts = torch.einsum('bkrl,kdr->bkdl', dts, sd[p + 'dt_projs_weight'])
    delta = F.softplus(dts[:, 0] + sd[p + 'dt_projs_bias'].view(1, -1, 1))
    y = _selective_scan_steps(xs[:, 0], delta, -torch.exp(sd[p + 'A_logs']), Bs[:, 0], Cs[:, 0], sd[p + 'Ds'])
    y = CROSS_MERGE[direction](y, H, W).transpose(1, 2).reshape(Bt, H, W, D)
    return F.linear(_ln(y, sd, p + 'out_norm.', 1e-5) * z, sd[p + 'out_proj.weight'])


def official_layer(x, H, W, sd, p, scans=None):
    """GroupMambaLayer.forward on tokens (B, N, C)."""
    Bt, N, C = x.shape
    x = _ln(x, sd, p + 'norm.', 1e-5)
    gate = torch.sigmoid(F.linear(F.relu(F.linear(x.mean(1), sd[p + 'fc1.weight'], sd[p + 'fc1.bias'])),
                                  sd[p + 'fc2.weight'], sd[p + 'fc2.bias']))
    xm = x.reshape(Bt, H, W, C)
    groups = xm.chunk(4, dim=-1)
    y = torch.cat([official_ss2d(groups[g - 1], sd, f'{p}mamba_g{g}.', g, (scans or {}).get(g))
                   for g in (1, 2, 3, 4)], dim=-1) * sd[p + 'skip_scale'] * xm
    y = y.reshape(Bt, N, C) * gate[:, None]
    return F.linear(_ln(y, sd, p + 'norm.', 1e-5), sd[p + 'proj.weight'], sd[p + 'proj.bias'])


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + 'running_mean'], sd[p + 'running_var'], sd[p + 'weight'], sd[p + 'bias'],
                        training=False, eps=1e-5)


def official_model(img, sd, depths):
    """GroupMamba.forward in eval mode -> (head logits, dist_head logits)."""
    x = img
    for i in (0, 3, 6):  # Stem: 7x7 s2 conv, then two 3x3 convs, each with BN + ReLU
        w = sd[f'patch_embed1.conv.{i}.weight']
        x = F.relu(_bn(F.conv2d(x, w, stride=2 if i == 0 else 1, padding=w.shape[-1] // 2), sd,
                       f'patch_embed1.conv.{i + 1}.'))
    for s, depth in enumerate(depths, start=1):
        p = f'patch_embed{s}.'
        x = F.conv2d(x, sd[p + 'proj.weight'], sd[p + 'proj.bias'], stride=2, padding=1)
        Bt, C, H, W = x.shape
        x = _ln(x.flatten(2).transpose(1, 2), sd, p + 'norm.', 1e-5)
        for j in range(depth):
            p = f'block{s}.{j}.'
            x = x + official_layer(x, H, W, sd, p + 'attn.')
            h = F.linear(_ln(x, sd, p + 'norm2.', 1e-6), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias'])
            h = F.conv2d(h.transpose(1, 2).reshape(Bt, -1, H, W), sd[p + 'mlp.dwconv.dwconv.weight'],
                         sd[p + 'mlp.dwconv.dwconv.bias'], padding=1, groups=h.shape[-1])
            x = x + F.linear(F.gelu(h.flatten(2).transpose(1, 2)), sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
        if s != len(depths):
            x = _ln(x, sd, f'norm{s}.', 1e-6).reshape(Bt, H, W, C).permute(0, 3, 1, 2)
    # forward_cls: the mean token through the ClassBlock (post-norm after its layer), then the last norm
    p = 'post_network.0.'
    cls = x.mean(1, keepdim=True)
    cls = cls + _ln(official_layer(cls, 1, 1, sd, p + 'attn.'), sd, p + 'norm1.', 1e-6)
    h = F.gelu(F.linear(_ln(cls, sd, p + 'norm2.', 1e-6), sd[p + 'mlp.fc1.weight'], sd[p + 'mlp.fc1.bias']))
    cls = cls + F.linear(h, sd[p + 'mlp.fc2.weight'], sd[p + 'mlp.fc2.bias'])
    x = _ln(cls[:, 0], sd, f'norm{len(depths)}.', 1e-6)
    return F.linear(x, sd['head.weight'], sd['head.bias']), F.linear(x, sd['dist_head.weight'], sd['dist_head.bias'])


def _randomise(model: nn.Module) -> None:
    """Random weights and BN statistics (not the init), large enough that every tensor's role shows."""
    with torch.no_grad():
        for name, t in model.named_parameters():
            if 'norm' in name and name.endswith('weight'):
                t.copy_(1 + 0.2 * torch.randn_like(t))
            else:
                t.copy_(0.3 * torch.randn_like(t))
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 1.5)


def _tiny_official(**kwargs):
    model = timm.create_model('groupmamba_tiny', **{**TINY, **kwargs}).double().eval()
    _randomise(model)
    return model, checkpoint_to_official(model.state_dict(), model)


@pytest.mark.parametrize('H,W', [(5, 7), (4, 3), (1, 6)])
def test_layer_equals_official_formulation(H, W):
    """One GroupMambaLayer (one grouped scan call) == four official SS2D branches, float64, odd/non-square maps."""
    model, sd = _tiny_official()
    layer = model.stages[1].blocks[0].mixer
    x = torch.randn(2, H, W, 32, dtype=torch.float64)
    with torch.no_grad():
        ours = layer(x)
        official = official_layer(x.reshape(2, H * W, 32), H, W, sd, 'block2.0.attn.').reshape(2, H, W, 32)
        torch.testing.assert_close(ours, official)
        if H > 1 and W > 1:  # the directions matter: group 2 scanned row-major instead gives other values
            wrong = official_layer(x.reshape(2, H * W, 32), H, W, sd, 'block2.0.attn.', scans={2: CROSS_SCAN[1]})
            assert not torch.allclose(ours, wrong.reshape(2, H, W, 32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('size', [(40, 56), (36, 36)])
def test_model_equals_official_formulation(size):
    """The whole model (stem, downsamples, stage norms, class block, both heads) in eval mode, float64."""
    model, sd = _tiny_official(drop_path_rate=0.)
    img = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        head, dist = official_model(img, sd, TINY['depths'])
        torch.testing.assert_close(model(img), (head + dist) / 2)
        model.train().set_distilled_training(True)
        for m in model.modules():  # eval BN statistics, to compare the training-mode heads
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        ours_head, ours_dist = model(img)
    torch.testing.assert_close(ours_head, head)
    torch.testing.assert_close(ours_dist, dist)


# ------------------------------------------------------------------------ the grouped plan on every backend

GROUPED_BACKENDS = ('reference', 'fast', 'cpu', 'triton')
SCAN_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_weight')


def _grouped_inputs(Bt, Dm, N, R, H, W, dtype):
    K, L = GROUPED_PLAN.num_directions, H * W
    t = dict(
        u=torch.randn(Bt, L, K * Dm, dtype=dtype).transpose(1, 2),  # channel-last map, as GroupedSS2D passes it
        delta=0.5 * torch.randn(Bt, K, R, L, dtype=dtype),
        A=-torch.rand(K * Dm, N, dtype=dtype) - 0.2,
        B=torch.randn(Bt, K, N, L, dtype=dtype), C=torch.randn(Bt, K, N, L, dtype=dtype),
        D=torch.randn(K * Dm, dtype=dtype), z=torch.randn(Bt, K * Dm, L, dtype=dtype),
        delta_bias=0.1 * torch.randn(K * Dm, dtype=dtype), delta_weight=0.5 * torch.randn(K, Dm, R, dtype=dtype),
    )
    return t, GROUPED_PLAN.index(H, W), L


def _four_separate_scans(t, H, W):
    """Oracle without index maps: group k cross-scanned by official CrossScan_{k+1}, scanned step by step,
    merged by CrossMerge_{k+1}, gated by silu(z)."""
    Bt, KD, L = t['u'].shape
    Dm = KD // 4
    outs = []
    for k in range(4):
        ch = slice(k * Dm, (k + 1) * Dm)
        u = CROSS_SCAN[k + 1](t['u'][:, ch].reshape(Bt, Dm, H, W))
        delta = F.softplus(torch.einsum('dr,brl->bdl', t['delta_weight'][k], t['delta'][:, k])
                           + t['delta_bias'][ch, None])
        y = _selective_scan_steps(u, delta, t['A'][ch], t['B'][:, k], t['C'][:, k], t['D'][ch])
        outs.append(CROSS_MERGE[k + 1](y, H, W) * F.silu(t['z'][:, ch]))
    return torch.cat(outs, dim=1)


def _scan_with_grads(fn, t, index, L, grad_out, **kw):
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in t.items()}
    out = fn(*[leaves[n] for n in SCAN_INPUTS[:8]], index=index, length=L, merge='group',
             delta_weight=leaves['delta_weight'], **kw)
    out.backward(grad_out.to(out.dtype))
    return out.detach(), {n: v.grad for n, v in leaves.items()}


@pytest.mark.parametrize('H,W', [(5, 7), (4, 4)])
def test_grouped_reference_equals_four_separate_scans(H, W):
    t, index, L = _grouped_inputs(2, 3, 2, 2, H, W, torch.float64)
    out = plan_scan_reference(*[t[n] for n in SCAN_INPUTS[:8]], index=index, length=L, merge='group',
                              delta_weight=t['delta_weight'])
    torch.testing.assert_close(out, _four_separate_scans(t, H, W))


def _require_grouped_backend(name):
    """Skip (with the reason) where the backend cannot run a grouped plan here."""
    if name == 'triton':
        triton = pytest.importorskip('triton', reason='Triton is an optional dependency')
        if type(triton.language.zeros).__name__ != 'InterpretedFunction':
            pytest.skip('Triton was imported before TRITON_INTERPRET=1; run this file alone to use the interpreter')
    if name == 'cpu':
        from vssm.ops.cpu_kernel import load_extension
        if load_extension() is None:
            pytest.skip('no C++ compiler: the fused CPU scan is not available')
    try:
        default_backend('cpu', merge='group', backend=name)
    except ValueError as e:  # not built here
        pytest.skip(str(e))


@pytest.mark.parametrize('backend', GROUPED_BACKENDS)
@pytest.mark.parametrize('H,W', [(5, 7), (3, 1)])
def test_grouped_plan_backend_matches_reference(backend, H, W):
    """Every backend that runs merge='group' against the float64 reference: values and every input's gradient
    (low-rank Δ, z gate, D, bias), odd and degenerate maps. float32 kernels get float32 inputs."""
    _require_grouped_backend(backend)
    exact = backend in ('reference', 'fast')
    t64, index, L = _grouped_inputs(2, 3, 2, 2, H, W, torch.float64)
    ref = plan_scan_reference(*[t64[n] for n in SCAN_INPUTS[:8]], index=index, length=L, merge='group',
                              delta_weight=t64['delta_weight'])
    grad_out = torch.randn_like(ref)
    ref, ref_g = _scan_with_grads(plan_scan_reference, t64, index, L, grad_out)
    t = t64 if exact else {n: v.float() for n, v in t64.items()}
    out, g = _scan_with_grads(plan_selective_scan, t, index, L, grad_out, backend=backend)
    tol = dict(rtol=1e-9, atol=1e-9) if exact else dict(rtol=1e-4, atol=1e-4)
    assert out.dtype == t['u'].dtype and out.shape == ref.shape
    torch.testing.assert_close(out.double(), ref, **tol)
    for n in SCAN_INPUTS:
        assert g[n].shape == t[n].shape and g[n].dtype == t[n].dtype, n
        torch.testing.assert_close(g[n].double(), ref_g[n], **(tol if exact else dict(rtol=1e-3, atol=1e-3)),
                                   msg=lambda m: f'gradient of {n}: {m}')


def test_one_scan_call_per_layer(monkeypatch):
    """The four groups' scans are one plan_selective_scan call with merge='group'."""
    import vssm.layers.grouped_ss2d as gss
    calls = []
    real = gss.plan_selective_scan

    def spy(*a, **k):
        calls.append(k['merge'])
        return real(*a, **k)
    monkeypatch.setattr(gss, 'plan_selective_scan', spy)
    model = timm.create_model('groupmamba_tiny', **TINY).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    n_layers = sum(TINY['depths']) + 1  # the blocks and the class block
    assert calls == ['group'] * n_layers


# ----------------------------------------------------------------------------- heads, API, training

def test_distillation_head_follows_timm_deit():
    model = timm.create_model('groupmamba_tiny', **TINY, num_classes=5)
    x = torch.randn(2, 3, 64, 64)
    assert model.train()(x).shape == (2, 5)  # plain training: the mean of both heads, as DeiT
    model.set_distilled_training(True)
    head, dist = model(x)
    assert head.shape == dist.shape == (2, 5)
    model.eval()
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        out = model(x)
    assert pre.shape == (2, model.head_hidden_size)
    fc, fc_dist = model.get_classifier()
    torch.testing.assert_close(out, (fc(pre) + fc_dist(pre)) / 2)
    model.reset_classifier(7)
    assert [c.out_features for c in model.get_classifier()] == [7, 7]
    model.reset_classifier(0, '')
    assert model.head.cls_block is None and model(x).shape == (2, 2, 2, 64)
    single = timm.create_model('groupmamba_tiny', **TINY, distilled=False, num_classes=3).train()
    assert isinstance(single.get_classifier(), nn.Linear) and single(x).shape == (2, 3)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match='multiples of 4'):
        timm.create_model('groupmamba_tiny', dims=(18, 32, 48, 64), depths=(1, 1, 1, 1), device='meta')
    with pytest.raises(ValueError, match="global_pool='avg'"):
        timm.create_model('groupmamba_tiny', global_pool='avg', device='meta')
    with pytest.raises(ValueError, match='at least 16'):
        timm.create_model('groupmamba_tiny', dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), device='meta')
    with pytest.raises(TypeError):
        timm.create_model('groupmamba_tiny', not_an_arg=1, device='meta')
    model = timm.create_model('groupmamba_tiny', **TINY).eval()
    with pytest.raises(ValueError, match='expects 3 input channels'):
        model(torch.randn(1, 1, 64, 64))


def test_distillation_training_task_and_no_decay_groups(tmp_path):
    """tools/train.py builds timm's TokenDistillationTask: hard targets from a frozen eval-mode teacher."""
    import importlib.util
    path = Path(__file__).parents[1] / 'tools' / 'train.py'
    spec = importlib.util.spec_from_file_location('vssm_tools_train_gm', path)
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    from timm.task import TokenDistillationTask
    student = timm.create_model('groupmamba_tiny', **TINY, num_classes=10)
    teacher = timm.create_model('test_resnet', num_classes=10)
    torch.save(teacher.state_dict(), tmp_path / 'teacher.pth')
    args = train.parse_args(['--kd-model-name', 'test_resnet', '--kd-model-checkpoint', str(tmp_path / 'teacher.pth'),
                             '--kd-distill-type', 'token', '--kd-token-distill-type', 'hard',
                             '--task-loss-weight', '0.5'])
    task = train.build_task(student, nn.CrossEntropyLoss(), args, dict(device=torch.device('cpu'), primary=False))
    assert isinstance(task, TokenDistillationTask) and task.distill_type == 'hard'
    assert (task.task_loss_weight, task.distill_loss_weight) == (0.5, 0.5)
    assert student.head.distilled_training and not task.teacher.model.training
    torch.testing.assert_close(task.teacher.model.state_dict()['fc.weight'], teacher.state_dict()['fc.weight'])
    student.train()
    result = task(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3]))
    assert torch.isfinite(result['loss']) and result['output'].shape == (4, 10)
    # the official optimizer setup: every 1-D tensor undecayed, the stacked per-group out_norm too
    from timm.optim import param_groups_weight_decay
    no_decay = param_groups_weight_decay(student, 0.05, no_weight_decay_list=student.no_weight_decay())[0]['params']
    names = {id(p): n for n, p in student.named_parameters()}
    undecayed = {names[id(p)] for p in no_decay}
    assert 'stages.0.blocks.0.mixer.ssm.out_norm.weight' in undecayed
    assert 'stages.0.blocks.0.mixer.ssm.A_logs' not in undecayed  # (D, 1) in the official code: decayed there too
