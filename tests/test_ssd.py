"""The SSD (Mamba-2) scan mode: every CPU backend against the float64 step-by-step reference, values and every
gradient, every plan kind and merge, odd sizes, lengths off the chunk grid, batch 1, determinism, bad input,
numerical safety at long lengths and large Δ, and torch.compile / torch.export seeing it right."""
import math

import pytest
import torch

from vssm.ops import ScanInputError, build_index, plan_ssd_export, plan_ssd_fast, plan_ssd_reference, plan_ssd_scan
from vssm.ops.ssd_core import segment_sum, ssd_chunked, ssd_reference

NAMES = ('x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias')
PLANS = {
    'vmamba': (('h', 'v', 'h_flip', 'v_flip'), 'sum'),
    'vim': (('h', 'h_flip'), 'mean'),
    'windows': (('w2', 'w2_flip', 'w3', 'v_flip'), 'none'),
    'atrous': (('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v'), 'sum'),
    'grouped': (('h', 'v', 'h_flip', 'v_flip'), 'group'),
}
BACKENDS = {
    'fast': plan_ssd_fast,
    'export': plan_ssd_export,
    'op-fast': lambda *a, **k: plan_ssd_scan(*a, **k, backend='fast'),
    'op-export': lambda *a, **k: plan_ssd_scan(*a, **k, backend='export'),
    'op-reference': lambda *a, **k: plan_ssd_scan(*a, **k, backend='reference'),
}


def make_inputs(plan, merge, Bt=2, R=2, P=3, N=4, H=5, W=7, dtype=torch.float64, seq_x=False, with_D=True,
                with_bias=True):
    idx = build_index(plan, H, W)
    K, Lk = idx.shape
    L = H * W
    Dm = R * P
    if seq_x:
        x = torch.randn(Bt, K, Dm, Lk, dtype=dtype)
    else:
        x = torch.randn(Bt, K * Dm if merge == 'group' else Dm, L, dtype=dtype)
    t = dict(
        x=x,
        dt=torch.randn(Bt, K, R, Lk, dtype=dtype) * 0.5,
        A=-torch.rand(K * R, dtype=dtype) - 0.2,
        B=torch.randn(Bt, K, N, Lk, dtype=dtype),
        C=torch.randn(Bt, K, N, Lk, dtype=dtype),
        D=torch.randn(K * Dm, dtype=dtype) if with_D else None,
        dt_bias=torch.randn(K * R, dtype=dtype) * 0.3 if with_bias else None,
    )
    return t, idx, L


def _grads(fn, t, idx, L, merge, grad_out, **kw):
    leaves = {n: (v.detach().clone().requires_grad_(True) if v is not None else None) for n, v in t.items()}
    out = fn(*[leaves[n] for n in NAMES], index=idx, length=L, merge=merge, **kw)
    out.backward(grad_out)
    return out.detach(), {n: v.grad for n, v in leaves.items() if v is not None}


def _assert_matches(fn, t, idx, L, merge, rtol, atol, **kw):
    t64 = {n: v.double() if v is not None else None for n, v in t.items()}
    out64 = plan_ssd_reference(*[t64[n] for n in NAMES], index=idx, length=L, merge=merge)
    grad_out = torch.randn_like(out64)
    ref, ref_g = _grads(plan_ssd_reference, t64, idx, L, merge, grad_out)
    out, g = _grads(fn, t, idx, L, merge, grad_out.to(t['x'].dtype), **kw)
    assert out.shape == ref.shape and out.dtype == t['x'].dtype
    torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=atol)
    assert set(g) == set(ref_g)
    for n in g:
        assert g[n].shape == t[n].shape and g[n].dtype == t[n].dtype, n
        torch.testing.assert_close(g[n].double(), ref_g[n], rtol=rtol, atol=atol, msg=lambda m: f'grad {n}: {m}')


