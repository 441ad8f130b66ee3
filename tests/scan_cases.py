"""Shared by the scan backend tests: one input builder and one check against the float64 reference.

    case = make_scan_case(VMAMBA, 5, 7, batch=2, channels=3, d_state=2, rank=2, merge='sum')
    case = case.cast(torch.float32)                      # inputs as a backend sees them
    out, grads = check_against_reference('cpu', case, tol=(1e-4, 1e-4), grad_tol=(1e-3, 1e-3))

``run`` is a backend name (called through ``plan_selective_scan(backend=...)`` and autograd) or a callable
``run(case) -> output``; a backend called outside autograd also passes ``backward(grad_out, case) -> {name:
gradient}``. The reference runs in float64 on the same (rounded) values, so the tolerance measures the backend,
not the input rounding.
"""
from dataclasses import dataclass, replace
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from vssm.ops import build_index, plan_scan_reference, plan_selective_scan

# the op's tensor arguments, in order (the first eight are positional, delta_weight is a keyword)
SCAN_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_weight')
PARAM_NAMES = ('A', 'D', 'delta_bias', 'delta_weight')  # model parameters (float32 under autocast)

# one plan of each kind the models use
VMAMBA = ('h', 'v', 'h_flip', 'v_flip')
VIM = ('h', 'h_flip')  # Vim: sequence-form u
WINDOWS = ('w2', 'w2_flip', 'w3', 'w3_flip')  # LocalMamba windows, padded on odd maps
ATROUS = ('a2_00_h', 'a2_10_v', 'a2_01_h', 'a2_11_v')  # EfficientVMamba sub-grids, unequal lengths on odd maps
PLANS = {'vmamba': VMAMBA, 'vim': VIM, 'windows': WINDOWS, 'atrous': ATROUS}

Tol = Tuple[float, float]  # (rtol, atol)


@dataclass
class ScanCase:
    """One call of the op: its tensors by name (absent ones None), the index map and the scalar arguments."""
    inputs: Dict[str, Optional[torch.Tensor]]
    index: torch.Tensor
    length: int
    merge: str = 'sum'
    delta_softplus: bool = True

    def __getitem__(self, name):
        return self.inputs[name]

    def present(self):
        return [n for n in SCAN_NAMES if self.inputs.get(n) is not None]

    def call(self, fn: Callable, inputs: Optional[dict] = None, **kw) -> torch.Tensor:
        """fn(u, delta, A, B, C, D, z, delta_bias, index=, length=, merge=, delta_softplus=, delta_weight=, **kw):
        plan_selective_scan, plan_scan_reference, plan_scan_fast or anything with their signature."""
        t = self.inputs if inputs is None else inputs
        return fn(*[t.get(n) for n in SCAN_NAMES[:8]], index=self.index, length=self.length, merge=self.merge,
                  delta_softplus=self.delta_softplus, delta_weight=t.get('delta_weight'), **kw)

    def with_inputs(self, **changes) -> 'ScanCase':
        return replace(self, inputs=dict(self.inputs, **changes))

    def cast(self, dtype: torch.dtype, params: Optional[torch.dtype] = None) -> 'ScanCase':
        """Floating inputs to dtype (parameters to ``params`` when given), keeping each tensor's strides."""
        def to(n, v):
            if v is None or not v.is_floating_point():
                return v
            return v.to(params if params is not None and n in PARAM_NAMES else dtype)
        return replace(self, inputs={n: to(n, v) for n, v in self.inputs.items()})


