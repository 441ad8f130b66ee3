"""'cuda' backend of the plan scan: the native extension built from kernels/ (``vssm_cuda_scan``).

Build it with ``pip install --no-build-isolation ./kernels`` (docs/cuda_backend.md). vssm.ops.scan imports
this module lazily when the backend 'cuda' is asked for (argument ``backend='cuda'`` or
``VSSM_SCAN_BACKEND=cuda``). Without the extension the import still succeeds, warns once how to build it,
and registers nothing, so asking for 'cuda' fails with scan's "not available" error.

Same contract as scan.plan_scan_reference, low-rank Δ (``delta_weight``) and grouped plans (merge 'group')
included: Δ is formed inside the kernels and its factors' gradients come back without a (B, K, D, L) dΔ.
The kernels compute in float32; per-token inputs (u, delta, B, C, z) are read in place, with their strides,
when they share one of float32/float16/bfloat16, else all are read as float32 copies. float64 inputs go to
the reference backend. The extension checks its inputs itself (shapes, dtypes, devices, index values), so a
direct call fails with a clear error too.
"""
import warnings
from typing import Optional

import torch

from .backend import REDUCED_FLOAT_DTYPES, Capabilities, ScanBackend, register_backend

__all__ = ['extension', 'extension_error', 'cuda_plan_scan', 'cuda_plan_scan_backward', 'scan_forward_with',
           'scan_backward_with', 'schedule', 'MERGE_CODES']

MERGE_CODES = {'sum': 0, 'mean': 1, 'none': 2, 'group': 3}
_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

try:
    import vssm_cuda_scan as _EXT
    _ERROR: Optional[BaseException] = None
except ImportError as e:  # not built, or built against another torch
    _EXT, _ERROR = None, e


def extension():
    """The loaded native module, or None."""
    return _EXT


def extension_error() -> Optional[str]:
    """Why the extension is unavailable (None when it loaded)."""
    if _EXT is not None:
        return None
    return (f'the native CUDA scan extension vssm_cuda_scan is not installed or does not load ({_ERROR}); '
            f'build it with `pip install --no-build-isolation ./kernels` (docs/cuda_backend.md)')


# -------------------------------------------------------------------------------------------- wrappers

def _kernel_dtype(*per_token):
    dtypes = {t.dtype for t in per_token if t is not None}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in _KERNEL_DTYPES else torch.float32


def _as(t, dtype):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _f32(t):
    return None if t is None else t.to(torch.float32).contiguous()


def scan_forward_with(ext, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                      delta_softplus=True, delta_weight=None, chunk=0, tile=0, num_sms=0):
    """Forward through a module with the extension's interface (the CUDA build, or the CPU emulator in tests).

    chunk / tile force the steps per chunk and channels per block (0: chosen from the shape and device)."""
    dt = _kernel_dtype(u, delta, B, C, z)
    out = ext.forward(_as(u, dt), _as(delta, dt), _f32(A), _as(B, dt), _as(C, dt), _f32(D), _as(z, dt),
                      _f32(delta_bias), _f32(delta_weight), index.contiguous(), int(length), MERGE_CODES[merge],
                      bool(delta_softplus), chunk, tile, num_sms)
    return _as(out, u.dtype)


def scan_backward_with(ext, grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                       merge='sum', delta_softplus=True, delta_weight=None, chunk=0, tile=0, sub=0, slots=0,
                       chunk_slots=0, num_sms=0):
    """Gradients (u, delta, A, B, C, D, z, delta_bias[, delta_weight]), None for absent inputs, each in its
    input's dtype; grad_out is read with its own strides. delta_weight's gradient is appended when given."""
    dt = _kernel_dtype(u, delta, B, C, z)
    grads = ext.backward(_as(grad_out, dt), _as(u, dt), _as(delta, dt), _f32(A), _as(B, dt), _as(C, dt), _f32(D),
                         _as(z, dt), _f32(delta_bias), _f32(delta_weight), index.contiguous(), int(length),
                         MERGE_CODES[merge], bool(delta_softplus), chunk, tile, sub, slots, chunk_slots, num_sms)
    inputs = (u, delta, A, B, C, D, z, delta_bias, delta_weight)
    grads = [None if t is None else _as(g, t.dtype) for g, t in zip(grads, inputs)]
    return grads if delta_weight is not None else grads[:8]


