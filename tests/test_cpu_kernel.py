"""The fused C++ CPU scan ('cpu' backend) against the float64 reference: values and every gradient.

Covers every plan kind (VMamba h/v/flips, LocalMamba windows with padding, EfficientVMamba atrous, Vim
sequence-form u), every merge, low-rank and full Δ, odd sizes, batch 1, low precision, the work splits
(several channel blocks, several batch items per task, chunked backward), determinism across runs and
thread counts, the index check inside the extension, and that the models' mixers save no Δ-sized tensor.
"""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scan_cases import PLANS, SCAN_NAMES, check_against_reference, make_scan_case, run_with_grads
from vssm.ops import cpu_kernel, plan_scan_reference, plan_selective_scan

if cpu_kernel.load_extension() is None:  # pragma: no cover
    pytest.skip('no C++ compiler: the fused CPU scan is not available', allow_module_level=True)

NAMES = SCAN_NAMES


def make_case(plan, Bt=1, Dm=19, N=3, R=2, H=5, W=7, merge='sum', low_rank=True, with_z=True, seq_u=False,
              channel_last=True):
    """This file's defaults: Dm = 19 spans a full and a partial 16-lane vector; SS2D's channel-last layout."""
    return make_scan_case(plan, H, W, batch=Bt, channels=Dm, d_state=N, rank=R if low_rank else 0, merge=merge,
                          with_z=with_z, seq_u=seq_u, channel_last=channel_last)


def check_cpu(case, dtype=torch.float32, tol=2e-4, grad_tol=1e-3):
    """The 'cpu' backend on the case in dtype against the float64 reference on the same rounded values; the
    output is channel-last and every gradient is written in its input's layout."""
    return check_against_reference('cpu', case.cast(dtype), tol=(tol, tol), grad_tol=(grad_tol, grad_tol),
                                   layouts=True)


@pytest.mark.parametrize('low_rank', [True, False], ids=['low_rank', 'full_delta'])
@pytest.mark.parametrize('merge', ['sum', 'mean', 'none', 'group'])
@pytest.mark.parametrize('plan', list(PLANS))
def test_matches_reference(plan, merge, low_rank):
    if plan == 'vim' and merge == 'group':
        pytest.skip("merge 'group' reads a map")
    case = make_case(PLANS[plan], Bt=1 if plan != 'windows' else 2, merge=merge, low_rank=low_rank,
                     seq_u=plan == 'vim', channel_last=plan != 'atrous')
    check_cpu(case)


@pytest.mark.parametrize('Bt, Dm, H, W', [
    (16, 40, 3, 5),  # two vectors per channel block
    (35, 3, 2, 3),   # two batch items per task (batch groups)
    (3, 33, 1, 9),   # three vectors, the last with one lane; a 1-row map
])
def test_work_splits_match_reference(Bt, Dm, H, W):
    check_cpu(make_case(PLANS['vmamba'], Bt=Bt, Dm=Dm, N=2, H=H, W=W))


@pytest.mark.parametrize('R, H, W', [
    (1, 3, 3),    # no pair, only the odd tail; 9 steps = two blocks of four and one step alone
    (5, 3, 11),   # pairs plus the tail; 33 steps cross the 32-step block
    (48, 2, 7),   # VMamba-T stage-4 rank, 14 steps
])
def test_delta_ranks_and_step_remainders(R, H, W):
    """Low-rank Δ is computed four steps at a time: every rank parity and step remainder against the oracle."""
    check_cpu(make_case(PLANS['vmamba'], Bt=2, N=2, R=R, H=H, W=W))


def test_work_split_is_shape_only():
    s = cpu_kernel.work_split(1, 4, 96)
    assert s['forward_tasks'] == s['backward_tasks'] == 6  # batch 1 still splits over channel blocks
    assert cpu_kernel.work_split(16, 4, 40)['vectors_per_block'] == 2
    assert cpu_kernel.work_split(35, 4, 3)['batch_per_group'] == 2
    assert cpu_kernel.work_split(8, 4, 16, grouped=True)['forward_tasks'] == 32
    cost = cpu_kernel.cost_model(8, 4, 96, 3136, 3136, 1, 6, train=True)
    assert cost['forward_min_bytes'] > 0 and cost['backward_workspace_bytes'] > 0 and cost['backward_forward_passes'] == 1