def make_scan_case(plan, H: int, W: int, *, batch: int = 1, channels: int = 3, d_state: int = 2, rank: int = 0,
                   merge: str = 'sum', seq_u: bool = False, with_z: bool = True, with_D: bool = True,
                   with_delta_bias: bool = True, channel_last: bool = False, projection: bool = False,
                   dtype: torch.dtype = torch.float64, param_dtype: Optional[torch.dtype] = None,
                   device='cpu', delta_scale: float = 0.5, mamba_init: bool = False,
                   index: Optional[torch.Tensor] = None,
                   generator: Optional[torch.Generator] = None) -> ScanCase:
    """Random valid inputs of one call, shaped and laid out as the models produce them.

    plan: direction names (see vssm.ops.plans) on an H x W map; ``index`` overrides the built map.
    rank > 0: Δ in low-rank form, delta (B, K, R, Lk) and delta_weight (K, D, R); 0: full Δ (B, K, D, Lk).
    merge 'group': u and z are grouped maps (B, K*D, L). seq_u: u per direction (B, K, D, Lk), as Vim.
    channel_last: u and z (and the sequence tensors B, C and Δ's factor) are transposed views of channel-last
    memory, as SS2D makes them; projection: Δ's factor, B and C are slices of one (B, K, Lk, R + 2N) tensor
    (x_dbl), implies channel-last sequences. Full Δ stays contiguous.
    Values: Δ before softplus ~ N(0, delta_scale^2), A = -U(0.2, 1.2), delta_bias ~ 0.1 N(0, 1);
    mamba_init: mamba_ssm's test distribution (A = -U(0.1, 0.6), delta_bias = U(0, 0.5), projection x 0.5).
    dtype: of the activations; param_dtype (default dtype): of A, D, delta_bias, delta_weight.
    generator: a CPU generator for reproducible values independent of the global seed (None: global RNG).
    """
    idx = build_index(plan, H, W, device) if index is None else index.to(device)
    K, Lk = idx.shape
    L = H * W
    Dm, N, R = channels, d_state, rank
    if merge == 'group' and seq_u:
        raise ValueError("merge 'group' reads a map u; seq_u must be False")
    param_dtype = dtype if param_dtype is None else param_dtype
    ch = K * Dm if merge == 'group' else Dm

    def randn(*shape, dt=dtype):
        return torch.randn(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dt)

    def rand(*shape, dt=param_dtype):
        return torch.rand(*shape, generator=generator, dtype=torch.float64).to(device=device, dtype=dt)

    def seq(*shape_last):  # (B, K, X, Lk), channel-last memory when asked
        if channel_last or projection:
            return randn(batch, K, Lk, *shape_last).transpose(-1, -2)
        return randn(batch, K, *shape_last, Lk)

    def map_tensor():
        return randn(batch, L, ch).transpose(1, 2) if channel_last else randn(batch, ch, L)

    if seq_u:
        u = randn(batch, K, Lk, Dm).transpose(-1, -2) if channel_last else randn(batch, K, Dm, Lk)
    else:
        u = map_tensor()
    z = map_tensor() if with_z else None
    if projection:
        proj = randn(batch, K, Lk, R + 2 * N) * (0.5 if mamba_init else 1.0)
        factor, B, C = (proj[..., :R].transpose(-1, -2), proj[..., R:R + N].transpose(-1, -2),
                        proj[..., R + N:].transpose(-1, -2))
    else:
        factor = seq(R) if R else None
        B, C = seq(N), seq(N)
        if mamba_init:
            B, C = B * 0.5, C * 0.5
    if R:
        delta = factor
        weight = randn(K, Dm, R, dt=param_dtype) * (delta_scale / R ** 0.5)
    else:
        delta = randn(batch, K, Dm, Lk) * delta_scale
        weight = None
    if mamba_init:
        A = -0.5 * rand(K * Dm, N) - 0.1
        bias = 0.5 * rand(K * Dm)
    else:
        A = -rand(K * Dm, N) - 0.2
        bias = randn(K * Dm, dt=param_dtype) * 0.1
    inputs = dict(u=u, delta=delta, A=A, B=B, C=C, D=randn(K * Dm, dt=param_dtype) if with_D else None, z=z,
                  delta_bias=bias if with_delta_bias else None, delta_weight=weight)
    return ScanCase(inputs, idx, L, merge)


# ------------------------------------------------------------------------------------------------ running

def run_with_grads(run: Callable, case: ScanCase, grad_out: torch.Tensor):
    """Output and the gradient of every present input, through autograd. autograd.grad returns the gradients
    as the op made them (a non-dense leaf's .grad would be made contiguous), so their layouts can be checked."""
    leaves = {n: (v.detach().requires_grad_(v.is_floating_point()) if v is not None else None)
              for n, v in case.inputs.items()}
    leaf_case = replace(case, inputs=leaves)
    out = run(leaf_case)
    present = leaf_case.present()
    grads = torch.autograd.grad(out, [leaves[n] for n in present], grad_out.to(out.dtype), allow_unused=True)
    return out.detach(), dict(zip(present, grads))


