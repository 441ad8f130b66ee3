"""MobileMamba: exact parameter counts, both official checkpoint layouts, one MRFFI module against a literal
re-implementation of the official formulation (what the GPU kernel computes), batch independence, BN folding.

The "official" side below is written from the facts of the official definitions (lewandofskee/MobileMamba
model/mobilemamba/mobilemamba.py: MobileMambaModule, MBWTConv2d, DWConv2d_BN_ReLU, Conv2d_BN; model/lib_mamba/
vmambanew.py: SS2D forward type v052d, k_group 2), not from our model: Conv-BN as conv + batch_norm, the Haar
transform from pywt's db1 taps, the bidirectional scan as two explicit sequences and a step-by-step recurrence,
the merge as the GPU kernel's per-sample sum (out = y_fwd + flip(y_bwd)), not the CPU fallback's batch mix.
"""
import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.utils.model import reparameterize_model

import vssm  # noqa: F401
from official_keys import official_param_count, official_shapes, official_state_dict
from vssm.models.mobilemamba import (
    MRFFIMixer, WaveletSSMBranch, _remap_official_key, checkpoint_filter_fn, haar_filters, split_channels,
)

DATA = Path(__file__).resolve().parent / 'data'
# ../shared/official_keys/mobilemamba_*.keys.txt (made by instantiating the official code); b1, b2 and b4 are
# the same file (one network), so only b1 is kept
KEY_FILES = {'mobilemamba_t2': 't2', 'mobilemamba_t4': 't4', 'mobilemamba_s6': 's6', 'mobilemamba_b': 'b1'}


def _stem(name):
    """The key file of a model (B1, B2 and B4 share one architecture and one key list)."""
    return f'mobilemamba_{KEY_FILES[name]}'
# issue 21: the official definitions with num_classes 1000, fixed Haar filters included
OFFICIAL_PARAMS = {'mobilemamba_t2': 8_836_890, 'mobilemamba_t4': 14_176_090, 'mobilemamba_s6': 15_036_632,
                   'mobilemamba_b': 17_122_849}
TINY = dict(dims=(32, 48, 64), depths=(1, 1, 1), num_classes=10)






def _randomise_bn(model, seed=0):
    """Non-trivial BN statistics and affine weights (fresh ones fold to the identity, or to 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                for t, lo, hi in ((m.weight, .5, 1.5), (m.running_var, .5, 1.5)):
                    t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) * (hi - lo) + lo)
                for t in (m.bias, m.running_mean):
                    t.copy_(torch.randn(t.shape, generator=g, dtype=t.dtype) * .2)
    return model


# ------------------------------------------------------------------------------------------- counts

@pytest.mark.parametrize('name', sorted(KEY_FILES))
def test_param_counts_equal_official(name):
    """Parameters plus the fixed Haar filters (official nn.Parameters with requires_grad=False, buffers here)."""
    model = timm.create_model(name, device='meta')
    params = sum(p.numel() for p in model.parameters())
    haar = sum(b.numel() for k, b in model.named_buffers() if k.endswith(('wt_filter', 'iwt_filter')))
    from_keys = official_param_count(_stem(name))
    assert params + haar == from_keys == OFFICIAL_PARAMS[name]


def test_channel_split_follows_the_official_rule():
    """The issue's table of [global, local, identity] channels, stage by stage."""
    ratios = ((.8, .2), (.7, .2), (.6, .3))
    table = {
        (144, 272, 368): ((112, 28, 4), (192, 54, 26), (224, 110, 34)),
        (176, 368, 448): ((144, 32, 0), (256, 73, 39), (272, 134, 42)),
        (192, 384, 448): ((160, 32, 0), (272, 76, 36), (272, 134, 42)),
        (200, 376, 448): ((160, 40, 0), (256, 75, 45), (272, 134, 42)),
    }
    for dims, splits in table.items():
        assert tuple(split_channels(d, *r) for d, r in zip(dims, ratios)) == splits


# -------------------------------------------------------------------------------------- checkpoints

