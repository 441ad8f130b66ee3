"""'cuda' backend of the plan scan: the native extension built from kernels/ (``vssm_cuda_scan``).

Build it with ``pip install --no-build-isolation ./kernels`` (docs/cuda_backend.md). vssm.ops.scan imports
this module lazily when the backend 'cuda' is asked for (argument ``backend='cuda'`` or
``VSSM_SCAN_BACKEND=cuda``). Without the extension the import still succeeds, warns once how to build it,
and registers nothing, so asking for 'cuda' fails with scan's "not available" error.

Same contract as scan.plan_scan_reference. The kernels compute in float32; per-token inputs
(u, delta, B, C, z) are read in their own dtype when they share one of float32/float16/bfloat16, else
all are read as float32. float64 inputs go to the reference backend.
"""
import warnings
from typing import Optional

import torch

from .scan import Backend, _recompute_backward, plan_scan_reference, register_backend

__all__ = ['extension', 'extension_error', 'cuda_plan_scan', 'cuda_plan_scan_backward', 'scan_forward_with',
           'scan_backward_with']

_MERGE_CODES = {'sum': 0, 'mean': 1, 'none': 2}
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


# ------------------------------------------------------------------------------------------ index checks

_CHECKED_INDEXES = {}


def _check_index(index: torch.Tensor, length: int) -> None:
    """Index maps must lie in [-1, length) and visit a position at most once per direction (the kernels
    write each direction's outputs without atomics). Checked once per index tensor (build_index caches them)."""
    key = (index.data_ptr(), str(index.device), tuple(index.shape), int(length), index._version)
    if key in _CHECKED_INDEXES:
        return
    ok_range = bool(((index >= -1) & (index < length)).all())
    srt = index.sort(dim=1).values
    repeated = (srt[:, 1:] == srt[:, :-1]) & (srt[:, 1:] >= 0)
    if not ok_range or bool(repeated.any()):
        raise ValueError(f'index must hold map positions in [0, {length}) or -1, each at most once per direction')
    if len(_CHECKED_INDEXES) > 1024:
        _CHECKED_INDEXES.clear()
    _CHECKED_INDEXES[key] = True


# -------------------------------------------------------------------------------------------- wrappers

def _kernel_dtype(*per_token):
    dtypes = {t.dtype for t in per_token if t is not None}
    return dtypes.pop() if len(dtypes) == 1 and next(iter(dtypes)) in _KERNEL_DTYPES else torch.float32


def _as(t, dtype):
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _f32(t):
    return None if t is None else t.to(torch.float32).contiguous()


def _has_float64(*tensors):
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def scan_forward_with(ext, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                      delta_softplus=True, chunk=0, tile=0, num_sms=0):
    """Forward through a module with the extension's interface (the CUDA build, or the CPU emulator in tests).

    chunk / tile force the steps per chunk and channels per block (0: chosen from the shape and device)."""
    dt = _kernel_dtype(u, delta, B, C, z)
    _check_index(index, length)
    out = ext.forward(_as(u, dt), _as(delta, dt), _f32(A), _as(B, dt), _as(C, dt), _f32(D), _as(z, dt),
                      _f32(delta_bias), index.contiguous(), int(length), _MERGE_CODES[merge], bool(delta_softplus),
                      chunk, tile, num_sms)
    return _as(out, u.dtype)


def scan_backward_with(ext, grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                       merge='sum', delta_softplus=True, chunk=0, tile=0, sub=0, num_sms=0):
    """Gradients (u, delta, A, B, C, D, z, delta_bias), None for absent inputs, each in its input's dtype."""
    dt = _kernel_dtype(u, delta, B, C, z)
    _check_index(index, length)
    grads = ext.backward(_as(grad_out, dt).contiguous(), _as(u, dt), _as(delta, dt), _f32(A), _as(B, dt), _as(C, dt), _f32(D),
                         _as(z, dt), _f32(delta_bias), index.contiguous(), int(length), _MERGE_CODES[merge],
                         bool(delta_softplus), chunk, tile, sub, num_sms)
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    return [None if t is None else _as(g, t.dtype) for g, t in zip(grads, inputs)]


def cuda_plan_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                   delta_softplus=True):
    """The 'cuda' backend's forward (same contract as plan_scan_reference)."""
    if _has_float64(u, delta, A, B, C, D, z, delta_bias):
        return plan_scan_reference(u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                                   delta_softplus=delta_softplus)
    return scan_forward_with(_EXT, u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                             delta_softplus=delta_softplus)


def cuda_plan_scan_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                            merge='sum', delta_softplus=True):
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if _has_float64(*inputs):
        return _recompute_backward(plan_scan_reference, grad_out, inputs, index, length, merge, delta_softplus)
    return scan_backward_with(_EXT, grad_out, *inputs, index=index, length=length, merge=merge,
                              delta_softplus=delta_softplus)


def _supports(device) -> bool:
    return torch.device(device).type == 'cuda' and _EXT is not None and torch.cuda.is_available()


if _EXT is not None:
    register_backend('cuda', Backend(cuda_plan_scan, backward=cuda_plan_scan_backward,
                                     differentiable=plan_scan_reference, supports=_supports))
else:
    warnings.warn(f'vssm: scan backend "cuda" is unavailable: {extension_error()}', stacklevel=2)
