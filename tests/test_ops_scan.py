"""Every CPU backend of the plan scan against the reference: values and gradients on fresh random inputs."""
import math

import pytest
import torch

from scan_cases import PLANS, SCAN_NAMES, ScanCase, check_against_reference, make_scan_case
from vssm.ops import (
    BACKEND_ENV, build_index, plan_scan_fast, plan_scan_reference, plan_selective_scan, selective_scan_fast,
    selective_scan_ref,
)

NAMES = SCAN_NAMES[:8]


def make_inputs(plan, Bt=2, Dm=3, N=4, H=5, W=7, dtype=torch.float64, seq_u=False, with_z=True, scale=0.5):
    """This file's default case (channel-first, full Δ) in the (inputs, index, length) form its tests use."""
    case = make_scan_case(plan, H, W, batch=Bt, channels=Dm, d_state=N, seq_u=seq_u, with_z=with_z, dtype=dtype,
                          delta_scale=scale)
    return {n: case[n] for n in NAMES}, case.index, case.length  # full Δ: no delta_weight


def _case(t, idx, L, merge):
    return ScanCase(dict(t), idx, L, merge)


def _call(fn, t, idx, L, merge):
    return _case(t, idx, L, merge).call(fn)


def _cpu_kernel(*a, **k):
    _cpu_kernel_available()
    return plan_selective_scan(*a, **k, backend='cpu')


FAST_BACKENDS = {
    'fast': plan_scan_fast,
    'op-fast': lambda *a, **k: plan_selective_scan(*a, **k, backend='fast'),
    'op-reference': lambda *a, **k: plan_selective_scan(*a, **k, backend='reference'),
}
FLOAT32_BACKENDS = {'cpu': _cpu_kernel, 'fast': plan_scan_fast}


@pytest.mark.parametrize('backend', list(FLOAT32_BACKENDS))
@pytest.mark.parametrize('plan', list(PLANS))
@pytest.mark.parametrize('merge', ['sum', 'mean', 'none'])
def test_float32_backend_matches_reference(backend, plan, merge):
    """float32 backends against the float64 oracle on the same inputs: values and gradients."""
    case = make_scan_case(PLANS[plan], 7, 5, channels=3, d_state=3, seq_u=plan == 'vim', merge=merge)
    fn = FLOAT32_BACKENDS[backend]
    check_against_reference(lambda c: c.call(fn), case.cast(torch.float32), tol=(1e-4, 1e-4), grad_tol=(1e-3, 1e-3))


@pytest.mark.parametrize('backend', list(FAST_BACKENDS))
@pytest.mark.parametrize('plan', list(PLANS))
@pytest.mark.parametrize('merge', ['sum', 'mean', 'none'])
def test_backend_matches_reference(backend, plan, merge):
    case = make_scan_case(PLANS[plan], 5, 7, channels=3, d_state=4, seq_u=plan == 'vim', merge=merge)
    fn = FAST_BACKENDS[backend]
    check_against_reference(lambda c: c.call(fn), case, tol=(1e-9, 1e-9), grad_tol=(1e-7, 1e-8))


@pytest.mark.parametrize('plan', list(PLANS))
def test_reference_gradcheck_float64(plan):
    t, idx, L = make_inputs(PLANS[plan], Bt=1, Dm=2, N=2, H=3, W=3, seq_u=plan == 'vim')
    inputs = [t[n].requires_grad_() for n in NAMES]
    assert torch.autograd.gradcheck(lambda *a: plan_scan_reference(*a, index=idx, length=L), inputs)


@pytest.mark.parametrize('plan', ['vmamba', 'windows'])
def test_custom_op_gradcheck_float64(plan):
    t, idx, L = make_inputs(PLANS[plan], Bt=1, Dm=2, N=3, H=3, W=5)
    inputs = [t[n].requires_grad_() for n in NAMES]
    assert torch.autograd.gradcheck(lambda *a: plan_selective_scan(*a, index=idx, length=L), inputs)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16, torch.float32])
def test_low_precision_inputs(dtype):
    t64, idx, L = make_inputs(PLANS['vmamba'], Bt=1, H=7, W=5)
    t = {n: (v.to(dtype) if v is not None else None) for n, v in t64.items()}
    out = _call(plan_selective_scan, t, idx, L, 'sum')
    assert out.dtype == dtype
    # the oracle on the same (rounded) inputs, in float64
    ref = _call(plan_scan_reference, {n: (v.double() if v is not None else None) for n, v in t.items()}, idx, L,
                'sum')
    tol = {torch.float16: 1e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol)