def test_long_direction_backward_is_chunked():
    """A per-task step store past 4 MiB is cut into chunks recomputed from checkpoints: same gradients."""
    check_cpu(make_case(('h', 'h_flip'), Dm=3, N=64, R=1, H=1, W=2100, with_z=False), tol=1e-3, grad_tol=2e-3)


@pytest.mark.parametrize('dtype, tol', [(torch.bfloat16, 3e-2), (torch.float16, 5e-3)])
def test_low_precision_inputs(dtype, tol):
    check_cpu(make_case(PLANS['vmamba'], Bt=1), dtype=dtype, tol=tol, grad_tol=tol * 4)


def test_strided_grad_out_and_channel_first_u():
    """grad_out in any strides (here channel-first, not the output's layout) and a channel-first map."""
    case = make_case(PLANS['windows'], Bt=2, channel_last=False)
    t32, L = case.cast(torch.float32).inputs, case.length
    grad = torch.randn(2, 19, L)  # contiguous channel-first
    kw = dict(index=case.index, length=L, delta_softplus=True)
    args = [t32[n] for n in NAMES[:8]]
    mine = cpu_kernel.plan_scan_cpu_backward(grad, *args, delta_weight=t32['delta_weight'], **kw)
    ref = cpu_kernel.plan_scan_cpu_backward(grad.transpose(1, 2).contiguous().transpose(1, 2), *args,
                                            delta_weight=t32['delta_weight'], **kw)
    for a, b in zip(mine, ref):  # the same up to FMA contraction (whole-vector and per-lane paths differ)
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    for g, inp in zip(mine, [*args, t32['delta_weight']]):  # written directly in the inputs' layouts
        assert g.stride() == torch.empty_like(inp).stride()


def _run_cpu(case):
    grad_out = torch.randn(case.call(plan_scan_reference).shape, generator=torch.Generator().manual_seed(3))
    out, g = run_with_grads(lambda c: c.call(plan_selective_scan, backend='cpu'), case.cast(torch.float32), grad_out)
    return [out] + [g[n] for n in sorted(g)]


@pytest.mark.parametrize('merge', ['sum', 'group'])
def test_deterministic_across_runs_and_thread_counts(merge):
    case = make_case(PLANS['vmamba'], Bt=3, Dm=40, H=6, W=7, merge=merge)
    first = _run_cpu(case)
    again = _run_cpu(case)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(3)
        threaded = _run_cpu(case)
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, again, threaded):
        assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize('bad', [35, 1000, -2])
def test_bad_index_through_the_extension_raises(bad):
    """A direct call (no Python validation) with an index outside [-1, L) raises instead of writing out of bounds."""
    case = make_case(PLANS['vmamba'], Bt=1)
    t, idx, L = case.inputs, case.index, case.length
    args = list(cpu_kernel._kernel_args(*[(t[n].float() if t[n] is not None else None) for n in NAMES[:8]],
                                        t['delta_weight'].float(), idx))
    bad_idx = idx.clone()
    bad_idx[1, 4] = bad
    args[-1] = bad_idx
    ext = cpu_kernel.load_extension()
    with pytest.raises(RuntimeError, match=r'outside \[-1, 35\)'):
        ext.plan_scan_forward(*args, L, 0, True)
    g = torch.zeros(1, 19, L)
    with pytest.raises(RuntimeError, match=r'outside \[-1, 35\)'):
        ext.plan_scan_backward(g, *args, L, 0, True, torch.empty(1, 4, 2, L), torch.empty(1, 4, 3, L),
                               torch.empty(1, 4, 3, L))
    with pytest.raises(RuntimeError, match='index must be'):
        ext.plan_scan_forward(*args[:-1], idx.int(), L, 0, True)
    with pytest.raises(RuntimeError, match='u must be'):
        ext.plan_scan_forward(args[0][:, :3], *args[1:], L, 0, True)


def test_float64_goes_to_the_pytorch_path():
    """The kernel computes in float32: by default float64 calls go to 'fast'; asking for 'cpu' by name says why
    it cannot run them."""
    from vssm.ops import UnsupportedScanError
    case = make_case(PLANS['vmamba'], Bt=1, Dm=3)
    ref = case.call(plan_scan_reference)
    out = case.call(plan_selective_scan)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(UnsupportedScanError, match="'cpu' cannot run this call: it lacks dtype torch.float64"):
        case.call(plan_selective_scan, backend='cpu')