def reference_with_grads(case: ScanCase, grad_out: Optional[torch.Tensor] = None, *, grads: bool = True,
                         oracle: Callable = plan_scan_reference, grad_seed: int = 7):
    """The float64 oracle on the case's (possibly rounded) values: output, output gradient, input gradients.

    oracle: the step-by-step reference, or at long shapes its chunked closed form plan_scan_fast (in float64 the
    same values; tests/test_ops_scan.py checks the two against each other). grad_out None: a fixed random one."""
    ref_case = case.cast(torch.float64)
    if not grads:
        with torch.no_grad():
            return ref_case.call(oracle), None, {}
    if grad_out is None:
        with torch.no_grad():
            shape = ref_case.call(oracle).shape
        grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
        grad_out = grad_out.to(case['u'].device)
    out, g = run_with_grads(lambda c: c.call(oracle), ref_case, grad_out.double())
    return out, grad_out.double(), g


def backend_runner(backend: str) -> Callable:
    """run(case) through the public entry point with the named backend (custom op + autograd)."""
    return lambda case: case.call(plan_selective_scan, backend=backend)


def check_against_reference(run: Union[str, Callable], case: ScanCase, *, tol: Tol = (1e-4, 1e-4),
                            grad_tol: Union[None, Tol, Callable[[str], Tol]] = None, grads: bool = True,
                            grad_scale: bool = False, layouts: bool = False, finite: bool = False,
                            backward: Optional[Callable] = None, oracle: Callable = plan_scan_reference,
                            grad_out: Optional[torch.Tensor] = None):
    """Assert that ``run`` gives the float64 reference's output (and gradients) on ``case``; returns (out, grads).

    tol: (rtol, atol) of the output. grad_tol: of the gradients, one pair or name -> pair (default tol).
    grad_scale: atol times max(1, |reference gradient|) (parameter gradients sum over batch and sequence).
    layouts: the output is channel-last and each gradient has its input's strides (torch.empty_like's).
    finite: the output (and gradients) must be finite, beside equal.
    backward(grad_out, case) -> {name: grad}: for a backend called directly, outside autograd.
    """
    run = backend_runner(run) if isinstance(run, str) else run
    ref, grad_out, ref_g = reference_with_grads(case, grad_out, grads=grads, oracle=oracle)
    if not grads:
        out, g = run(case), {}
    elif backward is not None:
        out = run(case)
        g = backward(grad_out.to(out.dtype), case)
    else:
        out, g = run_with_grads(run, case, grad_out)
    assert out.dtype == case['u'].dtype, f'output dtype {out.dtype}, inputs {case["u"].dtype}'
    assert out.shape == ref.shape, f'output shape {tuple(out.shape)}, reference {tuple(ref.shape)}'
    if finite:
        assert torch.isfinite(out).all(), 'non-finite output on valid inputs'
    if layouts:
        assert out.transpose(-1, -2).is_contiguous(), 'the output must be channel-last'
    torch.testing.assert_close(out.double(), ref, rtol=tol[0], atol=tol[1])
    if not grads:
        return out, g
    pair = grad_tol if callable(grad_tol) else (lambda n, p=grad_tol or tol: p)
    assert set(n for n in g if g[n] is not None) == set(ref_g), 'every input given gets a gradient, absent ones none'
    for n, want in ref_g.items():
        got, inp = g[n], case[n]
        assert got.shape == inp.shape and got.dtype == inp.dtype, \
            f'd{n}: {tuple(got.shape)} {got.dtype}, input {tuple(inp.shape)} {inp.dtype}'
        if layouts:
            assert got.stride() == torch.empty_like(inp).stride(), f'd{n} is not in its input layout'
        if finite:
            assert torch.isfinite(got).all(), f'non-finite d{n}'
        rtol, atol = pair(n)
        if grad_scale:
            atol = atol * max(1.0, want.abs().max().item())
        torch.testing.assert_close(got.double(), want, rtol=rtol, atol=atol, msg=lambda m, n=n: f'd{n}: {m}')
    return out, g