def test_long_sequence_past_exp_range():
    """Large delta * A forces the chunk splitter down to single steps; values must stay exact."""
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=1, Dm=2, N=16, H=9, W=11, dtype=torch.float32, scale=4.0)
    t['A'] = t['A'] * 20
    ref = _call(plan_scan_reference, {n: (v.double() if v is not None else None) for n, v in t.items()}, idx, L,
                'sum')
    out = _call(plan_scan_fast, t, idx, L, 'sum')
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_sequence_scan_matches_mamba_semantics():
    """selective_scan_* with grouped B/C, written out for one channel by hand."""
    torch.manual_seed(1)
    Bt, G, Dg, N, L = 1, 2, 2, 3, 6
    u, delta = torch.randn(Bt, G * Dg, L).double(), torch.randn(Bt, G * Dg, L).double()
    A = -torch.rand(G * Dg, N).double()
    B, C = torch.randn(Bt, G, N, L).double(), torch.randn(Bt, G, N, L).double()
    D, z, bias = torch.randn(G * Dg).double(), torch.randn(Bt, G * Dg, L).double(), torch.randn(G * Dg).double()
    d, g = 3, 1  # channel 3 belongs to group 1
    dt = torch.nn.functional.softplus(delta[0, d] + bias[d])
    h = torch.zeros(N, dtype=torch.float64)
    expected = []
    for t in range(L):
        h = torch.exp(dt[t] * A[d]) * h + dt[t] * B[0, g, :, t] * u[0, d, t]
        y = (h * C[0, g, :, t]).sum() + D[d] * u[0, d, t]
        expected.append(y * z[0, d, t] * torch.sigmoid(z[0, d, t]))
    for fn in (selective_scan_ref, selective_scan_fast):
        out = fn(u, delta, A, B, C, D, z, bias, True)
        torch.testing.assert_close(out[0, d], torch.stack(expected))


def test_meta_device():
    t, idx, L = make_inputs(PLANS['windows'])
    t = {n: v.to('meta') for n, v in t.items()}
    for merge, shape in (('sum', (2, 3, L)), ('none', (2, 4, 3, L))):
        assert _call(plan_selective_scan, t, idx.to('meta'), L, merge).shape == shape
        assert _call(plan_scan_reference, t, idx, L, merge).shape == shape


def test_env_var_forces_backend(monkeypatch):
    from vssm.ops import default_backend
    monkeypatch.setenv(BACKEND_ENV, 'reference')
    assert default_backend('cpu') == 'reference'
    monkeypatch.setenv(BACKEND_ENV, 'nonexistent')
    with pytest.raises(ValueError, match='not available'):
        default_backend('cpu')
    monkeypatch.delenv(BACKEND_ENV)
    assert default_backend('cpu') in ('cpu', 'fast')  # fused C++ when it builds
    assert default_backend('cpu', dtype=torch.float64) == 'fast'  # the C++ kernel computes in float32
    monkeypatch.setenv('VSSM_CPU_KERNEL', '0')
    assert default_backend('cpu') == 'fast'


def test_bad_inputs_raise_clear_errors():
    t, idx, L = make_inputs(PLANS['vmamba'])
    bad = dict(t, u=t['u'][:, :2])
    with pytest.raises(ValueError, match='map input u must be'):
        _call(plan_selective_scan, bad, idx, L, 'sum')
    bad = dict(t, B=t['B'][..., :-1])
    with pytest.raises(ValueError, match='B must be'):
        _call(plan_selective_scan, bad, idx, L, 'sum')
    bad = dict(t, u=t['u'].to(torch.int32))
    with pytest.raises(TypeError, match='must be float16/bfloat16/float32/float64'):
        _call(plan_selective_scan, bad, idx, L, 'sum')
    with pytest.raises(ValueError, match='merge must be one of'):
        _call(plan_selective_scan, t, idx, L, 'max')
    with pytest.raises(ValueError, match='index must be'):
        _call(plan_selective_scan, t, idx.int(), L, 'sum')