@pytest.mark.parametrize('name', sorted(KEY_FILES))
def test_official_layout_maps_onto_every_key(name):
    model = timm.create_model(name, device='meta')
    mapped = checkpoint_filter_fn(official_state_dict(_stem(name), device='meta'), model)
    ours = model.state_dict()
    assert set(mapped) == set(ours)
    assert all(mapped[k].shape == ours[k].shape for k in ours)


def test_trainer_and_bare_layouts_load_through_timm(tmp_path):
    """The trainer's {net, net_E, optimizer, ...} (EMA weights taken) and the bare net.pth load strictly by
    timm's pretrained path; every official tensor lands in its place."""
    net, ema = official_state_dict(_stem('mobilemamba_t2')), official_state_dict(_stem('mobilemamba_t2'))
    trainer = tmp_path / 'ckpt.pth'
    torch.save({'net': net, 'net_E': ema, 'optimizer': {}, 'scheduler': {}, 'total_time': 1.0}, trainer)
    bare = tmp_path / 'net.pth'
    torch.save(net, bare)
    pairs = {
        'stem.6.conv.weight': 'patch_embed.6.c.weight',
        'stem.6.bn.running_var': 'patch_embed.6.bn.running_var',
        'stages.0.blocks.0.dw0.m.bn.weight': 'blocks1.0.dw0.m.bn.weight',
        'stages.0.blocks.0.mixer.m.global_op.ssm.x_proj_weight':
            'blocks1.0.mixer.m.attn.global_op.global_atten.x_proj_weight',
        'stages.0.blocks.0.mixer.m.global_op.ssm.in_proj.conv.weight':
            'blocks1.0.mixer.m.attn.global_op.global_atten.in_proj.c.weight',
        'stages.0.blocks.0.mixer.m.global_op.wt_filter': 'blocks1.0.mixer.m.attn.global_op.wt_filter',
        'stages.0.blocks.0.mixer.m.global_op.wavelet_conv.weight':
            'blocks1.0.mixer.m.attn.global_op.wavelet_convs.0.weight',
        'stages.0.blocks.0.mixer.m.global_op.wavelet_scale': 'blocks1.0.mixer.m.attn.global_op.wavelet_scale.0.weight',
        'stages.0.blocks.0.mixer.m.global_op.base_scale': 'blocks1.0.mixer.m.attn.global_op.base_scale.weight',
        'stages.0.blocks.0.mixer.m.local_op.0.conv.weight': 'blocks1.0.mixer.m.attn.local_op.dwconv3x3.weight',
        'stages.0.blocks.0.mixer.m.local_op.2.bn.bias': 'blocks1.0.mixer.m.attn.local_op.bn2.bias',
        'stages.0.blocks.0.mixer.m.proj.1.bn.weight': 'blocks1.0.mixer.m.attn.proj.1.bn.weight',
        'stages.1.downsample.0.1.m.pw2.conv.weight': 'blocks2.0.1.m.pw2.c.weight',
        'stages.1.downsample.1.se.fc1.bias': 'blocks2.1.se.fc1.bias',
        'stages.2.downsample.2.0.m.bn.bias': 'blocks3.2.0.m.bn.bias',
        'stages.2.blocks.1.ffn1.m.pw1.bn.running_mean': 'blocks3.4.ffn1.m.pw1.bn.running_mean',
        'head.bn.weight': 'head.bn.weight',
        'head.linear.weight': 'head.l.weight',
    }
    for path, source in ((trainer, ema), (bare, net)):
        model = timm.create_model('mobilemamba_t2', pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))
        ours = model.state_dict()
        assert sum(v.numel() for v in ours.values()) == sum(v.numel() for v in source.values())
        for ours_key, official_key in pairs.items():
            assert torch.equal(ours[ours_key], source[official_key]), ours_key
    # the trainer's net (not EMA) when net_E is None (trained without EMA)
    sd = checkpoint_filter_fn({'net': net, 'net_E': None}, timm.create_model('mobilemamba_t2', device='meta'))
    assert torch.equal(sd['head.linear.bias'], net['head.l.bias'])


