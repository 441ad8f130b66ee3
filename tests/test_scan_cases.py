"""tests/scan_cases.py, the shared builder and check of the backend tests: the builder makes the shapes and
layouts it promises, and the check fails on a wrong output, a wrong or missing gradient, a wrong dtype or
layout (a backend suite built on it can fail)."""
import pytest
import torch

from scan_cases import ATROUS, VIM, VMAMBA, check_against_reference, make_scan_case
from vssm.ops import plan_scan_reference


@pytest.mark.parametrize('merge, seq_u, rank', [('sum', False, 0), ('group', False, 2), ('mean', True, 3)])
def test_builder_shapes(merge, seq_u, rank):
    plan = VIM if seq_u else VMAMBA
    case = make_scan_case(plan, 3, 5, batch=2, channels=4, d_state=2, rank=rank, merge=merge, seq_u=seq_u)
    K, Lk = case.index.shape
    ch = K * 4 if merge == 'group' else 4
    assert case['u'].shape == ((2, K, 4, Lk) if seq_u else (2, ch, 15))
    assert case['delta'].shape == (2, K, rank or 4, Lk)
    assert (case['delta_weight'] is None) == (rank == 0)
    assert case['A'].shape == (K * 4, 2) and (case['A'] < 0).all()
    assert case['B'].shape == case['C'].shape == (2, K, 2, Lk) and case['z'].shape[1] == ch
    with pytest.raises(ValueError, match="merge 'group' reads a map u"):
        make_scan_case(VMAMBA, 3, 5, merge='group', seq_u=True)


def test_builder_layouts_dtypes_and_seed():
    case = make_scan_case(ATROUS, 5, 7, channels=3, d_state=2, rank=2, channel_last=True, projection=True,
                          dtype=torch.bfloat16, param_dtype=torch.float32)
    assert case['u'].stride(1) == 1 and case['z'].stride(1) == 1  # channel-last maps
    assert case['delta'].data_ptr() == case['B'].data_ptr() - 2 * 2  # slices of one (B, K, Lk, R + 2N) projection
    assert case['u'].dtype == torch.bfloat16 and case['A'].dtype == case['delta_weight'].dtype == torch.float32
    assert case.cast(torch.float32)['u'].stride() == case['u'].stride()
    a = make_scan_case(VMAMBA, 2, 3, generator=torch.Generator().manual_seed(5))
    b = make_scan_case(VMAMBA, 2, 3, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a[n], b[n]) for n in a.present())


TOL = (1e-4, 1e-5)  # float32 inputs against the float64 oracle


def _reference_with(change):
    """A 'backend' that is the reference with ``change(out, case)`` applied to its output."""
    return lambda case: change(case.call(plan_scan_reference), case)


def test_check_passes_the_reference_and_fails_wrong_backends():
    case = make_scan_case(VMAMBA, 3, 4, channels=3, d_state=2, rank=2).cast(torch.float32)
    check_against_reference(_reference_with(lambda out, c: out), case, tol=TOL)  # passes
    wrong = {
        'output off by 1e-3': (_reference_with(lambda out, c: out * 1.001), {}, 'not close'),
        'D ignored': (lambda c: c.with_inputs(D=None).call(plan_scan_reference), {}, 'not close'),
        'gradient of D lost': (lambda c: c.with_inputs(D=c['D'].detach()).call(plan_scan_reference), {},
                               'every input given'),
        # the same values, a gradient of D off by 0.01 * sum(grad_out)
        'wrong gradient of D': (_reference_with(lambda out, c: out + ((c['D'] - c['D'].detach()) * 0.01).sum()), {},
                                'dD'),
        'float64 output': (_reference_with(lambda out, c: out.double()), {}, 'output dtype'),
        'contiguous output': (_reference_with(lambda out, c: out.contiguous()), dict(layouts=True), 'channel-last'),
    }
    for what, (run, kw, match) in wrong.items():
        with pytest.raises(AssertionError, match=match):
            check_against_reference(run, case, tol=TOL, **kw)
            pytest.fail(f'the check let a backend with "{what}" pass')


def test_check_with_a_direct_backward_and_scaled_tolerances():
    case = make_scan_case(VMAMBA, 3, 4, channels=3, d_state=2, with_D=False).cast(torch.float32)

    def backward(grad_out, c):  # the reference's own gradients, one of them scaled by 1.01
        from scan_cases import reference_with_grads
        _, _, g = reference_with_grads(c, grad_out.double())
        g = {n: v.float() for n, v in g.items()}
        g['delta_bias'] = g['delta_bias'] * 1.01
        return dict(g, D=None)

    run = lambda c: c.call(plan_scan_reference)  # noqa: E731
    with pytest.raises(AssertionError, match='ddelta_bias'):
        check_against_reference(run, case, backward=backward, tol=TOL, grad_tol=(1e-4, 1e-5))
    # a per-name tolerance loose enough for the scaled gradient passes
    check_against_reference(run, case, backward=backward, tol=TOL,
                            grad_tol=lambda n: (0.02, 1e-5) if n == 'delta_bias' else (1e-4, 1e-5))