def _softplus_probe(x: torch.Tensor, backend: str):
    """A scan whose output at step t is Δ_t itself: u = B = C = 1, D = 0 and A = -50, so exp(Δ·A) = 0 wipes the
    state every step; returns (y, dy/dΔ) for the pre-activation values x = delta + bias (bias 0)."""
    L = x.numel()
    idx = build_index(('h',), 1, L)
    one = torch.ones(1, 1, 1, L, dtype=x.dtype)
    delta = x.reshape(1, 1, 1, L).clone().requires_grad_(True)
    y = plan_selective_scan(torch.ones(1, 1, L, dtype=x.dtype), delta, torch.full((1, 1), -50.0, dtype=x.dtype),
                            one, one, None, None, torch.zeros(1, dtype=x.dtype), index=idx, length=L, merge='sum',
                            delta_softplus=True, backend=backend)
    y.sum().backward()
    return y.detach().reshape(-1), delta.grad.reshape(-1)


def _mamba_softplus(values):
    """mamba_ssm's kernels: log1p(exp(x)) up to 20 inclusive, x above; derivative sigmoid(x) / 1."""
    y = [math.log1p(math.exp(v)) if v <= 20 else v for v in values]
    g = [1 / (1 + math.exp(-v)) if v <= 20 else 1.0 for v in values]
    return y, g


SOFTPLUS_BACKENDS = ['reference', 'fast', 'cpu']


@pytest.mark.parametrize('backend', ['reference', 'fast'])  # the C++ kernel computes in float32
def test_softplus_threshold_sits_at_20_in_float64(backend):
    """Either side of the threshold in float64: softplus(20) - 20 = 2.1e-9 and softplus(19.5) - 19.5 = 3.4e-9
    are 1e5 times the tolerance, so a threshold at the wrong place (or `<` for `<=`) fails; 800 overflows
    exp() in float64, so a kernel that skips the threshold returns inf there."""
    values = [19.0, 19.5, 20.0, 20.25, 22.0, 800.0]
    y, g = _softplus_probe(torch.tensor(values, dtype=torch.float64), backend)
    want_y, want_g = _mamba_softplus(values)
    torch.testing.assert_close(y, torch.tensor(want_y, dtype=torch.float64), rtol=1e-14, atol=0)
    torch.testing.assert_close(g, torch.tensor(want_g, dtype=torch.float64), rtol=1e-14, atol=0)
    assert (y[:3] - torch.tensor(values[:3], dtype=torch.float64)).abs().min() > 1e-9  # the probe can tell


