"""Deployment (vssm.deploy, tools/export.py, vssm.ops.export_scan): the exportable scan against the float64
reference, then one shrunk model per family through torch.export, a pt2 round trip and ONNX in onnxruntime,
at a non-square size, exported at batch 2 and run at batches 1, 2 and 3.

Export is slow (seconds per small graph): each family is exported once (module-scoped fixture) and every test
reuses that program. To add a family, add one row to FAMILIES.
"""
import importlib.util
from pathlib import Path

import pytest
import timm
import torch
from timm.utils.model import reparameterize_model

import vssm  # noqa: F401  (registers the models)
from vssm.deploy import (
    ExportConfigError, ExportRequest, export_and_check, export_program, load_artifact, max_differences,
    onnx_op_domains, save_artifact,
)
from vssm.models.localmamba import LOCAL_VIM_DIRECTIONS, LOCAL_VMAMBA_DIRECTIONS
from vssm.ops import BACKEND_ENV, build_index, plan_selective_scan
from vssm.ops.export_scan import linear_recurrence

ROOT = Path(__file__).resolve().parents[1]
IMG = (32, 48)  # non-square on purpose
HAS_ONNX = all(importlib.util.find_spec(m) for m in ('onnx', 'onnxscript', 'onnxruntime'))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason='needs the deploy extra (onnx, onnxscript, onnxruntime)')

# family -> (model, shrinking kwargs); every model gets num_classes=10. Two stages / blocks are enough to meet
# every layer kind, and each one more costs seconds of export
FAMILIES = {
    'vmamba': ('vmamba_tiny_s1l8', dict(depths=(1, 1), dims=16)),
    'vim': ('vim_tiny', dict(embed_dim=32, depth=2, patch_size=8)),  # middle class token, pos_embed resampled
    'local_vim': ('local_vim_tiny', dict(embed_dim=32, depth=2, patch_size=8,
                                         directions=LOCAL_VIM_DIRECTIONS['local_vim_tiny'][:2])),
    'local_vmamba': ('local_vmamba_tiny', dict(depths=(1, 1), dims=16,
                                               directions=LOCAL_VMAMBA_DIRECTIONS['local_vmamba_tiny'][:2])),
    'efficient_vmamba': ('efficient_vmamba_tiny', dict(depths=(1, 1, 1), dims=16)),  # 2 EVSS + 1 inverted residual
    # grouped scan, channel-affinity gate, class-token block, distillation head (mean in eval)
    'groupmamba': ('groupmamba_tiny', dict(depths=(1, 1), dims=(16, 32), mlp_ratios=2, stem_hidden_dim=8)),
    # conv stages, then windowed stages (one mixer + one attention block each), both maps padded to the windows
    'mambavision': ('mambavision_tiny', dict(depths=(1, 1, 2, 2), dim=16, in_dim=8, num_heads=(1, 1, 2, 2),
                                             window_sizes=(2, 2))),
    'vmamba_m2': ('vmamba_tiny_m2', dict(depths=(1, 1), dims=16)),  # SSD (Mamba-2) scan: 1 and 2 heads
    # channel-first K=2 SS2D, Haar wavelet convs, SE; exported fused (timm's reparameterize_model)
    'mobilemamba': ('mobilemamba_t2', dict(dims=(32, 48), depths=(1, 1), global_ratios=(.8, .7),
                                           local_ratios=(.2, .2), kernel_sizes=(5, 3))),
    # state-returning scan, replicate-padded folded 11x11 state fusion, BN stem and downsample
    'spatial_mamba': ('spatial_mamba_tiny', dict(depths=(1, 1), dims=16)),
}
FUSED = {'mobilemamba'}  # families exported after reparameterize_model (Conv-BN folded), as deployed


@pytest.fixture(autouse=True)
def _fast_backend(monkeypatch):
    # eager references on the PyTorch path: no C++ build of the CPU extension inside these tests
    monkeypatch.setenv(BACKEND_ENV, 'fast')


def _tool(name):
    spec = importlib.util.spec_from_file_location(f'vssm_tools_{name}', ROOT / 'tools' / f'{name}.py')
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------------------------------- the exportable scan