@pytest.mark.parametrize('backend', list(BACKENDS))
@pytest.mark.parametrize('plan', list(PLANS))
def test_backend_matches_float64_reference(backend, plan):
    directions, merge = PLANS[plan]
    t, idx, L = make_inputs(directions, merge)
    # chunk 4 over 35 (or 18 atrous) steps: several chunks, the last one partial
    _assert_matches(BACKENDS[backend], t, idx, L, merge, rtol=1e-9, atol=1e-9, chunk_size=4)


@pytest.mark.parametrize('chunk', [1, 3, 7, 8, 64])
def test_chunk_sizes_odd_lengths_batch_one(chunk):
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, Bt=1, R=3, P=1, N=5, H=3, W=5)  # L = 15: never a multiple
    _assert_matches(plan_ssd_fast, t, idx, L, merge, rtol=1e-9, atol=1e-9, chunk_size=chunk)


@pytest.mark.parametrize('backend', ['op-fast', 'op-export'])
def test_float32_against_float64_reference(backend):
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, R=2, P=4, N=8, H=9, W=10, dtype=torch.float32)
    _assert_matches(BACKENDS[backend], t, idx, L, merge, rtol=2e-4, atol=2e-4, chunk_size=16)


@pytest.mark.parametrize('options', [dict(seq_x=True), dict(with_D=False, with_bias=False)])
def test_sequence_input_and_optional_inputs(options):
    directions, merge = PLANS['vim']
    t, idx, L = make_inputs(directions, merge, **options)
    _assert_matches(BACKENDS['op-fast'], t, idx, L, merge, rtol=1e-9, atol=1e-9, chunk_size=8)


def test_gradcheck_of_the_op():
    directions, merge = PLANS['vim']
    t, idx, L = make_inputs(directions, merge, Bt=1, R=1, P=2, N=2, H=2, W=3)
    inputs = [t[n].requires_grad_(True) for n in NAMES]
    assert torch.autograd.gradcheck(
        lambda *a: plan_ssd_scan(*a, index=idx, length=L, merge=merge, chunk_size=4), inputs)


def test_recurrence_written_out_by_hand():
    """ssd_reference itself against the defining recurrence, one head, one direction, written out."""
    torch.manual_seed(1)
    l, p, n = 6, 2, 3
    x, dt, B, C = torch.randn(l, p), torch.rand(l), torch.randn(l, n), torch.randn(l, n)
    a = -0.7
    state, ys = torch.zeros(p, n), []
    for s in range(l):
        state = math.exp(float(dt[s]) * a) * state + dt[s] * torch.outer(x[s], B[s])
        ys.append(state @ C[s] + 0.5 * x[s])
    want = torch.stack(ys)
    got = ssd_reference(x.view(1, 1, l, 1, p), dt.view(1, 1, l, 1), torch.tensor([[a]]), B.view(1, 1, l, n),
                        C.view(1, 1, l, n), torch.full((1, 1, p), 0.5), dt_softplus=False)
    torch.testing.assert_close(got.view(l, p), want)


def test_segment_sum_is_safe_and_exact():
    a = -torch.rand(3, 9, dtype=torch.float64) * 50
    seg = segment_sum(a)
    for i in range(9):
        for j in range(9):
            want = a[:, j + 1:i + 1].sum(-1) if j <= i else torch.full((3,), float('-inf'), dtype=a.dtype)
            torch.testing.assert_close(seg[:, i, j], want)


