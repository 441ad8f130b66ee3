"""The fused Triton SSD kernel against the float64 reference, under Triton's interpreter on CPU (small shapes).

As tests/test_triton_scan.py: TRITON_INTERPRET=1 must precede Triton's import; when an earlier module imported
Triton first, test_interpreted_tests_in_subprocess runs the @interpreted tests in a fresh process.
"""
import os
import subprocess
import sys

import pytest
import torch

os.environ['TRITON_INTERPRET'] = '1'  # takes effect only if Triton is not imported yet in this process
triton = pytest.importorskip('triton')

from vssm.ops import build_index, plan_ssd_reference, plan_ssd_scan  # noqa: E402

INTERPRETED = type(triton.language.zeros).__name__ == 'InterpretedFunction'
interpreted = pytest.mark.skipif(not INTERPRETED, reason='Triton was imported before TRITON_INTERPRET=1 was set; '
                                                         'run by test_interpreted_tests_in_subprocess')
NAMES = ('x', 'dt', 'A', 'B', 'C', 'D', 'dt_bias')


def make_inputs(plan, Bt, R, P, N, H, W, dtype=torch.float32, device='cpu'):
    """Inputs as SSD2D makes them: a channel-last map, Δ / B / C strided slices of one projection."""
    idx = build_index(plan, H, W, device)
    K, Lk = idx.shape
    L = H * W
    g = torch.Generator().manual_seed(0)
    x = torch.randn(Bt, L, R * P, generator=g).transpose(1, 2)
    proj = torch.randn(Bt, K, Lk, R + 2 * N, generator=g)
    t = dict(x=x, dt=proj[..., :R].transpose(-1, -2), B=proj[..., R:R + N].transpose(-1, -2),
             C=proj[..., R + N:].transpose(-1, -2), A=-torch.rand(K * R, generator=g) - 0.2,
             D=torch.randn(K * R * P, generator=g), dt_bias=torch.randn(K * R, generator=g) * 0.3)
    return {n: v.to(device=device, dtype=dtype if n in ('x', 'dt', 'B', 'C') else torch.float32)
            for n, v in t.items()}, idx, L


CASES = {
    # plan, merge, batch, heads, head dim, state, H, W: odd sizes (blocks padded to 16), several 64-step tiles
    # with a partial last one, padding steps (windows), directions shorter than the map (atrous), batch 1
    'vmamba': (('h', 'v', 'h_flip', 'v_flip'), 'sum', 2, 2, 3, 5, 9, 15),
    'atrous-mean': (('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v'), 'mean', 1, 1, 16, 16, 11, 13),
    'windows': (('w2', 'w3_flip'), 'sum', 1, 3, 5, 20, 7, 11),
}


@interpreted
@pytest.mark.parametrize('case', list(CASES))
def test_forward_matches_float64_reference(case):
    plan, merge, Bt, R, P, N, H, W = CASES[case]
    t, idx, L = make_inputs(plan, Bt, R, P, N, H, W)
    out = plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L, merge=merge, backend='triton')
    ref = plan_ssd_reference(*[t[n].double() for n in NAMES], index=idx, length=L, merge=merge)
    assert out.dtype == torch.float32 and out.transpose(1, 2).is_contiguous()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    again = plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L, merge=merge, backend='triton')
    assert torch.equal(out, again)  # bitwise, run to run


@interpreted
@pytest.mark.parametrize('case', list(CASES))
def test_fused_backward_matches_float64_reference(case):
    plan, merge, Bt, R, P, N, H, W = CASES[case]
    t, idx, L = make_inputs(plan, Bt, R, P, N, H, W)
    leaves = {n: v.detach().clone().requires_grad_(True) for n, v in t.items()}
    out = plan_ssd_scan(*[leaves[n] for n in NAMES], index=idx, length=L, merge=merge, backend='triton')
    g = torch.randn_like(out)
    out.backward(g)
    ref_leaves = {n: v.detach().double().requires_grad_(True) for n, v in t.items()}
    plan_ssd_reference(*[ref_leaves[n] for n in NAMES], index=idx, length=L, merge=merge).backward(g.double())
    for n in NAMES:
        torch.testing.assert_close(leaves[n].grad.double(), ref_leaves[n].grad, rtol=1e-4, atol=2e-4,
                                   msg=lambda m: f'grad {n}: {m}')
        assert leaves[n].grad.stride() == torch.empty_like(t[n]).stride(), n  # the op's gradient layout
    again = {n: v.detach().clone().requires_grad_(True) for n, v in t.items()}
    plan_ssd_scan(*[again[n] for n in NAMES], index=idx, length=L, merge=merge, backend='triton').backward(g)
    assert all(torch.equal(again[n].grad, leaves[n].grad) for n in NAMES)  # bitwise, run to run