def cuda_plan_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                   delta_softplus=True, delta_weight=None):
    """The 'cuda' backend's forward (same contract as plan_scan_reference)."""
    return scan_forward_with(_EXT, u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                             delta_softplus=delta_softplus, delta_weight=delta_weight)


def cuda_plan_scan_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                            merge='sum', delta_softplus=True, delta_weight=None):
    return scan_backward_with(_EXT, grad_out, u, delta, A, B, C, D, z, delta_bias, index=index, length=length,
                              merge=merge, delta_softplus=delta_softplus, delta_weight=delta_weight)


def schedule(ext, *, backward, Bt, K, Dm, N, R, Lk, L, merge='sum', seq_u=False, has_z=False, has_D=True,
             has_bias=True, dtype=torch.bfloat16, num_sms=132, full=True, **forced):
    """The launch configuration and cost model the extension would use for one call (no tensors needed):
    a dict with chunk, nchunks, mean_steps, tile, slots, chunk_slots, launches (name, grid, blocks, block, smem,
    threads, bytes each), bytes, min_bytes, input_bytes, workspace_bytes, passes, scan_threads, lanes_used.
    ``full``: every direction visits every map position (true of VMamba/Vim/window plans, not atrous).
    ``forced``: chunk/tile/sub/slots/chunk_slots."""
    elem = torch.finfo(dtype).bits // 8
    return ext.schedule(backward, Bt, K, Dm, N, R, Lk, L, MERGE_CODES[merge], seq_u, has_z, has_D, has_bias, elem,
                        num_sms, full, full, full, forced.get('chunk', 0), forced.get('tile', 0),
                        forced.get('sub', 0), forced.get('slots', 0), forced.get('chunk_slots', 0))


def schedule_cost(ext, s, num_sms: int = 132):
    """The extension's ``schedule`` for a ScanShape, mapped onto the engine's record (forward, backward): bytes,
    min_bytes and workspace_bytes map one to one, programs = the smallest launch's grid size."""
    from .cost import ScanCost, op_flops
    out = []
    for phase in ('forward', 'backward'):
        d = schedule(ext, backward=phase == 'backward', Bt=s.batch, K=s.directions, Dm=s.channels, N=s.d_state,
                     R=s.rank, Lk=s.steps, L=s.length, merge=s.merge, seq_u=s.seq_u, has_z=s.has_z, has_D=s.has_D,
                     dtype=s.dtype, num_sms=num_sms,
                     full=not any(n.startswith('a') for n in s.plan))  # atrous directions cover part of the map
        grids = [l['blocks'] for l in d['launches']] or [1]
        out.append(ScanCost('cuda', phase, bytes_moved=d['bytes'], min_bytes=d['min_bytes'], flops=op_flops(s, phase),
                            workspace_bytes=d['workspace_bytes'], programs=min(grids), launches=len(d['launches']),
                            details=dict(chunk=d['chunk'], chunks=d['nchunks'], tile=d['tile'])))
    return tuple(out)


def _available(device) -> bool:
    return torch.device(device).type == 'cuda' and _EXT is not None and torch.cuda.is_available()


# below Triton, above the PyTorch paths (float64 goes there)
CAPABILITIES = Capabilities(devices=frozenset({'cuda'}), dtypes=REDUCED_FLOAT_DTYPES, low_rank_delta=True)
if _EXT is not None:
    register_backend(ScanBackend(name='cuda', forward=cuda_plan_scan, backward=cuda_plan_scan_backward,
                                 available=_available, priority=25, capabilities=CAPABILITIES,
                                 cost=lambda s: schedule_cost(_EXT, s)))
else:
    warnings.warn(f'vssm: scan backend "cuda" is unavailable: {extension_error()}', stacklevel=2)