@pytest.mark.parametrize('backend', SOFTPLUS_BACKENDS)
def test_softplus_threshold_semantics_in_float32(backend):
    """float32, where the kernels compute: small x must be softplus'd (softplus(5) - 5 = 6.7e-3, softplus(-3) =
    0.049), and 100 must pass through: exp(100) overflows float32, so skipping the threshold gives inf."""
    if backend == 'cpu':
        _cpu_kernel_available()
    values = [-3.0, 0.0, 1.0, 5.0, 15.0, 25.0, 100.0]
    y, g = _softplus_probe(torch.tensor(values, dtype=torch.float32), backend)
    want_y, want_g = _mamba_softplus(values)
    assert torch.isfinite(y).all() and torch.isfinite(g).all()
    torch.testing.assert_close(y, torch.tensor(want_y), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(g, torch.tensor(want_g), rtol=1e-6, atol=1e-7)


def _cpu_kernel_available():
    from vssm.ops.cpu_kernel import load_extension
    if load_extension() is None:
        pytest.skip('no C++ compiler: the fused CPU scan is not available')


# ------------------------------------------------------------------ contract v2: low-rank Δ, grouped plans

def _expanded_reference(*a, delta_weight, **k):
    from vssm.ops import expand_delta
    a = list(a)
    a[1] = expand_delta(a[1], delta_weight)
    return plan_scan_reference(*a, **k)


LOW_RANK_BACKENDS = {
    'reference': plan_scan_reference,
    'op-fast': lambda *a, **k: plan_selective_scan(*a, **k, backend='fast'),
    'op-reference': lambda *a, **k: plan_selective_scan(*a, **k, backend='reference'),
}


@pytest.mark.parametrize('backend', list(LOW_RANK_BACKENDS))
@pytest.mark.parametrize('plan', ['vmamba', 'atrous', 'vim'])
def test_low_rank_delta_matches_expanded_delta(backend, plan):
    """Δ given as (dts, weight) equals Δ = weight @ dts given in full: values and every gradient, float64."""
    case = make_scan_case(PLANS[plan], 5, 3, batch=2, channels=3, d_state=4, rank=2, seq_u=plan == 'vim')
    fn = LOW_RANK_BACKENDS[backend]
    _, g = check_against_reference(lambda c: c.call(fn), case, tol=(1e-9, 1e-9), grad_tol=(1e-7, 1e-8),
                                   oracle=_expanded_reference)
    assert 'delta_weight' in g


def test_low_rank_delta_on_the_cpu_kernel_float32():
    case = make_scan_case(PLANS['windows'], 7, 5, channels=3, d_state=3, rank=3)
    check_against_reference(lambda c: c.call(_cpu_kernel), case.cast(torch.float32), tol=(1e-4, 1e-4),
                            grad_tol=(1e-3, 1e-3), oracle=_expanded_reference)


def _grouped_by_hand(t, plan, H, W):
    """Each direction k scanned alone (a one-direction plan) on channel group k, concatenated."""
    K = len(plan)
    Dg = t['delta'].shape[2]
    outs = []
    for k, d in enumerate(plan):
        idx_k = build_index((d,), H, W)
        sl = slice(k * Dg, (k + 1) * Dg)
        outs.append(plan_scan_reference(
            t['u'][:, sl], t['delta'][:, k:k + 1], t['A'][sl], t['B'][:, k:k + 1], t['C'][:, k:k + 1], t['D'][sl],
            t['z'][:, sl], t['delta_bias'][sl], index=idx_k, length=H * W, merge='sum'))
    return torch.cat(outs, 1)


@pytest.mark.parametrize('backend', ['reference', 'fast', 'op-fast', 'op-default'])
@pytest.mark.parametrize('H, W', [(5, 7), (4, 4), (1, 6)])
def test_grouped_plan_is_one_direction_per_channel_group(backend, H, W):
    plan = ('h', 'v', 'h_flip', 'v_flip')
    t, idx, L = make_inputs(plan, Bt=2, Dm=3, H=H, W=W)
    K = len(plan)
    t = dict(t, u=torch.randn(2, K * 3, L, dtype=torch.float64), z=torch.randn(2, K * 3, L, dtype=torch.float64))
    fn = {'reference': plan_scan_reference, 'fast': plan_scan_fast,
          'op-fast': lambda *a, **k: plan_selective_scan(*a, **k, backend='fast'),
          'op-default': plan_selective_scan}[backend]
    out = _call(fn, t, idx, L, 'group')
    assert out.shape == (2, K * 3, L)
    torch.testing.assert_close(out, _grouped_by_hand(t, plan, H, W), rtol=1e-9, atol=1e-9)


def test_grouped_plan_gradients_match_reference():
    case = make_scan_case(PLANS['vmamba'], 3, 5, channels=2, d_state=4, merge='group')
    assert case['u'].shape == (1, 8, 15)
    check_against_reference('fast', case, tol=(1e-7, 1e-7), grad_tol=(1e-7, 1e-8))


def test_grouped_plan_shape_errors():
    plan = ('h', 'v')
    t, idx, L = make_inputs(plan, Dm=3)
    with pytest.raises(ValueError, match="merge='group' u must be a map"):
        _call(plan_selective_scan, t, idx, L, 'group')


@pytest.mark.parametrize('bad, match', [
    (lambda i: i.masked_fill(i == 3, 99), r'positions in \[0, 35\)'),
    (lambda i: i.masked_fill(i == 3, -2), r'positions in \[0, 35\)'),
    (lambda i: torch.where(i == 3, torch.full_like(i, 4), i), 'more than once'),
])
def test_index_values_are_validated_on_every_backend(bad, match):
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=1, dtype=torch.float32)
    bad_idx = bad(idx.clone())
    for backend in ('reference', 'fast', 'cpu'):
        with pytest.raises(ValueError, match=match):
            plan_selective_scan(*[t[n] for n in NAMES], index=bad_idx, length=L, backend=backend)


def test_gradients_have_their_inputs_layout():
    """The backward op returns each gradient with its input's strides (channel-last u stays channel-last)."""
    t, idx, L = make_inputs(PLANS['vmamba'], Bt=2, dtype=torch.float32)
    t['u'] = t['u'].transpose(1, 2).contiguous().transpose(1, 2)  # channel-last map
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in t.items()}
    leaves['u'] = t['u'].detach().requires_grad_(True)
    out = _call(plan_selective_scan, leaves, idx, L, 'sum')
    assert out.stride(1) == 1  # channel-last result
    out.backward(torch.randn_like(out))
    for n, v in leaves.items():
        assert v.grad.stride() == v.stride(), n
