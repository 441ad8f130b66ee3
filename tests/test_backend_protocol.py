"""The public backend protocol (vssm/ops/backend.py): a conformance suite every selective-scan backend passes,
a new backend registered through the public names alone, and the capability errors of dispatch."""
from dataclasses import replace

import pytest
import torch

from vssm.ops import (
    BACKEND_ENV, Capabilities, ScanBackend, UnsupportedScanError, available_backends, build_index, default_backend,
    get_backend, plan_scan_reference, plan_selective_scan, recompute_grads, register_backend, unregister_backend,
)
from vssm.ops.cost import ScanCost, op_flops, op_min_bytes, scan_shape

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_weight')

# (plan directions, H, W, merge, u given as sequences): one case per plan kind and merge mode, odd sizes
CASES = {
    'cross-sum': (('h', 'v', 'h_flip', 'v_flip'), 3, 5, 'sum', False),
    'windows-none': (('w2', 'w2_flip'), 3, 5, 'none', False),  # padded windows: -1 entries in the index
    'atrous-sum': (('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v'), 5, 3, 'sum', False),
    'sequences-mean': (('h', 'h_flip'), 1, 7, 'mean', True),
    'grouped': (('h', 'v', 'h_flip', 'v_flip'), 4, 3, 'group', False),
}


def scan_inputs(case: str, dtype=torch.float64, low_rank: bool = True, seed: int = 0, Bt: int = 2, Dm: int = 5,
                N: int = 3, R: int = 2):
    """Fresh random inputs of one case: every optional input present, Δ in low-rank form when asked."""
    directions, H, W, merge, seq_u = CASES[case]
    g = torch.Generator().manual_seed(seed)
    index = build_index(directions, H, W)
    K, Lk = index.shape
    L = H * W

    def rnd(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype)
    channels = K * Dm if merge == 'group' else Dm
    t = dict(
        u=rnd(Bt, K, Dm, Lk) if seq_u else rnd(Bt, channels, L),
        delta=rnd(Bt, K, R if low_rank else Dm, Lk, scale=0.5),
        A=-torch.rand(K * Dm, N, generator=g, dtype=torch.float64).to(dtype) - 0.2,
        B=rnd(Bt, K, N, Lk), C=rnd(Bt, K, N, Lk), D=rnd(K * Dm), z=rnd(Bt, channels, L),
        delta_bias=rnd(K * Dm, scale=0.3), delta_weight=rnd(K, Dm, R, scale=0.5) if low_rank else None,
    )
    return t, index, L, merge


def run(t, index, L, merge, backend, grad_out=None):
    """Output and gradients of every present input through plan_selective_scan (the custom op)."""
    leaves = {n: (v.detach().clone().requires_grad_(True) if v is not None else None) for n, v in t.items()}
    out = plan_selective_scan(*[leaves[n] for n in NAMES[:8]], index=index, length=L, merge=merge,
                              backend=backend, delta_weight=leaves['delta_weight'])
    if grad_out is None:
        return out, None
    out.backward(grad_out.to(out.dtype))
    return out, {n: v.grad for n, v in leaves.items() if v is not None}


def check_backend(backend: str, dtype: torch.dtype, tol: float, cases=tuple(CASES)):
    """The conformance suite: values and every gradient against the float64 reference on fresh inputs, for every
    plan kind and merge the backend claims, low-rank and full Δ; gradients keep their inputs' dtypes."""
    caps = get_backend(backend).capabilities
    for case in cases:
        if CASES[case][3] not in caps.merges:
            continue
        for low_rank in (True, False):
            t64, index, L, merge = scan_inputs(case, torch.float64, low_rank, seed=hash((case, low_rank)) % 1000)
            t = {n: (v.to(dtype) if v is not None else None) for n, v in t64.items()}
            grad_out = torch.randn_like(plan_scan_reference(*[t64[n] for n in NAMES[:8]], index=index, length=L,
                                                            merge=merge, delta_weight=t64['delta_weight']))
            rounded = {n: (v.double() if v is not None else None) for n, v in t.items()}
            ref, ref_g = run(rounded, index, L, merge, 'reference', grad_out)
            out, g = run(t, index, L, merge, backend, grad_out)
            assert out.dtype == dtype
            where = f'{backend} {case} low_rank={low_rank}'
            torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol, msg=lambda m: f'{where}: {m}')
            for n in ref_g:
                assert g[n].dtype == t[n].dtype and g[n].shape == t[n].shape, f'{where}: gradient of {n}'
                torch.testing.assert_close(g[n].double(), ref_g[n], rtol=10 * tol, atol=10 * tol,
                                           msg=lambda m: f'{where}: gradient of {n}: {m}')


# ------------------------------------------------------------------------------------- a new backend

def float32_recompute(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                      delta_softplus=True, delta_weight=None):
    """A third-party backend in a few lines: the reference computed in float32 (its gradients come from the
    engine's recompute through this same function)."""
    f = {n: (v.float() if v is not None else None) for n, v in
         dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=delta_bias, delta_weight=delta_weight).items()}
    out = plan_scan_reference(f['u'], f['delta'], f['A'], f['B'], f['C'], f['D'], f['z'], f['delta_bias'],
                              index=index, length=length, merge=merge, delta_softplus=delta_softplus,
                              delta_weight=f['delta_weight'])
    return out.to(u.dtype)