def test_pretrained_without_file_is_a_clear_error():
    with pytest.raises(ValueError, match='Google Drive'):
        timm.create_model('mobilemamba_s6', pretrained=True)


def test_b_is_one_architecture_with_resolution_tags():
    tags = {t: timm.models.get_pretrained_cfg(t).input_size for t in
            ('mobilemamba_b.in1k_256', 'mobilemamba_b.in1k_384', 'mobilemamba_b.in1k_512')}
    assert tags == {'mobilemamba_b.in1k_256': (3, 256, 256), 'mobilemamba_b.in1k_384': (3, 384, 384),
                    'mobilemamba_b.in1k_512': (3, 512, 512)}
    model = timm.create_model('mobilemamba_b.in1k_384', device='meta')
    assert model.pretrained_cfg['input_size'] == (3, 384, 384)


def test_checkpoint_for_another_model_is_a_clear_error():
    with pytest.raises(ValueError, match='checkpoint does not match mobilemamba_s6'):
        checkpoint_filter_fn(official_state_dict(_stem('mobilemamba_t4'), device='meta'),
                             timm.create_model('mobilemamba_s6', device='meta'))


# ------------------------------------------------------------- the official formulation, written out

def _conv_bn(x, p, prefix, stride=1, padding=0, groups=1):
    """Official Conv2d_BN (eval): conv without bias, then BatchNorm2d with running statistics."""
    x = F.conv2d(x, p[prefix + 'c.weight'], None, stride, padding, 1, groups)
    return F.batch_norm(x, p[prefix + 'bn.running_mean'], p[prefix + 'bn.running_var'], p[prefix + 'bn.weight'],
                        p[prefix + 'bn.bias'], False, 0., 1e-5)


def _bn(x, p, prefix):
    return F.batch_norm(x, p[prefix + 'running_mean'], p[prefix + 'running_var'], p[prefix + 'weight'],
                        p[prefix + 'bias'], False, 0., 1e-5)


def _pywt_db1_filters(channels, dtype):
    """create_wavelet_filter('db1') from pywt's published taps: dec filters from the reversed dec_lo / dec_hi,
    rec filters from rec_lo / rec_hi reversed then flipped; outer products in float32 as the official code."""
    s = 0.7071067811865476
    dec_lo, dec_hi, rec_lo, rec_hi = [s, s], [-s, s], [s, s], [s, -s]
    def bank(lo, hi):
        lo, hi = torch.tensor(lo, dtype=torch.float), torch.tensor(hi, dtype=torch.float)
        f = torch.stack([lo.unsqueeze(0) * lo.unsqueeze(1), lo.unsqueeze(0) * hi.unsqueeze(1),
                         hi.unsqueeze(0) * lo.unsqueeze(1), hi.unsqueeze(0) * hi.unsqueeze(1)], dim=0)
        return f[:, None].repeat(channels, 1, 1, 1).to(dtype)
    dec = bank(dec_lo[::-1], dec_hi[::-1])
    rec = bank(torch.tensor(rec_lo[::-1]).flip(0).tolist(), torch.tensor(rec_hi[::-1]).flip(0).tolist())
    return dec, rec


def _selective_scan_steps(u, delta, A, B, C, D):
    """Mamba-1 recurrence, one step at a time: u, delta (D, L); A (D, N); B, C (N, L); D (D,)."""
    h = torch.zeros_like(A)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[:, t, None] * A) * h + delta[:, t, None] * B[None, :, t] * u[:, t, None]
        ys.append((h * C[None, :, t]).sum(-1) + D * u[:, t])
    return torch.stack(ys, -1)


