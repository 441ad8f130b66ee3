"""The one entry point of the scan engine: a selective scan over a direction plan, with backend dispatch.

``plan_selective_scan`` reads a 2D map along every direction of a plan, runs the selective scan per
direction (grouped B/C: one group per direction) and merges the outputs back into map positions.

Shapes (Bt batch, K directions, Dm channels, N state, L = H*W map positions, Lk steps per direction):
    u           (Bt, Dm, L) map shared by all directions, or (Bt, K, Dm, Lk) per-direction sequences
    delta       (Bt, K, Dm, Lk)  pre-bias, in sequence order
    A           (K*Dm, N)        (already -exp(A_log))
    B, C        (Bt, K, N, Lk)   in sequence order
    D, delta_bias (K*Dm,)
    z           (Bt, Dm, L) map: output *= silu(z) per position (per direction before a 'none' merge)
    index       (K, Lk) long, flat map position of each step, -1 for padding (see plans.py)
    merge       'sum' / 'mean' -> (Bt, Dm, L);  'none' -> (Bt, K, Dm, L)

Backends: 'reference' (the oracle), 'fast' (chunked PyTorch, CPU default), 'triton' (fused GPU
kernel) and 'cuda' (native extension) when present. ``VSSM_SCAN_BACKEND`` forces one.
The call goes through the ``vssm::plan_scan`` custom op so torch.compile and jit tracing (FLOP
counting) see one op.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .plans import cross_merge, cross_scan, MERGE_MODES
from .selective_scan import selective_scan_fast, selective_scan_ref, compute_dtype

__all__ = [
    'plan_selective_scan', 'plan_scan_reference', 'plan_scan_fast', 'register_backend',
    'available_backends', 'resolve_backend', 'BACKEND_ENV', 'CPU_KERNEL_ENV',
]

BACKEND_ENV = 'VSSM_SCAN_BACKEND'
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _plan_scan_with(seq_scan, u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus):
    us = cross_scan(u, index) if u.dim() == 3 else u
    Bt, K, Dm, Lk = us.shape
    ct = compute_dtype(u, delta, A, B, C, D, delta_bias, z)
    y = seq_scan(us.to(ct).reshape(Bt, K * Dm, Lk), delta.reshape(Bt, K * Dm, Lk), A, B, C, D,
                 None, delta_bias, delta_softplus)
    out = cross_merge(y.view(Bt, K, Dm, Lk), index, length, merge)
    if z is not None:
        gate = F.silu(z.to(ct))
        out = out * (gate[:, None] if merge == 'none' else gate)
    return out.to(u.dtype)


def plan_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                        delta_softplus=True):
    """Oracle: cross-scan copy + step-by-step scan + merge; any dtype and device (meta included)."""
    if u.device.type == 'meta':
        return _empty_output(u, index, length, merge)
    return _plan_scan_with(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                           delta_softplus)


def plan_scan_fast(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                   delta_softplus=True):
    """CPU path: cross-scan copy + chunked closed-form scan + merge; differentiable by autograd."""
    if u.device.type == 'meta':
        return _empty_output(u, index, length, merge)
    return _plan_scan_with(selective_scan_fast, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                           delta_softplus)


def _empty_output(u, index, length, merge):
    Bt = u.shape[0]
    Dm = u.shape[1] if u.dim() == 3 else u.shape[2]
    shape = (Bt, index.shape[0], Dm, length) if merge == 'none' else (Bt, Dm, length)
    return u.new_empty(shape)


# ----------------------------------------------------------------------------------------------- backends

@dataclass
class Backend:
    forward: Callable  # (u, delta, A, B, C, D, z, delta_bias, index=, length=, merge=, delta_softplus=) -> y
    backward: Optional[Callable] = None  # (grad_out, *inputs, ...) -> grads; None: recompute with autograd
    differentiable: Optional[Callable] = None  # autograd-friendly forward used by the default backward
    supports: Callable = lambda device: True


_BACKENDS: Dict[str, Backend] = {}
_LAZY_BACKENDS = {'cpu': 'vssm.ops.cpu_kernel', 'triton': 'vssm.ops.triton_scan', 'cuda': 'vssm.ops.cuda_ext'}
CPU_KERNEL_ENV = 'VSSM_CPU_KERNEL'  # 0: never build/use the fused C++ CPU scan


def register_backend(name: str, backend: Backend) -> None:
    _BACKENDS[name] = backend


register_backend('reference', Backend(plan_scan_reference, differentiable=plan_scan_reference))
register_backend('fast', Backend(plan_scan_fast, differentiable=plan_scan_fast))


def _load_backend(name: str) -> Optional[Backend]:
    if name not in _BACKENDS and name in _LAZY_BACKENDS:
        import importlib
        try:
            importlib.import_module(_LAZY_BACKENDS[name])  # registers itself on import
        except ImportError:
            return None
    return _BACKENDS.get(name)


def available_backends(device='cpu') -> List[str]:
    device = torch.device(device)
    names = []
    for name in ('reference', 'fast', 'cpu', 'triton', 'cuda'):
        b = _BACKENDS.get(name) if name in ('triton', 'cuda') and device.type != 'cuda' else _load_backend(name)
        if b is not None and b.supports(device):
            names.append(name)
    return names


def resolve_backend(device: torch.device, backend: Optional[str] = None) -> str:
    """Explicit argument > VSSM_SCAN_BACKEND > triton on CUDA (when importable) > fused C++ on CPU > fast."""
    name = backend or os.environ.get(BACKEND_ENV) or None
    if name:
        b = _load_backend(name)
        if b is None:
            raise ValueError(f'scan backend {name!r} is not available here; expected one of '
                             f'{available_backends(device)} (set by argument or {BACKEND_ENV})')
        if not b.supports(device):
            raise ValueError(f'scan backend {name!r} cannot run on {device.type} tensors; '
                             f'available there: {available_backends(device)}')
        return name
    if device.type == 'cuda':
        b = _load_backend('triton')
        if b is not None and b.supports(device):
            return 'triton'
    if device.type == 'cpu' and os.environ.get(CPU_KERNEL_ENV, '1') != '0':
        b = _load_backend('cpu')
        if b is not None and b.supports(device):
            return 'cpu'
    return 'fast'


# ------------------------------------------------------------------------------------------- custom op

@torch.library.custom_op('vssm::plan_scan', mutates_args=())
def _plan_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                  index: torch.Tensor, length: int, merge: str, delta_softplus: bool,
                  backend: str) -> torch.Tensor:
    return _channel_last(_BACKENDS[backend].forward(u, delta, A, B, C, D, z, delta_bias, index=index,
                                                    length=length, merge=merge, delta_softplus=delta_softplus))


def _channel_last(t: torch.Tensor) -> torch.Tensor:
    # every backend's output is laid out channel-last ((B, L, D) memory for a (B, D, L) result), the layout
    # the LayerNorm after the scan reads without a copy
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@_plan_scan_op.register_fake
def _plan_scan_fake(u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus, backend):
    return _channel_last(_empty_output(u, index, length, merge))


_GRAD_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias')


@torch.library.custom_op('vssm::plan_scan_bwd', mutates_args=())
def _plan_scan_bwd_op(grad_out: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                      B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                      delta_bias: Optional[torch.Tensor], index: torch.Tensor, length: int, merge: str,
                      delta_softplus: bool, backend: str) -> List[torch.Tensor]:
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    b = _BACKENDS[backend]
    if b.backward is not None:
        grads = b.backward(grad_out, *inputs, index=index, length=length, merge=merge,
                           delta_softplus=delta_softplus)
    else:
        grads = _recompute_backward(b.differentiable or plan_scan_fast, grad_out, inputs, index, length, merge,
                                    delta_softplus)
    # an absent optional input gets an empty tensor: custom ops cannot return None
    return [g.contiguous() if g is not None else u.new_empty(0) for g in grads]


@_plan_scan_bwd_op.register_fake
def _plan_scan_bwd_fake(grad_out, u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus,
                        backend):
    # contiguous like the real op's results (empty_like would keep a channel-last input's strides)
    return [t.new_empty(t.shape) if t is not None else u.new_empty(0) for t in (u, delta, A, B, C, D, z, delta_bias)]


def _below_autograd_keys():
    with torch._C._AutoDispatchBelowAutograd():
        return torch._C._dispatch_tls_local_exclude_set()


_AUTOGRAD_KEYS = _below_autograd_keys() - torch._C._dispatch_tls_local_exclude_set()


def _autograd_enabled():
    # custom-op kernels run with the autograd dispatch keys excluded; the recompute needs them back
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                           torch._C._dispatch_tls_local_exclude_set() - _AUTOGRAD_KEYS)


def _recompute_backward(fn, grad_out, inputs, index, length, merge, delta_softplus):
    with _autograd_enabled(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) if t is not None else None for t in inputs]
        out = fn(*leaves, index=index, length=length, merge=merge, delta_softplus=delta_softplus)
        wanted = [t for t in leaves if t is not None]
        grads = torch.autograd.grad(out, wanted, grad_out, allow_unused=True)
    it = iter(grads)
    result = []
    for t in leaves:
        if t is None:
            result.append(None)
        else:
            g = next(it)
            result.append(torch.zeros_like(t) if g is None else g)
    return result


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, index)
    ctx.options = (length, merge, delta_softplus, backend)


def _backward(ctx, grad_out):
    u, delta, A, B, C, D, z, delta_bias, index = ctx.saved_tensors
    length, merge, delta_softplus, backend = ctx.options
    grads = _plan_scan_bwd_op(grad_out.contiguous(), u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                              delta_softplus, backend)
    present = (u, delta, A, B, C, D, z, delta_bias)
    grads = [g if t is not None else None for g, t in zip(grads, present)]
    return (*grads, None, None, None, None, None)


_plan_scan_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------ entry point

def _check_inputs(u, delta, A, B, C, D, z, delta_bias, index, length, merge):
    """Clear errors before any kernel sees a wrong shape or dtype."""
    for name, t in (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('z', z),
                    ('delta_bias', delta_bias)):
        if t is not None and t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f'selective scan input {name} must be float16/bfloat16/float32/float64, got {t.dtype}')
    if merge not in MERGE_MODES:
        raise ValueError(f'merge must be one of {MERGE_MODES}, got {merge!r}')
    if index.dim() != 2 or index.dtype != torch.long:
        raise ValueError(f'index must be a (K, Lk) long tensor, got {tuple(index.shape)} {index.dtype}')
    K, Lk = index.shape
    if delta.dim() != 4 or delta.shape[1] != K or delta.shape[3] != Lk:
        raise ValueError(f'delta must be (B, K={K}, D, Lk={Lk}), got {tuple(delta.shape)}')
    Bt, _, Dm, _ = delta.shape
    if u.dim() == 3:
        if tuple(u.shape) != (Bt, Dm, length):
            raise ValueError(f'map input u must be (B={Bt}, D={Dm}, L={length}), got {tuple(u.shape)}')
    elif tuple(u.shape) != (Bt, K, Dm, Lk):
        raise ValueError(f'u must be a map (B, D, L) or sequences (B={Bt}, K={K}, D={Dm}, Lk={Lk}), '
                         f'got {tuple(u.shape)}')
    if A.dim() != 2 or A.shape[0] != K * Dm:
        raise ValueError(f'A must be (K*D={K * Dm}, N), got {tuple(A.shape)}')
    N = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        if tuple(t.shape) != (Bt, K, N, Lk):
            raise ValueError(f'{name} must be (B={Bt}, K={K}, N={N}, Lk={Lk}), got {tuple(t.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and tuple(t.shape) != (K * Dm,):
            raise ValueError(f'{name} must be (K*D={K * Dm},), got {tuple(t.shape)}')
    if z is not None and tuple(z.shape) != (Bt, Dm, length):
        raise ValueError(f'z must be (B={Bt}, D={Dm}, L={length}), got {tuple(z.shape)}')


def plan_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length: int,
                        merge: str = 'sum', delta_softplus: bool = True, backend: Optional[str] = None):
    """Selective scan over a direction plan (see the module doc for shapes); dispatches to a backend."""
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, index, length, merge)
    name = resolve_backend(u.device, backend)
    index = index.to(u.device)
    return _plan_scan_op(u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus, name)


try:  # timm's FX tracer treats the entry point as a leaf
    from timm.layers import register_notrace_function
    register_notrace_function(plan_selective_scan)
except ImportError:  # pragma: no cover
    pass