def test_extension_name_is_keyed_by_isa(monkeypatch):
    monkeypatch.setenv(cpu_kernel.NATIVE_ENV, '1')
    native = cpu_kernel.extension_name()
    assert native.startswith('vssm_plan_scan_cpu_') and native != 'vssm_plan_scan_cpu_generic'
    monkeypatch.setattr(cpu_kernel, '_isa_fingerprint', lambda: 'another cpu')
    assert cpu_kernel.extension_name() != native
    monkeypatch.setenv(cpu_kernel.NATIVE_ENV, '0')
    assert cpu_kernel.extension_name() == 'vssm_plan_scan_cpu_generic'


# ------------------------------------------------------------------------ the mixers keep Δ out of memory

class _ScanCalls(TorchDispatchMode):
    """Records the arguments of every vssm::plan_scan call (the op is visible below autograd)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.vssm.plan_scan.default:
            self.calls.append(args)
        return func(*args, **(kwargs or {}))


def _saved_during(fn):
    """Every tensor autograd saves while fn() runs (saved_tensors_hooks), and the scan calls' arguments."""
    saved = []

    def pack(t):
        saved.append(t.detach())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _ScanCalls() as mode:
        out = fn()
    return saved, mode.calls, out


def _full_deltas(args):
    """Δ as the scan would see it (before bias, with bias, after softplus) from a call's low-rank arguments."""
    delta, bias, weight = args[1], args[7], args[8]
    assert weight is not None and delta.shape[2] == weight.shape[2], 'Δ must reach the scan in low-rank form'
    pre = torch.einsum('kdr,bkrl->bkdl', weight.float(), delta.float())
    biased = pre + bias.view(1, weight.shape[0], -1, 1)
    return [pre, biased, F.softplus(biased)]


def _assert_no_delta_saved(saved, calls):
    assert calls
    for args in calls:
        for full in _full_deltas(args):
            ref = full.flatten().sort().values
            for t in saved:  # any layout: compare the sorted values
                if t.numel() == ref.numel() and t.is_floating_point():
                    assert not torch.allclose(t.float().flatten().sort().values, ref, rtol=1e-5, atol=1e-6), \
                        f'a tensor holding the values of Δ {tuple(t.shape)} is saved for backward'


def test_ss2d_saves_no_tensor_of_bkdl_elements(monkeypatch):
    from vssm.layers import SS2D
    monkeypatch.setenv('VSSM_SCAN_BACKEND', 'cpu')
    m = SS2D(32, d_state=1, ssm_ratio=1.0)  # VMamba-T config (d_state 1, ssm_ratio 1, Δ rank 2 here)
    x = torch.randn(2, 6, 5, 32, requires_grad=True)
    saved, calls, out = _saved_during(lambda: m(x))
    out.sum().backward()
    limit = 2 * 4 * 32 * 30  # B*K*D*L
    assert saved and max(t.numel() for t in saved) < limit, sorted(t.numel() for t in saved)[-3:]
    _assert_no_delta_saved(saved, calls)


def test_mixers_save_no_delta(monkeypatch):
    """Vim's mixer and EfficientVMamba's SS2D keep scan inputs of Δ's size (sequence-form u, atrous maps),
    so the check is on values: no saved tensor holds Δ (before or after its bias and softplus)."""
    from vssm.layers import SS2D, MultiMamba
    from vssm.ops import EFFICIENT_VMAMBA_PLAN
    monkeypatch.setenv('VSSM_SCAN_BACKEND', 'cpu')
    cases = [
        (MultiMamba(16, d_state=4), torch.randn(2, 9, 16, requires_grad=True)),
        (SS2D(16, d_state=4, ssm_ratio=2.0, gate=True, plan=EFFICIENT_VMAMBA_PLAN, pad_multiple=2),
         torch.randn(2, 6, 4, 16, requires_grad=True)),
    ]
    for m, x in cases:
        saved, calls, out = _saved_during(lambda: m(x))
        out.sum().backward()
        _assert_no_delta_saved(saved, calls)