def _scan_case(directions, H, W, merge, seq_u, low_rank, Bt=2, Dm=3, N=2, R=2, dtype=torch.float64):
    idx = build_index(directions, H, W)
    K, Lk = idx.shape
    L = H * W
    map_ch = K * Dm if merge == 'group' else Dm
    u = torch.randn(Bt, K, Dm, Lk, dtype=dtype) if seq_u else torch.randn(Bt, map_ch, L, dtype=dtype)
    delta = torch.randn(Bt, K, R if low_rank else Dm, Lk, dtype=dtype)
    args = dict(u=u, delta=delta, A=-torch.rand(K * Dm, N, dtype=dtype) * 3 - 0.05,
                B=torch.randn(Bt, K, N, Lk, dtype=dtype), C=torch.randn(Bt, K, N, Lk, dtype=dtype),
                D=torch.randn(K * Dm, dtype=dtype), z=torch.randn(Bt, map_ch, L, dtype=dtype),
                delta_bias=torch.randn(K * Dm, dtype=dtype) * 0.5)
    kw = dict(index=idx, length=L, merge=merge,
              delta_weight=torch.randn(K, Dm, R, dtype=dtype) * 0.7 if low_rank else None)
    return args, kw


# every plan kind (row/column + flips, windows with padding, atrous phases of unequal length, the 1-D
# sequence) with each merge it is used with, map and sequence u, full and low-rank Δ
# (N: one state takes the time-last path, more the time-major one)
SCAN_CASES = [
    (('h', 'v', 'h_flip', 'v_flip'), 7, 40, 'sum', False, True, 1),  # VMamba: 280 steps, three levels, N=1
    (('h', 'v', 'h_flip', 'v_flip'), 7, 40, 'sum', False, True, 3),
    (('h', 'h_flip'), 1, 37, 'mean', True, True, 2),  # Vim: sequence u, 1-D
    (('w2', 'w7_flip', 'h', 'v_flip'), 9, 11, 'none', False, False, 2),  # LocalMamba: padded windows, full Δ
    (('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v'), 5, 7, 'sum', False, True, 2),  # EfficientVMamba, odd map
    (('h', 'v', 'h_flip', 'v_flip'), 6, 5, 'group', False, True, 1),  # GroupMamba: grouped channels
    (('h', 'v'), 4, 4, 'mean', True, False, 2),
]


@pytest.mark.parametrize('directions,H,W,merge,seq_u,low_rank,N', SCAN_CASES)
def test_export_scan_matches_reference(directions, H, W, merge, seq_u, low_rank, N):
    """Values in float32 (what is exported) and float64, and gradients, against the float64 reference."""
    args, kw = _scan_case(directions, H, W, merge, seq_u, low_rank, N=N)
    ref = plan_selective_scan(**args, **kw, backend='reference')
    got64 = plan_selective_scan(**args, **kw, backend='export')
    torch.testing.assert_close(got64, ref, rtol=1e-12, atol=1e-12)
    f32 = {n: t.float() for n, t in args.items()}
    kw32 = dict(kw, delta_weight=None if kw['delta_weight'] is None else kw['delta_weight'].float())
    got32 = plan_selective_scan(**f32, **kw32, backend='export')
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.double(), ref, rtol=2e-5, atol=2e-5 * float(ref.abs().max()))

    leaves = {n: t.detach().requires_grad_() for n, t in args.items()}
    weight = kw['delta_weight'].detach().requires_grad_() if low_rank else None
    probe = torch.randn_like(ref)
    grads = {}
    for backend in ('reference', 'export'):
        out = plan_selective_scan(**leaves, **dict(kw, delta_weight=weight), backend=backend)
        wanted = list(leaves.values()) + ([weight] if low_rank else [])
        grads[backend] = torch.autograd.grad((out * probe).sum(), wanted)
    for name, g_ref, g in zip(list(leaves) + ['delta_weight'], grads['reference'], grads['export']):
        torch.testing.assert_close(g, g_ref, rtol=1e-10, atol=1e-10, msg=lambda m: f'{name}: {m}')


def test_linear_recurrence_is_exact_and_finite_where_closed_forms_overflow():
    """The blocked recurrence at lengths around the chunk and level boundaries, and at Δ·A sums of -1e5
    (the cumsum closed form overflows exp() in float32 past ~88): same values as the step-by-step loop."""
    for L in (1, 15, 16, 17, 256, 257, 300):
        a = -torch.rand(2, 3, L, dtype=torch.float64) * 2
        b = torch.randn(2, 3, L, dtype=torch.float64)
        h, want = torch.zeros(2, 3, dtype=torch.float64), []
        for t in range(L):
            h = torch.exp(a[..., t]) * h + b[..., t]
            want.append(h)
        torch.testing.assert_close(linear_recurrence(a, b), torch.stack(want, -1), rtol=1e-12, atol=1e-12)
    a = torch.full((1, 300), -400.0)  # every step forgets: h_t = b_t
    b = torch.randn(1, 300)
    got = linear_recurrence(a, b)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, b)


