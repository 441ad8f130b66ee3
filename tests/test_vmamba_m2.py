"""VMamba's Mamba-2 (m2) models: exact parameter counts, official layouts loading, the SSD2D mixer against the
official formulation written out, FLOPs with the SSD counted, training steps and bad configuration."""
import gzip
import re
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

import vssm  # noqa: F401
from vssm.layers import SSD2D, VSSBlock
from vssm.models.vmamba import checkpoint_filter_fn
from vssm.ops.flops import count_flops, flops_by_operator, ssd_flops

# ../shared/official_keys/vmamba_*_m2.keys.txt (the official classification/models/vmamba.py builders), gzipped
DATA = Path(__file__).parent / 'data'
OFFICIAL_PARAMS = {'vmamba_tiny_m2': 25_340_296, 'vmamba_small_m2': 39_079_816, 'vmamba_base_m2': 67_527_528}


def _official_shapes(name):
    text = gzip.decompress((DATA / f'{name}.official_keys.txt.gz').read_bytes()).decode()
    return {k: tuple(int(s) for s in re.findall(r'\d+', shape)) for k, shape in
            (line.split('\t') for line in text.splitlines())}


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_param_counts_equal_official(name):
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]
    assert sum(torch.Size(s).numel() for s in _official_shapes(name).values()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_official_layout_maps_onto_every_key(name):
    """Every official key lands on one of ours with its shape; none missing, none left over."""
    model = timm.create_model(name, device='meta')
    sd = {k: torch.empty(s, device='meta') for k, s in _official_shapes(name).items()}
    ours = checkpoint_filter_fn({'model': sd}, model)
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.items()} == want