def _official_ss2d(x, p, pre):
    """SS2D v052d, channel-first, k_group 2, on the GPU path: per sample, y = y_fwd + flip(y_bwd)."""
    x = _conv_bn(x, p, pre + 'in_proj.')
    x, z = x.chunk(2, dim=1)
    x = F.silu(F.conv2d(x, p[pre + 'conv2d.weight'], p[pre + 'conv2d.bias'], padding=1, groups=x.shape[1]))
    Bt, Dn, H, W = x.shape
    K, _, R = p[pre + 'dt_projs_weight'].shape
    N = p[pre + 'A_logs'].shape[1]
    A = -torch.exp(p[pre + 'A_logs']).view(K, Dn, N)
    Ds = p[pre + 'Ds'].view(K, Dn)
    out = []
    for b in range(Bt):  # each sample on its own: nothing crosses the batch
        seq = x[b].reshape(Dn, H * W)
        ys = []
        for k, s in enumerate((seq, seq.flip(-1))):  # row-major, then its reverse
            dbl = p[pre + 'x_proj_weight'][k] @ s
            dts, Bs, Cs = dbl.split([R, N, N], dim=0)
            delta = F.softplus(p[pre + 'dt_projs_weight'][k] @ dts + p[pre + 'dt_projs_bias'][k][:, None])
            ys.append(_selective_scan_steps(s, delta, A[k], Bs, Cs, Ds[k]))
        out.append((ys[0] + ys[1].flip(-1)).view(Dn, H, W))
    y = torch.stack(out)
    y = F.layer_norm(y.permute(0, 2, 3, 1), (Dn,), p[pre + 'out_norm.weight'], p[pre + 'out_norm.bias'])
    y = y.permute(0, 3, 1, 2) * F.silu(z)
    return _conv_bn(y, p, pre + 'out_proj.')