NEW_BACKEND = ScanBackend(
    name='ref32', forward=float32_recompute, differentiable=float32_recompute, priority=-1,
    capabilities=Capabilities(devices=frozenset({'cpu'}), dtypes=frozenset({torch.float32}),
                              merges=frozenset({'sum', 'mean', 'none'}), low_rank_delta=True))


@pytest.fixture
def new_backend():
    register_backend(NEW_BACKEND)
    yield NEW_BACKEND.name
    unregister_backend(NEW_BACKEND.name)


def test_a_new_backend_passes_the_conformance_suite(new_backend):
    assert new_backend in available_backends('cpu')
    check_backend(new_backend, torch.float32, tol=2e-5)


def test_unsupported_combinations_name_the_backend_and_the_capability(new_backend, monkeypatch):
    t, index, L, merge = scan_inputs('grouped', torch.float32)
    with pytest.raises(UnsupportedScanError, match=r"'ref32' cannot run this call: it lacks merge 'group'"):
        run(t, index, L, merge, new_backend)
    t, index, L, merge = scan_inputs('cross-sum', torch.float64)
    with pytest.raises(UnsupportedScanError, match=r"'ref32' .* lacks dtype torch.float64"):
        run(t, index, L, merge, new_backend)
    monkeypatch.setenv(BACKEND_ENV, new_backend)  # the environment variable is held to the same rule
    with pytest.raises(UnsupportedScanError, match=r"'ref32' .* lacks dtype torch.float64"):
        run(t, index, L, merge, None)
    with pytest.raises(UnsupportedScanError, match=r"lacks device 'meta'"):
        default_backend('meta')


def test_priority_below_zero_is_never_a_default(new_backend):
    assert default_backend('cpu') != new_backend
    assert default_backend('cpu', backend=new_backend) == new_backend


def test_register_backend_rejects_other_records():
    with pytest.raises(TypeError, match='expects a ScanBackend'):
        register_backend(dict(name='x'))


# ------------------------------------------------------------------------------ the built-in backends

def test_builtin_backends_pass_the_conformance_suite():
    check_backend('reference', torch.float64, tol=1e-10)
    check_backend('fast', torch.float64, tol=1e-9)
    check_backend('export', torch.float64, tol=1e-9)


def test_cpu_backend_passes_the_conformance_suite():
    if 'cpu' not in available_backends('cpu'):
        pytest.skip('the fused C++ CPU scan is not built here (no compiler)')
    check_backend('cpu', torch.float32, tol=2e-5)


def test_the_suite_fails_a_wrong_backend(new_backend):
    """The suite can fail: a backend whose output is off by one part in 10^4 is caught."""
    def off(*args, **kwargs):
        return float32_recompute(*args, **kwargs) * 1.0001
    register_backend(replace(NEW_BACKEND, name='off', forward=off, differentiable=off))
    try:
        with pytest.raises(AssertionError):
            check_backend('off', torch.float32, tol=2e-5, cases=('cross-sum',))
    finally:
        unregister_backend('off')


def test_recompute_grads_matches_autograd():
    t, index, L, merge = scan_inputs('cross-sum')
    inputs = [t[n] for n in NAMES]
    grad_out = torch.randn(2, 5, L, dtype=torch.float64)
    got = recompute_grads(lambda *x: plan_scan_reference(*x[:8], index=index, length=L, merge=merge,
                                                         delta_weight=x[8]), grad_out, inputs)
    _, want = run(t, index, L, merge, 'reference', grad_out)
    for n, g in zip(NAMES, got):
        torch.testing.assert_close(g, want[n], msg=n)


def test_every_backend_reports_its_cost_in_the_one_record():
    t, index, L, merge = scan_inputs('cross-sum', torch.float32)
    shape = scan_shape(t['u'], t['delta'], t['A'], index, L, merge, z=t['z'], D=t['D'],
                       delta_weight=t['delta_weight'])
    for name in available_backends('cpu'):
        b = get_backend(name)
        if b.cost is None:
            continue
        fwd, bwd = b.cost(shape)
        for c, phase in ((fwd, 'forward'), (bwd, 'backward')):
            assert isinstance(c, ScanCost) and c.backend == name and c.phase == phase
            assert c.flops == op_flops(shape, phase) > 0
            assert c.min_bytes == op_min_bytes(shape, phase) > 0
            assert c.programs >= 1 and c.launches >= 1 and c.workspace_bytes >= 0
            assert c.bytes_moved > 0


def test_triton_cost_maps_onto_the_record():
    """The Triton schedule's own model (scan_cost.layer_cost, host-only) carried into the one record unchanged."""
    from vssm.ops.cost import ScanShape
    from vssm.ops.scan_cost import layer_cost, triton_cost
    plan = ('h', 'v', 'h_flip', 'v_flip')
    shape = ScanShape(batch=8, directions=4, channels=96, d_state=1, steps=3136, length=3136, rank=6,
                      dtype=torch.bfloat16, plan=plan, hw=(56, 56))
    fwd, bwd = triton_cost(shape)
    own = layer_cost(plan, 56, 56, 8, 96, 1, 6, dtype=torch.bfloat16)
    assert (fwd.bytes_moved, bwd.bytes_moved) == (own.fwd_bytes, own.bwd_bytes)
    assert (fwd.min_bytes, bwd.min_bytes) == (own.fwd_min_bytes, own.bwd_min_bytes)
    assert fwd.programs == own.programs['forward'] and fwd.launches == own.fwd_launches
    assert fwd.flops == op_flops(shape, 'forward')
