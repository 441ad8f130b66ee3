"""torch.compile sees the plan scan as one custom op: no graph break, same numbers as eager, and a fake
(meta) implementation that matches the real op's shapes, dtypes and strides."""
import pytest
import timm
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import vssm  # noqa: F401  (registers the models)
from vssm.layers import SS2D
from vssm.ops import BACKEND_ENV, build_index, plan_selective_scan

NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


@pytest.fixture(autouse=True)
def _fast_backend(monkeypatch):
    # the PyTorch path: compile tests must not depend on a C++ toolchain building the CPU extension
    monkeypatch.setenv(BACKEND_ENV, 'fast')


def tiny_vmamba():
    return timm.create_model('vmamba_tiny_s1l8', depths=(1, 1, 1, 1), dims=16, num_classes=10)


def test_inductor_compiled_ss2d_matches_eager():
    """The default backend (inductor's C++ codegen around the custom op). A single SS2D layer keeps the
    C++ build to ~20 s; the whole tiny model takes 1-2 minutes on 2 cores (see docs/scan_kernel.md)."""
    layer = SS2D(16).eval()
    x = torch.randn(2, 5, 7, 16)  # odd, non-square map
    with torch.no_grad():
        expected = layer(x)
        got = torch.compile(layer, fullgraph=True)(x)  # fullgraph: a graph break fails the test
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_compiled_training_step_matches_eager():
    """The whole tiny model, forward and backward, without a graph break, through AOTAutograd (the op's fake
    and autograd registrations); the aot_eager backend skips inductor's C++ build."""
    model = tiny_vmamba().train()
    x = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    eager_out = model(x)
    eager_out.square().mean().backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    torch.manual_seed(1)
    out = compiled(x)
    out.square().mean().backward()
    torch.testing.assert_close(out, eager_out, rtol=1e-5, atol=1e-6)
    assert eager_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for n, g in eager_grads.items():
        torch.testing.assert_close(model.get_parameter(n).grad, g, rtol=1e-4, atol=1e-6, msg=lambda m: f'{n}: {m}')


def _scan_inputs(channel_last: bool, requires_grad: bool = False):
    Bt, Dm, N, H, W = 2, 3, 2, 3, 4
    idx = build_index(('h', 'v', 'h_flip', 'v_flip'), H, W)
    K, Lk = idx.shape
    L = H * W
    u = torch.randn(Bt, L, Dm).transpose(1, 2) if channel_last else torch.randn(Bt, Dm, L)
    BC = torch.randn(Bt, K, 2 * N, Lk)
    t = dict(u=u, delta=torch.randn(Bt, K, Dm, Lk) * 0.5, A=-torch.rand(K * Dm, N) - 0.2, B=BC[:, :, :N],
             C=BC[:, :, N:], D=torch.randn(K * Dm), z=torch.randn(Bt, Dm, L), delta_bias=torch.randn(K * Dm) * 0.1)
    if requires_grad:
        t = {n: v.detach().requires_grad_() for n, v in t.items()}
    return t, idx, L


@pytest.mark.parametrize('merge', ['sum', 'none'])
def test_opcheck_plan_scan(merge):
    """torch.library.opcheck: schema, fake tensor kernel, autograd registration, AOT dispatch."""
    t, idx, L = _scan_inputs(channel_last=True, requires_grad=True)
    args = (*[t[n] for n in NAMES], None, idx, L, merge, True, 'fast')
    torch.library.opcheck(torch.ops.vssm.plan_scan.default, args)


@pytest.mark.parametrize('channel_last', [False, True])
def test_fake_outputs_and_gradients_match_real(channel_last):
    """Shapes, dtypes and strides of the forward and backward ops under FakeTensorMode equal the real ones."""
    t, idx, L = _scan_inputs(channel_last)
    args = [t[n] for n in NAMES]
    real_out = plan_selective_scan(*args, index=idx, length=L)
    grad_out = torch.randn_like(real_out)
    bwd_args = (grad_out, *args, None, idx, L, 'sum', True, 'fast')
    real_grads = torch.ops.vssm.plan_scan_bwd(*bwd_args)
    with FakeTensorMode() as mode:
        fake_args = [mode.from_tensor(a) for a in args]
        fake_idx = mode.from_tensor(idx)
        fake_out = plan_selective_scan(*fake_args, index=fake_idx, length=L)
        fake_grads = torch.ops.vssm.plan_scan_bwd(mode.from_tensor(grad_out), *fake_args, None, fake_idx, L, 'sum', True,
                                                  'fast')
    for real, fake in [(real_out, fake_out), *zip(real_grads, fake_grads)]:
        assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride())