def test_long_sequences_and_large_decay_stay_finite():
    """Δ·a summed over thousands of steps reaches -1e5: the chunked float32 form never overflows or NaNs."""
    b, k, l, h, p, n = 1, 1, 3000, 2, 2, 4
    x, B, C = torch.randn(b, k, l, h, p), torch.randn(b, k, l, n), torch.randn(b, k, l, n)
    dt = torch.full((b, k, l, h), 5.0)
    A = torch.tensor([[-8.0, -1e-3]])
    y = ssd_chunked(x, dt, A, B, C, dt_softplus=False, chunk_size=64)
    assert torch.isfinite(y).all()
    # head 0 forgets at once: y_t = dt x_t (B_t . C_t)
    torch.testing.assert_close(y[..., 0, :], 5.0 * x[..., 0, :] * (B * C).sum(-1)[..., None], rtol=1e-4, atol=1e-4)
    leaves = [t.requires_grad_(True) for t in (x, dt, A, B, C)]
    ssd_chunked(*leaves, dt_softplus=False, chunk_size=64).square().mean().backward()
    assert all(torch.isfinite(t.grad).all() for t in leaves)


def test_deterministic_run_to_run():
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, R=2, P=4, N=8, H=9, W=10, dtype=torch.float32)
    grad_out = torch.randn(2, 8, L)
    first = _grads(BACKENDS['op-fast'], t, idx, L, merge, grad_out)
    second = _grads(BACKENDS['op-fast'], t, idx, L, merge, grad_out)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(first[1][n], second[1][n]) for n in first[1])


def test_output_is_channel_last_and_half_inputs_compute_in_float32():
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, dtype=torch.float32)
    out = plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L)
    assert out.transpose(1, 2).is_contiguous()
    half = {n: v.bfloat16() for n, v in t.items()}
    out16 = plan_ssd_scan(*[half[n] for n in NAMES], index=idx, length=L)
    assert out16.dtype == torch.bfloat16
    ref = plan_ssd_reference(*[half[n].double() for n in NAMES], index=idx, length=L)
    torch.testing.assert_close(out16.double(), ref, rtol=2e-2, atol=5e-2)


def test_meta_tensors_give_shapes():
    directions, merge = PLANS['windows']
    t, idx, L = make_inputs(directions, merge)
    meta = {n: v.to('meta') for n, v in t.items()}
    out = plan_ssd_scan(*[meta[n] for n in NAMES], index=idx.to('meta'), length=L, merge=merge)
    assert out.shape == (2, 4, 6, L) and out.device.type == 'meta'


@pytest.mark.parametrize('change, match', [
    (dict(A=torch.randn(3)), r'A must be \(K\*R=8,\)'),
    (dict(dt=torch.randn(2, 4, 2, 5)), r'dt must be \(B, K=4, R heads, Lk=35\)'),
    (dict(x=torch.randn(2, 5, 35)), 'R=2 heads of dt must divide'),
    (dict(B=torch.randn(2, 4, 4, 34)), r'B must be \(B=2, K=4, N, Lk=35\)'),
    (dict(C=torch.randn(2, 4, 3, 35)), 'C must have the shape of B'),
    (dict(D=torch.randn(7)), r'D must be \(K\*D=24,\)'),
    (dict(dt_bias=torch.randn(4)), r'dt_bias must be \(K\*R=8,\)'),
    (dict(x=torch.randn(2, 6, 35).int()), 'x must be float16/bfloat16/float32/float64'),
    (dict(B=None), 'input B is required'),
])
def test_bad_input_is_a_clear_error(change, match):
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, dtype=torch.float32)
    t.update(change)
    with pytest.raises(ScanInputError, match=match):
        plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L)


def test_bad_options_are_clear_errors():
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, dtype=torch.float32)
    args = [t[n] for n in NAMES]
    with pytest.raises(ScanInputError, match='chunk_size must be a positive int'):
        plan_ssd_scan(*args, index=idx, length=L, chunk_size=0)
    with pytest.raises(ScanInputError, match='merge must be one of'):
        plan_ssd_scan(*args, index=idx, length=L, merge='max')
    with pytest.raises(ValueError, match='index must hold map positions'):
        plan_ssd_scan(*args, index=idx + 1, length=L)
    with pytest.raises(ValueError, match="scan backend 'nope' \(argument\) is not available for mode 'ssd'"):
        plan_ssd_scan(*args, index=idx, length=L, backend='nope')


