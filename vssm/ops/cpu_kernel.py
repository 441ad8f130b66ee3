"""'cpu' backend: the fused plan scan compiled from csrc/plan_scan_cpu.cpp on first use.

torch's extension machinery builds it with the machine's C++ compiler (cached under
~/.cache/torch_extensions). Forward runs fused in C++; gradients come from recomputing the
C++ backward (reverse walk over recomputed states), so training works too. If the build fails (no compiler), the backend is
simply not available and dispatch stays on 'fast'.
"""
import os
import warnings
from pathlib import Path

import torch

from .scan import Backend, plan_scan_fast, register_backend

__all__ = ['load_extension', 'plan_scan_cpu', 'plan_scan_cpu_backward']

_SOURCE = Path(__file__).parent / 'csrc' / 'plan_scan_cpu.cpp'
_EXT = None
_FAILED = False


def load_extension(verbose: bool = False):
    """Build (first time) and import the extension; None when it cannot be built here."""
    global _EXT, _FAILED
    if _EXT is not None or _FAILED:
        return _EXT
    try:
        from torch.utils.cpp_extension import load
        import logging
        logging.getLogger('vssm').info('building the fused CPU scan (first use only, about a minute)')
        flags = ['-O3', '-ffast-math', '-fopenmp']
        if os.environ.get('VSSM_CPU_NATIVE', '1') == '1':
            flags.append('-march=native')
        _EXT = load('vssm_plan_scan_cpu', [str(_SOURCE)], extra_cflags=flags, extra_ldflags=['-fopenmp'],
                    verbose=verbose)
    except Exception as e:  # no compiler, no headers: the PyTorch path still works
        _FAILED = True
        warnings.warn(f'vssm: the fused CPU scan could not be built ({type(e).__name__}: {e}); using the '
                      f'PyTorch path')
    return _EXT


def _kernel_inputs(u, delta, A, B, C, D, delta_bias, index):
    # channel-last, time-major inside each direction: the kernel's inner loop runs over channels
    f32 = torch.float32
    K = index.shape[0]
    Dm = delta.shape[2]
    empty = u.new_empty(0, dtype=f32)
    return (
        u.transpose(-1, -2).to(f32).contiguous(), delta.transpose(-1, -2).to(f32).contiguous(),
        A.to(f32).reshape(K, Dm, -1).contiguous(), B.transpose(-1, -2).to(f32).contiguous(),
        C.transpose(-1, -2).to(f32).contiguous(), D.to(f32).contiguous() if D is not None else empty,
        delta_bias.to(f32).contiguous() if delta_bias is not None else empty, index.contiguous(),
    )


def _has_float64(*tensors) -> bool:
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def _forward_ungated(ext, u, delta, A, B, C, D, delta_bias, index, length, merge, delta_softplus):
    out = ext.plan_scan_forward(*_kernel_inputs(u, delta, A, B, C, D, delta_bias, index), length, merge == 'none',
                                delta_softplus).transpose(-1, -2)
    return out / index.shape[0] if merge == 'mean' else out


def _gate(z, merge):
    gate = torch.nn.functional.silu(z.float())
    return gate[:, None] if merge == 'none' else gate


def plan_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                  delta_softplus=True):
    """Same contract as plan_scan_reference; float32 compute (float64 inputs go to the PyTorch path)."""
    if _has_float64(u, delta, A, B, C, D, z, delta_bias):
        return plan_scan_fast(u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                              delta_softplus=delta_softplus)
    out = _forward_ungated(load_extension(), u, delta, A, B, C, D, delta_bias, index, length, merge, delta_softplus)
    if z is not None:
        out = out * _gate(z, merge)
    return out.to(u.dtype)


def plan_scan_cpu_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                           merge='sum', delta_softplus=True):
    """Gradients for (u, delta, A, B, C, D, z, delta_bias) in the input layouts and dtypes."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if _has_float64(grad_out, *inputs):
        from .scan import _recompute_backward
        return _recompute_backward(plan_scan_fast, grad_out, inputs, index, length, merge, delta_softplus)
    ext = load_extension()
    g = grad_out.float()
    dz = None
    if z is not None:
        y = _forward_ungated(ext, u, delta, A, B, C, D, delta_bias, index, length, merge, delta_softplus)
        zf = z.float()
        sig = torch.sigmoid(zf)
        dsilu = sig * (1 + zf * (1 - sig))
        dz = g * y * (dsilu[:, None] if merge == 'none' else dsilu)
        dz = dz.sum(1) if merge == 'none' else dz
        g = g * _gate(z, merge)
    if merge == 'mean':
        g = g / index.shape[0]
    du, ddelta, dA, dB, dC, dD, dbias = ext.plan_scan_backward(
        *_kernel_inputs(u, delta, A, B, C, D, delta_bias, index), g.transpose(-1, -2).contiguous(),
        merge == 'none', delta_softplus)
    grads = (du.transpose(-1, -2), ddelta.transpose(-1, -2), dA.reshape(A.shape), dB.transpose(-1, -2),
             dC.transpose(-1, -2), dD.reshape(-1) if D is not None else None, dz,
             dbias.reshape(-1) if delta_bias is not None else None)
    return [gr.to(t.dtype) if gr is not None else None for gr, t in zip(grads, inputs)]


def _supports(device) -> bool:
    return torch.device(device).type == 'cpu' and load_extension() is not None


register_backend('cpu', Backend(plan_scan_cpu, backward=plan_scan_cpu_backward, differentiable=plan_scan_fast,
                                 supports=_supports))
