"""'cpu' backend: the fused plan scan compiled from csrc/plan_scan_cpu.cpp on first use.

torch's extension machinery builds it with the machine's C++ compiler (cached under
~/.cache/torch_extensions). Forward runs fused in C++; gradients come from recomputing the
differentiable PyTorch path, so training works too. If the build fails (no compiler), the backend is
simply not available and dispatch stays on 'fast'.
"""
import os
import warnings
from pathlib import Path

import torch

from .scan import Backend, plan_scan_fast, register_backend

__all__ = ['load_extension', 'plan_scan_cpu']

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


def plan_scan_cpu(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                  delta_softplus=True):
    """Same contract as plan_scan_reference; float32 compute (float64 inputs go to the PyTorch path)."""
    if any(t is not None and t.dtype == torch.float64 for t in (u, delta, A, B, C, D, z, delta_bias)):
        return plan_scan_fast(u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                              delta_softplus=delta_softplus)
    ext = load_extension()
    f32 = torch.float32
    K, Lk = index.shape
    Dm = delta.shape[2]
    # channel-last, time-major inside each direction: the kernel's inner loop runs over channels
    u_cl = u.transpose(-1, -2).to(f32).contiguous()
    out = ext.plan_scan_forward(
        u_cl, delta.transpose(-1, -2).to(f32).contiguous(), A.to(f32).reshape(K, Dm, -1).contiguous(),
        B.transpose(-1, -2).to(f32).contiguous(), C.transpose(-1, -2).to(f32).contiguous(),
        D.to(f32).contiguous() if D is not None else u.new_empty(0, dtype=f32),
        delta_bias.to(f32).contiguous() if delta_bias is not None else u.new_empty(0, dtype=f32),
        index.contiguous(), length, merge == 'none', delta_softplus,
    ).transpose(-1, -2)
    if merge == 'mean':
        out = out / K
    if z is not None:
        gate = torch.nn.functional.silu(z.to(f32))
        out = out * (gate[:, None] if merge == 'none' else gate)
    return out.to(u.dtype)


def _supports(device) -> bool:
    return torch.device(device).type == 'cpu' and load_extension() is not None


register_backend('cpu', Backend(plan_scan_cpu, differentiable=plan_scan_fast, supports=_supports))