def _official_mbwt(x, p, pre, kernel):
    """MBWTConv2d with wt_levels 1: base_scale * SS2D(x) + IWT(scale * conv(WT(pad(x))))[:H, :W]."""
    b, c, H, W = x.shape
    dec, rec = _pywt_db1_filters(c, x.dtype)
    xp = F.pad(x, (0, W % 2, 0, H % 2)) if (H % 2 or W % 2) else x
    bands = F.conv2d(xp, dec, stride=2, groups=c).reshape(b, c, 4, xp.shape[2] // 2, xp.shape[3] // 2)
    tag = bands.reshape(b, 4 * c, *bands.shape[-2:])
    tag = F.conv2d(tag, p[pre + 'wavelet_convs.0.weight'], padding='same', groups=4 * c)
    tag = p[pre + 'wavelet_scale.0.weight'] * tag
    x_tag = F.conv_transpose2d(tag, rec, stride=2, groups=c)[:, :, :H, :W]
    return p[pre + 'base_scale.weight'] * _official_ss2d(x, p, pre + 'global_atten.') + x_tag


def _official_mrffi(x, p, pre, split, kernel):
    """MobileMambaModule: [global, local, identity] -> global_op / local_op -> concat -> ReLU -> Conv2d_BN."""
    x1, x2, x3 = torch.split(x, split, dim=1)
    x1 = _official_mbwt(x1, p, pre + 'global_op.', kernel)
    x2 = F.conv2d(x2, p[pre + 'local_op.dwconv3x3.weight'], padding=kernel // 2, groups=x2.shape[1])
    x2 = F.relu(_bn(x2, p, pre + 'local_op.bn1.'))
    x2 = _bn(F.conv2d(x2, p[pre + 'local_op.dwconv1x1.weight'], groups=x2.shape[1]), p, pre + 'local_op.bn2.')
    return _conv_bn(F.relu(torch.cat([x1, x2, x3], dim=1)), p, pre + 'proj.1.')


def _official_params_of(mixer):
    """The mixer's tensors under their official names (T2's blocks2.3 keys through the checkpoint key map)."""
    ours, official = mixer.state_dict(), 'blocks2.3.mixer.m.attn.'
    out = {}
    for key in official_shapes(_stem('mobilemamba_t2')):
        if key.startswith(official):
            mapped = _remap_official_key(key)
            out[key[len(official):]] = ours[mapped[len('stages.1.blocks.0.mixer.m.'):]]
    return out


def test_mrffi_equals_official_formulation_float64_odd_size():
    """One MRFFI module (T2 stage 2 widths: 192 global / 54 local / 26 identity, kernel 5) in float64 at 7 x 9,
    batch 2, random BN statistics and SSM parameters, against the written-out official formulation."""
    torch.manual_seed(0)
    mixer = MRFFIMixer(272, 5, .7, .2, d_state=1, ssm_ratio=2.0, dtype=torch.float64).eval()
    _randomise_bn(mixer)
    with torch.no_grad():
        ssm = mixer.global_op.ssm
        # float32-exact values: SS2D hands A, D and the dt bias to the scan in float32
        ssm.A_logs.copy_((torch.rand_like(ssm.A_logs) - 0.5).float())
        ssm.Ds.copy_(torch.randn_like(ssm.Ds).float())
        ssm.dt_projs_bias.copy_((torch.randn_like(ssm.dt_projs_bias) * .5).float())
        mixer.global_op.base_scale.copy_(torch.randn_like(mixer.global_op.base_scale))
        mixer.global_op.wavelet_scale.copy_(torch.randn_like(mixer.global_op.wavelet_scale))
    p = _official_params_of(mixer)
    assert len(p) == sum(1 for k in official_shapes(_stem('mobilemamba_t2')) if k.startswith('blocks2.3.mixer.m.attn.'))
    x = torch.randn(2, 272, 7, 9, dtype=torch.float64)
    with torch.no_grad():
        ours = mixer(x)
        ref = _official_mrffi(x, p, '', (192, 54, 26), 5)
    assert ours.shape == x.shape
    # float64 throughout: 1e-8 leaves room only for the order of float64 sums (chunked scan backends)
    torch.testing.assert_close(ours, ref, rtol=1e-8, atol=1e-8)


def test_haar_filters_are_pywt_db1_and_perfect_reconstruction():
    dec, rec = _pywt_db1_filters(3, torch.float32)
    wt, iwt = haar_filters(3)
    assert torch.equal(wt, dec) and torch.equal(iwt, rec)
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    back = F.conv_transpose2d(F.conv2d(x, wt.double(), stride=2, groups=3), iwt.double(), stride=2, groups=3)
    torch.testing.assert_close(back, x, rtol=1e-6, atol=1e-6)  # orthonormal up to the float32 taps


def test_wavelet_branch_rebuilds_its_filters():
    branch = WaveletSSMBranch(16, 3)
    with torch.no_grad():
        branch.wt_filter.fill_(float('nan'))
    branch.init_weights()
    assert torch.equal(branch.wt_filter, haar_filters(16)[0])


# ----------------------------------------------------------------------------- batch and fusion

def test_batch_of_two_equals_two_batches_of_one():
    """The official CPU fallback mixes samples across the batch; ours (as the GPU kernel) does not: one SS2D
    branch and the whole model at batch 2 equal two batch-1 runs."""
    torch.manual_seed(0)
    ssm = WaveletSSMBranch(32, 3).ssm.eval()
    x = torch.randn(2, 32, 5, 7)
    model = _randomise_bn(timm.create_model('mobilemamba_t2', **TINY).eval())
    img = torch.randn(2, 3, 80, 112)
    with torch.no_grad():
        both, each = ssm(x), torch.cat([ssm(x[:1]), ssm(x[1:])])
        torch.testing.assert_close(model(img), torch.cat([model(img[:1]), model(img[1:])]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(both, each, rtol=1e-5, atol=1e-6)
    assert (both[0] - both[1]).abs().max() > 0.1  # the two samples do differ


def test_fused_equals_unfused():
    """timm's reparameterize_model folds every BatchNorm, the depthwise residual identities and the wavelet
    branch's scales: outputs equal within 1e-5, no BatchNorm left."""
    torch.manual_seed(0)
    model = _randomise_bn(timm.create_model('mobilemamba_t2', **TINY).eval())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, WaveletSSMBranch):
                m.base_scale.uniform_(.5, 1.5)
                m.wavelet_scale.uniform_(-1, 1)
    fused = reparameterize_model(model)
    assert not [n for n, m in fused.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert not [n for n, _ in fused.named_parameters() if n.endswith(('base_scale', 'wavelet_scale'))]
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        ref, got = model(x), fused(x)
        feats = reparameterize_model(timm.create_model('mobilemamba_t2', features_only=True, **TINY).eval())(x)
    scale = ref.abs().max()
    assert scale > 0.1
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5 * float(scale))
    assert [f.shape[1:] for f in feats] == [(32, 6, 5), (48, 3, 3), (64, 2, 2)]  # strides 16, 32, 64


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match='one entry per stage'):
        timm.create_model('mobilemamba_t2', dims=(32, 48), device='meta')
    with pytest.raises(ValueError, match='multiple of 8'):
        timm.create_model('mobilemamba_t2', dims=(36, 48, 64), device='meta')
    with pytest.raises(ValueError, match='at least 64x64'):
        timm.create_model('mobilemamba_t2', **TINY)(torch.randn(1, 3, 32, 64))


def test_kd_recipe_trains_through_train_py(tmp_path):
    """The dagger recipe's loss (CE + 5 * soft KL at T = 1, timm.task logit distillation) with a tiny teacher:
    four finite steps of tools/train.py on the embedded digits set."""
    import csv
    import importlib.util
    spec = importlib.util.spec_from_file_location('vssm_tools_train_mm', DATA.parents[1] / 'tools' / 'train.py')
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    teacher = tmp_path / 'teacher.pth'
    torch.save(timm.create_model('test_resnet', num_classes=10).state_dict(), teacher)
    result = train.main([
        '--model', 'mobilemamba_t2', '--model-kwargs', 'depths=(1,1,1)', 'dims=(16,24,32)', '--img-size', '64',
        '--num-threads', '1', '--no-progress', '--train-num-samples', '64', '--val-num-samples', '32', '-b', '16',
        '--epochs', '1', '--warmup-epochs', '0', '--output', str(tmp_path), '--experiment', 'mm',
        '--kd-model-name', 'test_resnet', '--kd-model-checkpoint', str(teacher), '--kd-distill-type', 'logit',
        '--kd-temperature', '1.0', '--task-loss-weight', '1.0', '--distill-loss-weight', '5.0'])
    with open(tmp_path / 'mm' / 'steps.csv') as f:
        losses = [float(r['loss']) for r in csv.DictReader(f)]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses), losses
    assert math.isfinite(result['eval']['loss'])


def test_export_request_reparameterizes():
    """tools/export.py --reparameterize: the model handed to torch.export has no BatchNorm left."""
    from vssm.deploy import ExportRequest, build_model
    req = ExportRequest(model='mobilemamba_t2', format='pt2', img_size=(64, 96), output='unused.pt2',
                        model_kwargs=dict(TINY), reparameterize=True)
    model = build_model(req)
    assert not [n for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    unfused = build_model(ExportRequest(**{**req.__dict__, 'reparameterize': False}))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in unfused.modules())


def test_convert_tool_reads_the_trainer_file(tmp_path):
    """tools/convert_checkpoint.py: the trainer's `net` by default, its EMA `net_E` with --use-ema."""
    import importlib.util
    tool = DATA.parents[1] / 'tools' / 'convert_checkpoint.py'
    spec = importlib.util.spec_from_file_location('vssm_tools_convert_mm', tool)
    conv = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conv)
    net, ema = official_state_dict(_stem('mobilemamba_t2')), official_state_dict(_stem('mobilemamba_t2'))
    torch.save({'net': net, 'net_E': ema, 'optimizer': {}, 'total_time': 1.0}, tmp_path / 'ckpt.pth')
    for extra, source in (([], net), (['--use-ema'], ema)):
        report = conv.main(['--model', 'mobilemamba_t2', str(tmp_path / 'ckpt.pth'), str(tmp_path / 'o.pth'),
                            '--quiet', *extra])
        assert report['written_tensors'] == len(source) and not report['missing_in_result']
        out = torch.load(tmp_path / 'o.pth', weights_only=True)
        assert torch.equal(out['head.linear.weight'], source['head.l.weight'])