def test_official_checkpoint_loads_through_timm(tmp_path):
    shapes = _official_shapes('vmamba_tiny_m2')
    sd = {k: torch.randn(s) for k, s in shapes.items()}
    path = tmp_path / 'ckpt.pth'
    torch.save({'model': sd}, path)
    model = timm.create_model('vmamba_tiny_m2', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
    ours = model.state_dict()
    assert len(ours) == len(sd)
    block = 'layers.2.blocks.3.op.'
    for official, mine in [('conv2d.1.weight', 'conv2d.weight'), ('Ds', 'Ds'), ('A_logs', 'A_logs'),
                           ('x_proj_weight', 'x_proj_weight'), ('dt_projs_bias', 'dt_projs_bias')]:
        torch.testing.assert_close(ours['stages.2.blocks.3.op.' + mine], sd[block + official])
    torch.testing.assert_close(ours['head.fc.weight'], sd['classifier.head.weight'])


def test_no_release_weights():
    for name in OFFICIAL_PARAMS:
        assert timm.models.get_pretrained_cfg(name).url == ''


def _official_m0(op: SSD2D, x: torch.Tensor) -> torch.Tensor:
    """The official m0_noz forward written out: flips / transposes for the 4 directions, x_proj einsum,
    the per-head recurrence step by step, cross-merge by undoing the flips, out_norm, out_proj."""
    Bt, H, W, _ = x.shape
    x = op.in_proj(x).permute(0, 3, 1, 2)
    x = F.silu(F.conv2d(x, op.conv2d.weight, None, padding=1, groups=x.shape[1]))
    D, L = x.shape[1], H * W
    K, R = op.A_logs.shape
    P, N = D // R, op.d_state
    rows, cols = x.flatten(2), x.transpose(2, 3).flatten(2)
    xs = torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (B, K, D, L)
    dbl = torch.einsum('bkdl,kcd->bkcl', xs, op.x_proj_weight)
    dts, Bs, Cs = dbl[:, :, :R], dbl[:, :, R:R + N], dbl[:, :, R + N:]
    dt = F.softplus(dts + op.dt_projs_bias[None, :, :, None])  # (B, K, R, L)
    a = -torch.exp(op.A_logs)  # (K, R)
    state = x.new_zeros(Bt, K, R, P, N)
    ys = []
    for t in range(L):
        xt = xs[..., t].view(Bt, K, R, P)
        state = torch.exp(dt[..., t] * a)[..., None, None] * state + \
            (dt[..., t, None] * xt)[..., None] * Bs[:, :, None, None, :, t]
        ys.append((state * Cs[:, :, None, None, :, t]).sum(-1) + op.Ds * xt)
    y = torch.stack(ys, -1).reshape(Bt, K, D, L)
    col_to_row = lambda s: s.view(Bt, D, W, H).transpose(2, 3).reshape(Bt, D, L)  # noqa: E731
    y = y[:, 0] + col_to_row(y[:, 1]) + y[:, 2].flip(-1) + col_to_row(y[:, 3].flip(-1))
    return op.out_proj(op.out_norm(y.transpose(1, 2).reshape(Bt, H, W, D)))


@pytest.mark.parametrize('H, W', [(4, 6), (9, 5)])
def test_ssd2d_equals_official_formulation(H, W):
    op = SSD2D(32, d_state=8, chunk_size=8).double()  # R = 2 heads of 16, several chunks, a partial one
    with torch.no_grad():
        op.A_logs.normal_()
        op.Ds.normal_()
    x = torch.randn(2, H, W, 32, dtype=torch.float64)
    torch.testing.assert_close(op(x), _official_m0(op, x))


def test_official_init():
    op = SSD2D(48)
    assert (op.num_heads, op.head_dim, op.d_state) == (3, 16, 64)
    assert torch.all(op.A_logs == 0) and torch.all(op.Ds == 1)
    assert 0 <= float(op.dt_projs_bias.detach().min()) and float(op.dt_projs_bias.detach().max()) <= 0.1


def test_flops_count_the_ssd():
    model = timm.create_model('vmamba_tiny_m2')
    by_op = flops_by_operator(model)
    # stage 1: 2 blocks, 56x56, 4 directions, 6 heads of 16, 64 states, chunk 64; and so on per stage
    want = sum(depth * ssd_flops(1, 4, dim // 16, 16, (56 >> i) ** 2, 64, 64)
               for i, (depth, dim) in enumerate(zip((2, 2, 4, 2), (96, 192, 384, 768))))
    assert by_op['plan_ssd'] == want
    total = count_flops(model) / 1e9
    assert 5.0 < total < 6.0, total  # 5.58 G: 4.19 G of convs / linears + 1.39 G of SSD


def test_shrunk_model_trains_and_features():
    model = timm.create_model('vmamba_tiny_m2', depths=(1, 1), dims=32, num_classes=5)
    x = torch.randn(2, 3, 40, 40)
    loss = F.cross_entropy(model(x), torch.tensor([1, 3]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for n in ('A_logs', 'Ds', 'dt_projs_bias', 'x_proj_weight'):
        g = grads[f'stages.1.blocks.0.op.{n}']
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, n
    feats = timm.create_model('vmamba_tiny_m2', depths=(1, 1), dims=32, features_only=True, out_indices=(0, 1))(x)
    assert [tuple(f.shape[1:]) for f in feats] == [(32, 10, 10), (64, 5, 5)]


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(ValueError, match='no z gate'):
        VSSBlock(32, ssm_mode='ssd', gate=True)
    with pytest.raises(ValueError, match="ssm_mode must be 'selective'"):
        VSSBlock(32, ssm_mode='ssm')
    with pytest.raises(ValueError, match='must divide the inner width'):
        SSD2D(32, num_heads=3)


def test_mm_backbone_through_the_vmamba_adapter(tmp_path):
    """mmdet / mmseg: the existing VMamba adapter builds the m2 models and loads their official layout."""
    pytest.importorskip('mmdet', reason='needs the OpenMMLab stack (scripts/install_mm.sh)')
    from mmengine.registry import MODELS
    import vssm.mm  # noqa: F401
    backbone = MODELS.build(dict(type='vssm.VMamba', arch='vmamba_tiny_m2', depths=(1, 1, 1, 1), dims=16)).eval()
    assert backbone.channels == (16, 32, 64, 128) and backbone.strides == (4, 8, 16, 32)
    with torch.no_grad():
        feats = backbone(torch.randn(1, 3, 72, 100))
    assert [tuple(f.shape) for f in feats] == [(1, 16, 18, 25), (1, 32, 9, 13), (1, 64, 5, 7), (1, 128, 3, 4)]
    full = MODELS.build(dict(type='vssm.VMamba', arch='vmamba_tiny_m2'))
    sd = {k: torch.randn(s) for k, s in _official_shapes('vmamba_tiny_m2').items()}
    torch.save({'model': sd}, tmp_path / 'official.pth')
    full.load_pretrained(str(tmp_path / 'official.pth'))
    torch.testing.assert_close(full.body.model.stages[2].blocks[3].op.conv2d.weight,
                               sd['layers.2.blocks.3.op.conv2d.1.weight'])


def test_torch_compile_whole_model_one_graph():
    from torch._dynamo.testing import CompileCounterWithBackend
    torch.compiler.reset()  # graphs compiled by earlier tests in this process must not count or be reused
    model = timm.create_model('vmamba_tiny_m2', depths=(1, 1), dims=16, num_classes=3).eval()
    x = torch.randn(2, 3, 32, 32)
    counter = CompileCounterWithBackend('aot_eager')
    out = torch.compile(model, backend=counter, fullgraph=True)(x)
    out.sum().backward()
    torch.testing.assert_close(out, model(x))
    assert counter.frame_count == 1
    assert model.stages[1].blocks[0].op.A_logs.grad is not None


def test_training_step_on_a_one_pixel_stage_map():
    """Batch 1, a 32² input (the last stage's map is 1x1), channels-last: the recompute backward's gradients
    came back as aliases of each other there, which a custom op may not return (found by gpu_check's dry run)."""
    model = timm.create_model('vmamba_tiny_m2', depths=(1, 1, 1, 1), dims=16, num_classes=3)
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    model(x).square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
