"""Smoke subset for the oldest supported torch: import, every family's forward + backward at a small size (and
under torch.inference_mode), the plan-scan op's opcheck, a compiled training step without graph breaks,
torch.export and FX feature extraction.

CI runs it on torch 2.13.0 in a second venv (scripts/smoke_old_torch.sh); it is also part of the main suite,
where it costs a few seconds. The scan runs on the default CPU backend, so the fused C++ CPU kernel is built
against the torch under test (skipped where no C++ compiler is found).
"""
import math

import pytest
import timm
import torch

import vssm  # noqa: F401  (registers the models)
from vssm.ops import build_index, plan_scan_reference, plan_selective_scan

# one reduced model per family: the full architecture at small widths and depths (tests/test_train_families.py)
SMALL = {
    'vmamba_tiny_s1l8': dict(depths=(1, 1, 1, 1), dims=16),
    'vmamba_tiny_v0': dict(depths=(1, 1, 1, 1), dims=16),
    'vim_tiny': dict(depth=2, embed_dim=32),
    'local_vim_tiny': dict(depth=2, embed_dim=32, directions=(('h', 'v_flip', 'w2', 'w7_flip'),
                                                              ('h_flip', 'v', 'w2_flip', 'w7'))),
    'local_vmamba_tiny': dict(depths=(1, 1, 1, 1), dims=16, directions=(('h', 'v', 'w2', 'w2_flip'),) * 3
                              + (('h_flip', 'v_flip', 'w7', 'w7_flip'),)),
    'efficient_vmamba_tiny': dict(depths=(1, 1, 1, 1), dims=16),
}
SCAN_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


def _vssm_models():
    return sorted(n for n in timm.list_models() if timm.models.model_entrypoint(n).__module__.startswith('vssm.'))


def _smallest_per_family():
    """A model for every family (vssm.models module) that SMALL does not cover yet: its smallest registered
    model at full width, so a newly added family is smoke-tested before anyone adds small kwargs for it."""
    covered = {timm.models.model_entrypoint(n).__module__ for n in SMALL}
    by_module = {}
    for name in _vssm_models():
        module = timm.models.model_entrypoint(name).__module__
        if module in covered:
            continue
        params = sum(p.numel() for p in timm.create_model(name, device='meta').parameters())
        if module not in by_module or params < by_module[module][1]:
            by_module[module] = (name, params)
    return {name: {} for name, _ in by_module.values()}


CASES = {**SMALL, **_smallest_per_family()}


def test_import_registers_every_family():
    assert set(SMALL) <= set(_vssm_models())
    modules = {timm.models.model_entrypoint(n).__module__ for n in _vssm_models()}
    assert modules == {timm.models.model_entrypoint(n).__module__ for n in CASES}


@pytest.mark.parametrize('name', list(CASES))
def test_family_forward_backward(name):
    model = timm.create_model(name, num_classes=5, **CASES[name])
    x = torch.randn(2, 3, 64, 64)
    out = model(x)
    assert out.shape == (2, 5) and torch.isfinite(out).all()
    out.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads), 'a parameter got no or a non-finite gradient'
    # inference mode (tools/benchmark.py times inference so): same numbers, and training still works after it
    model.eval()
    with torch.no_grad():
        expected = model(x)
    with torch.inference_mode():
        got = model(x)
    torch.testing.assert_close(got, expected)
    model.train()
    model(x).sum().backward()


def _scan_args(merge: str, low_rank: bool):
    Bt, Dm, N, H, W, R = 2, 3, 2, 3, 4, 2
    idx = build_index(('h', 'v', 'h_flip', 'v_flip'), H, W)
    K, Lk = idx.shape
    L = H * W
    BC = torch.randn(Bt, K, 2 * N, Lk)
    t = dict(u=torch.randn(Bt, L, Dm).transpose(1, 2), delta=torch.randn(Bt, K, R if low_rank else Dm, Lk) * 0.5,
             A=-torch.rand(K * Dm, N) - 0.2, B=BC[:, :, :N], C=BC[:, :, N:], D=torch.randn(K * Dm),
             z=torch.randn(Bt, Dm, L), delta_bias=torch.randn(K * Dm) * 0.1)
    t = {n: v.detach().requires_grad_() for n, v in t.items()}
    weight = (torch.randn(K, Dm, R) * 0.5).requires_grad_() if low_rank else None
    return t, weight, idx, L


@pytest.mark.parametrize('backend', ['fast', 'cpu'])
@pytest.mark.parametrize('merge,low_rank', [('sum', False), ('none', False), ('sum', True)])
def test_opcheck_plan_scan(merge, low_rank, backend):
    """torch.library.opcheck: schema, fake kernel, autograd registration and AOT dispatch of vssm::plan_scan, for
    a backend whose backward is the engine's recompute ('fast') and one with its own backward ('cpu')."""
    from vssm.ops import available_backends
    if backend not in available_backends('cpu'):
        pytest.skip(f'{backend} is not available here (no C++ compiler)')
    t, weight, idx, L = _scan_args(merge, low_rank)
    args = (*[t[n] for n in SCAN_NAMES], weight, idx, L, merge, True, backend)
    torch.library.opcheck(torch.ops.vssm.plan_scan.default, args)


def test_default_cpu_backend_matches_reference():
    """The default CPU backend (the fused C++ kernel, built against this torch, or 'fast'): values and gradients
    against the float64 reference, through the low-rank Δ form the models use."""
    t, weight, idx, L = _scan_args('sum', True)
    out = plan_selective_scan(*[t[n] for n in SCAN_NAMES], index=idx, length=L, delta_weight=weight)
    ref = plan_scan_reference(*[t[n].double() for n in SCAN_NAMES], index=idx, length=L,
                              delta_weight=weight.double())
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    leaves = [*t.values(), weight]
    g = torch.autograd.grad(out, leaves, torch.ones_like(out))
    g_ref = torch.autograd.grad(ref, leaves, torch.ones_like(ref))
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a.double(), b.double(), rtol=1e-4, atol=1e-4 * max(1.0, b.abs().max().item()))


def test_compiled_training_step_without_graph_break():
    """torch.compile (fullgraph, aot_eager: no C++ codegen) through the custom op's fake and autograd rules."""
    model = timm.create_model('vmamba_tiny_s1l8', num_classes=3, **SMALL['vmamba_tiny_s1l8'])
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    loss = compiled(x).square().mean()
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.parameters())


def test_torch_export_round_trip():
    """torch.export (the scan as standard ops) with a dynamic batch: the exported program equals eager."""
    model = timm.create_model('vmamba_tiny_s1l8', num_classes=3, **SMALL['vmamba_tiny_s1l8']).eval()
    x = torch.randn(2, 3, 32, 32)
    batch = torch.export.Dim('batch', min=1, max=16)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    assert not [n for n in program.graph.nodes if 'vssm' in str(n.target)], 'the custom op leaked into the export'
    with torch.no_grad():
        for b in (2, 3):
            xb = torch.randn(b, 3, 32, 32)
            torch.testing.assert_close(program.module()(xb), model(xb), rtol=1e-4, atol=1e-5)


def test_fx_feature_extraction():
    """timm's FX feature extraction treats the scan entry point as a leaf."""
    from timm.models import create_feature_extractor, get_graph_node_names
    model = timm.create_model('vmamba_tiny_s1l8', num_classes=3, **SMALL['vmamba_tiny_s1l8']).eval()
    nodes = get_graph_node_names(model)[1]
    extractor = create_feature_extractor(model, return_nodes=[nodes[-1]])
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)[nodes[-1]], model(x))