@interpreted
def test_bfloat16_and_no_optional_inputs():
    plan, merge, Bt, R, P, N, H, W = CASES['vmamba']
    t, idx, L = make_inputs(plan, Bt, R, P, N, H, W)
    t.update(D=None, dt_bias=None, dt=t['dt'].abs())  # Δ used as given: keep it positive (decay <= 1)
    leaves = {n: (v.detach().clone().requires_grad_(True) if v is not None else None) for n, v in t.items()}
    out = plan_ssd_scan(*[leaves[n] for n in NAMES], index=idx, length=L, dt_softplus=False, backend='triton')
    ref_leaves = {n: (v.detach().double().requires_grad_(True) if v is not None else None) for n, v in t.items()}
    ref = plan_ssd_reference(*[ref_leaves[n] for n in NAMES], index=idx, length=L, dt_softplus=False)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g.double())
    for n in ('x', 'dt', 'A', 'B', 'C'):
        torch.testing.assert_close(leaves[n].grad.double(), ref_leaves[n].grad, rtol=1e-4, atol=2e-4)
    t16, _, _ = make_inputs(plan, Bt, R, P, N, H, W, dtype=torch.bfloat16)
    out16 = plan_ssd_scan(*[t16[n] for n in NAMES], index=idx, length=L, backend='triton')
    ref16 = plan_ssd_reference(*[t16[n].double() for n in NAMES], index=idx, length=L)
    assert out16.dtype == torch.bfloat16
    torch.testing.assert_close(out16.double(), ref16, rtol=2e-2, atol=5e-2)


@interpreted
def test_unsupported_merge_is_a_clear_error():
    t, idx, L = make_inputs(('h', 'v'), 1, 1, 16, 16, 4, 4)
    with pytest.raises(ValueError, match="scan backend 'triton' cannot run this call: it lacks merge 'none'"):
        plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L, merge='none', backend='triton')


@pytest.mark.gpu
@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_gpu_vmamba_t_m2_stage_shapes(dtype):
    for side, ch in ((56, 96), (14, 384)):
        t, idx, L = make_inputs(('h', 'v', 'h_flip', 'v_flip'), 4, ch // 16, 16, 64, side, side, dtype, 'cuda')
        out = plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L, backend='triton')
        ref = plan_ssd_reference(*[t[n].double() for n in NAMES], index=idx, length=L)
        tol = 1e-3 if dtype == torch.float32 else 5e-2
        torch.testing.assert_close(out.double(), ref, rtol=tol, atol=tol * 10)
        assert torch.equal(out, plan_ssd_scan(*[t[n] for n in NAMES], index=idx, length=L, backend='triton'))


def test_interpreted_tests_in_subprocess():
    """The @interpreted tests above, in a fresh process where TRITON_INTERPRET=1 precedes Triton's import."""
    if INTERPRETED:
        pytest.skip('already interpreted in this process')
    env = dict(os.environ, TRITON_INTERPRET='1')
    proc = subprocess.run([sys.executable, '-m', 'pytest', __file__, '-q', '-p', 'no:cacheprovider', '-m', 'not gpu',
                           '-k', 'not in_subprocess'], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert ' passed' in proc.stdout, proc.stdout[-2000:]


@pytest.mark.gpu
def test_gpu_fused_backward_at_a_model_shape():
    """vmamba_tiny_m2 stage 2 (28x28, 12 heads of 16, 64 states): every gradient against float64, bitwise repeat."""
    t, idx, L = make_inputs(('h', 'v', 'h_flip', 'v_flip'), 2, 12, 16, 64, 28, 28, torch.float32, 'cuda')

    def grads(fn_dtype):
        leaves = {n: v.detach().to(fn_dtype).requires_grad_(True) for n, v in t.items()}
        out = plan_ssd_scan(*[leaves[n] for n in NAMES], index=idx, length=L,
                            backend='triton' if fn_dtype == torch.float32 else 'reference')
        out.backward(torch.ones_like(out))
        return {n: v.grad for n, v in leaves.items()}

    got, again, ref = grads(torch.float32), grads(torch.float32), grads(torch.float64)
    for n in NAMES:
        scale = float(ref[n].abs().max())
        torch.testing.assert_close(got[n].double(), ref[n], rtol=1e-3, atol=1e-4 * scale, msg=lambda m: f'{n}: {m}')
        assert torch.equal(got[n], again[n]), n