# --------------------------------------------------------------------------------------- model export

def _model(family):
    name, kwargs = FAMILIES[family]
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    return reparameterize_model(model) if family in FUSED else model


@pytest.fixture(scope='module', params=sorted(FAMILIES))
def exported(request):
    """(family, eager model, ExportedProgram at batch 2 with a dynamic batch) per family."""
    torch.manual_seed(0)
    model = _model(request.param)
    ep = export_program(model, torch.randn(2, 3, *IMG), dynamic_batch=True)
    return request.param, model, ep


def _inputs():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(b, 3, *IMG, generator=g) for b in (1, 2, 3)]


def test_exported_graph_has_no_custom_op_and_eager_still_runs(exported):
    family, model, ep = exported
    targets = {str(n.target) for n in ep.graph.nodes if n.op == 'call_function'}
    assert not [t for t in targets if 'vssm' in t], targets
    # the plan's index maps are built outside export's fake mode: eager calls afterwards get real tensors
    with torch.no_grad():
        out = model(torch.randn(1, 3, *IMG))
    assert type(out) is torch.Tensor and torch.isfinite(out).all()


def test_pt2_round_trip_runs_any_batch(exported, tmp_path):
    """Saved and loaded ExportedProgram: equal to the in-memory program, close to eager, at batches 1, 2, 3."""
    family, model, ep = exported
    path = str(tmp_path / f'{family}.pt2')
    save_artifact(ep, 'pt2', path)
    loaded = load_artifact(path, 'pt2')
    for x in _inputs():
        with torch.no_grad():
            got, in_memory, eager = loaded(x)[0], ep.module()(x), model(x)
        assert got.shape == (x.shape[0], 10)
        torch.testing.assert_close(got, in_memory, rtol=0, atol=0)
        torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-6)


@needs_onnx
def test_onnx_runs_in_onnxruntime_close_to_eager(exported, tmp_path):
    """Standard ONNX ops only; onnxruntime with two threads (a race in its scatter-add would show here) at
    batches 1, 2, 3 within 1e-4 relative of eager."""
    family, model, ep = exported
    path = str(tmp_path / f'{family}.onnx')
    save_artifact(ep, 'onnx', path)
    assert onnx_op_domains(path) == [''], onnx_op_domains(path)
    run = load_artifact(path, 'onnx', num_threads=2)
    for x in _inputs():
        with torch.no_grad():
            expected = model(x)
        max_abs, max_rel = max_differences([expected], run(x))
        assert max_rel < 1e-4, (family, x.shape[0], max_abs, max_rel)


def test_cli_exports_features_only_backbone_and_checks(tmp_path, capsys):
    """tools/export.py end to end with its defaults: a features_only backbone (3 outputs), non-square, --check;
    the batch is dynamic by default (as timm's ONNX exporter makes it), checked at batches 1, 2 and 3."""
    out = tmp_path / 'backbone.pt2'
    result = _tool('export').main([
        '--model', 'efficient_vmamba_tiny', '--model-kwargs', 'depths=(1,1,1)', 'dims=16', 'out_indices=(0,1,2)',
        '--features-only', '--format', 'pt2', '--img-size', *map(str, IMG), '--output', str(out), '--check',
    ])
    assert out.is_file() and result['size_mb'] > 0
    assert result['dynamic_batch'] and result['batch_size'] == 2
    assert [c['batch'] for c in result['checks']] == [1, 2, 3]
    assert all(c['max_rel'] < 1e-5 for c in result['checks'])
    assert 'max rel diff' in capsys.readouterr().out
    run = load_artifact(str(out), 'pt2')
    for b in (1, 5):
        outs = run(torch.randn(b, 3, *IMG))
        assert [tuple(o.shape) for o in outs] == [(b, 16, 8, 12), (b, 32, 4, 6), (b, 64, 2, 3)]  # strides 4, 8, 16