def test_torch_compile_sees_one_op_and_matches():
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, dtype=torch.float32)
    args = [t[n] for n in NAMES]

    def fn(*a):
        return plan_ssd_scan(*a, index=idx, length=L, chunk_size=8)

    from torch._dynamo.testing import CompileCounterWithBackend
    counter = CompileCounterWithBackend('aot_eager')
    out = torch.compile(fn, backend=counter, fullgraph=True)(*args)
    torch.testing.assert_close(out, fn(*args))
    targets = [str(n.target) for g in counter.graphs for n in g.graph.nodes if n.op == 'call_function']
    assert any('plan_ssd' in s for s in targets), targets


def test_export_has_no_custom_op_and_matches():
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, dtype=torch.float32)

    class Scan(torch.nn.Module):
        def forward(self, x, dt, A, B, C, D, dt_bias):
            return plan_ssd_scan(x, dt, A, B, C, D, dt_bias, index=idx, length=L, chunk_size=8)

    args = tuple(t[n] for n in NAMES)
    ep = torch.export.export(Scan(), args)
    assert not any('vssm' in str(n.target) for n in ep.graph.nodes)
    torch.testing.assert_close(ep.module()(*args), Scan()(*args), rtol=1e-5, atol=1e-5)


def test_cost_records_through_the_protocol():
    from vssm.ops import get_backend
    from vssm.ops.cost import ScanShape
    from vssm.ops.flops import ssd_flops
    # vmamba_tiny_m2 stage 1 at batch 8: 6 heads of 16, 64 states, 56x56
    shape = ScanShape(batch=8, directions=4, channels=96, d_state=64, steps=3136, length=3136, heads=6)
    fwd, bwd = get_backend('fast', 'ssd').cost(shape)
    assert fwd.phase == 'forward' and bwd.phase == 'backward'
    assert fwd.flops == ssd_flops(8, 4, 6, 16, 3136, 64, 64)
    # minimum: x, Δ, B, C read once, the merged output written once (float32), and the per-head parameters
    assert fwd.min_bytes == 4 * (8 * 96 * 3136 * 2 + 8 * 4 * 6 * 3136 + 2 * 8 * 4 * 64 * 3136) + 4 * (4 * 6 * 2 + 4 * 96)
    assert fwd.bytes_moved > fwd.min_bytes and fwd.workspace_bytes > 0 and bwd.flops == 3 * fwd.flops


def test_benchmark_script_runs_at_smoke_size():
    """tools/benchmark_ssd.py (also `benchmark_scan.py --mode ssd`): runs and reports every shape; no timing asserted."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / 'tools' / 'benchmark_ssd.py'
    spec = importlib.util.spec_from_file_location('vssm_tools_benchmark_ssd', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    rows = tool.main(['--smoke', '--impls', 'reference', 'fast', 'nope'])
    assert [(r['stage'], r['impl']) for r in rows] == [(1, 'reference'), (1, 'fast'), (2, 'reference'), (2, 'fast')]
    assert all(r['fwd_ms'] > 0 and r['fwd_bwd_ms'] > 0 and r['gflop'] > 0 for r in rows)


def test_backend_env_names_the_cpu_path_of_both_modes(monkeypatch):
    """VSSM_SCAN_BACKEND=cpu (the fused C++ kernel for Mamba-1) gives the SSD its CPU path, the chunked form."""
    directions, merge = PLANS['vmamba']
    t, idx, L = make_inputs(directions, merge, dtype=torch.float32)
    args = [t[n] for n in NAMES]
    monkeypatch.setenv('VSSM_SCAN_BACKEND', 'cpu')
    assert torch.equal(plan_ssd_scan(*args, index=idx, length=L), plan_ssd_fast(*args, index=idx, length=L))
    monkeypatch.setenv('VSSM_SCAN_BACKEND', 'reference')
    torch.testing.assert_close(plan_ssd_scan(*args, index=idx, length=L), plan_ssd_fast(*args, index=idx, length=L))