def test_cli_batch_options():
    """--static-batch fixes the batch at --batch-size (default 1); the default is dynamic, traced at 2."""
    parse = _tool('export').build_parser().parse_args
    base = ['--model', 'vmamba_tiny_s1l8', '--format', 'onnx', '--img-size', '32', '--output', 'm.onnx']
    assert parse(base).dynamic_batch and parse(base + ['--dynamic-batch']).dynamic_batch
    assert not parse(base + ['--static-batch']).dynamic_batch
    with pytest.raises(SystemExit):  # one or the other
        parse(base + ['--static-batch', '--dynamic-batch'])
    req = dict(model='vmamba_tiny_s1l8', format='onnx', img_size=(32, 32), output='m.onnx')
    assert (ExportRequest(**req).dynamic_batch, ExportRequest(**req).batch_size) == (True, 2)
    assert ExportRequest(**req, dynamic_batch=False).batch_size == 1
    assert ExportRequest(**req, dynamic_batch=False, batch_size=4).batch_size == 4


@pytest.mark.parametrize('changes,message', [
    (dict(model='vmamba_tiny_s1l9'), 'unknown vssm model'),
    (dict(model='resnet18'), 'unknown vssm model'),  # a timm model, but not a vssm one
    (dict(dynamic_batch=True, batch_size=1), 'batch of at least 2'),
    (dict(batch_size=1), '--static-batch'),  # dynamic by default
    (dict(format='aoti', output='m.onnx'), r'named \*\.pt2'),
    (dict(checkpoint='no_such_file.pth'), 'does not exist'),
    (dict(img_size=(16, 16)), 'at least 32x32'),  # below the model's total stride: found by the meta forward
    (dict(model_kwargs=dict(depths=(1, 1, 1, 1), dims=16, no_such_arg=1)), 'no_such_arg'),
    (dict(features_only=True, model_kwargs=dict(depths=(1, 1), dims=16, out_indices=(3,))), 'features_only'),
])
def test_clear_errors_before_any_export(changes, message, tmp_path, monkeypatch):
    import vssm.deploy as deploy

    def never(*a, **k):
        raise AssertionError('torch.export was reached: the request should have failed first')
    monkeypatch.setattr(deploy, 'export_program', never)
    req = dict(model='vmamba_tiny_s1l8', format='pt2', img_size=IMG, output=str(tmp_path / 'm.pt2'),
               model_kwargs=dict(depths=(1, 1, 1, 1), dims=16))
    req.update(changes)
    if 'output' in changes:
        req['output'] = str(tmp_path / changes['output'])
    with pytest.raises(ExportConfigError, match=message):
        export_and_check(ExportRequest(**req))


def test_aoti_package_runs_any_batch(tmp_path):
    """AOTInductor on the CPU: a one-stage VMamba, compiled, loaded, run at batches 1 and 3 (inductor generates
    and compiles C++: 45 s on the 2 shared cores for this one-block model, as long as the rest of the file)."""
    model = timm.create_model('vmamba_tiny_s1l8', depths=(1,), dims=16, num_classes=10).eval()
    ep = export_program(model, torch.randn(2, 3, 16, 24), dynamic_batch=True)
    path = str(tmp_path / 'm.pt2')
    save_artifact(ep, 'aoti', path)
    run = load_artifact(path, 'aoti')
    for b in (1, 3):
        x = torch.randn(b, 3, 16, 24)
        with torch.no_grad():
            expected = model(x)
        assert max_differences([expected], run(x))[1] < 1e-5


@needs_onnx
def test_benchmark_export_writes_rows_and_plot(tmp_path):
    """tools/benchmark_export.py on a one-block model: its rows (no timing asserted) and the PNG."""
    rows = _tool('benchmark_export').main([
        '--model', 'vmamba_tiny_s1l8', '--model-kwargs', 'depths=(1,)', 'dims=16', '--img-size', '16', '24',
        '--batch-size', '1', '2', '--repeats', '1', '--results-file', str(tmp_path / 'b.json'),
        '--plot', str(tmp_path / 'b.png'),
    ])
    assert [r['batch_size'] for r in rows] == [1, 2] and rows[0]['img_size'] == '16x24'
    assert all(r['eager_img_s'] > 0 and r['onnxruntime_img_s'] > 0 and r['max_rel_diff'] < 1e-4 for r in rows)
    assert rows[0]['onnx_mb'] > 0 and rows[0]['machine'] and (tmp_path / 'b.png').stat().st_size > 0
