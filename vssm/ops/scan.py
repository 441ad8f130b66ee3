"""The one entry point of the scan engine: a selective scan over a direction plan, with backend dispatch.

``plan_selective_scan`` reads a 2D map along every direction of a plan, runs the selective scan per
direction (grouped B/C: one group per direction) and merges the outputs back into map positions.

Shapes (Bt batch, K directions, Dm channels, N state, L = H*W map positions, Lk steps per direction):
    u           (Bt, Dm, L) map shared by all directions, or (Bt, K, Dm, Lk) per-direction sequences;
                with merge 'group': (Bt, K*Dm, L), direction k reads channel group k (channels k*Dm..)
    delta       (Bt, K, Dm, Lk)  pre-bias, in sequence order; or, with ``delta_weight``, its rank-R factor
                (Bt, K, R, Lk) and Δ[b, k] = delta_weight[k] @ delta[b, k] (+ delta_bias), never stored
    delta_weight (K, Dm, R)      optional: the low-rank form above (SS2D's dt_projs_weight layout)
    A           (K*Dm, N)        (already -exp(A_log))
    B, C        (Bt, K, N, Lk)   in sequence order
    D, delta_bias (K*Dm,)
    z           (Bt, Dm, L) map: output *= silu(z) per position (per direction before a 'none' merge);
                (Bt, K*Dm, L) with merge 'group'
    index       (K, Lk) long, flat map position of each step, -1 for padding (see plans.py); positions lie in
                [0, L) and each appears at most once per direction (validated once per index tensor)
    merge       'sum' / 'mean' -> (Bt, Dm, L);  'none' -> (Bt, K, Dm, L);
                'group' -> (Bt, K*Dm, L): direction k writes channel group k (GroupMamba)
Outputs are laid out channel-last: a (Bt, Dm, L) result has (Bt, L, Dm) memory, the layout the LayerNorm
after the scan reads without a copy.

Backends: 'reference' (the oracle), 'fast' (chunked PyTorch, CPU default), 'triton' (fused GPU
kernel) and 'cuda' (native extension) when present. ``VSSM_SCAN_BACKEND`` forces one. While
``torch.export`` traces, the call takes 'export' (export_scan.py: standard ops, fixed loop lengths).
The call goes through the ``vssm::plan_scan`` custom op so torch.compile and jit tracing (FLOP
counting) see one op.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from .plans import cross_merge, cross_scan, validate_index, MERGE_MODES
from .selective_scan import _cast, selective_scan_fast, selective_scan_ref, compute_dtype

__all__ = [
    'plan_selective_scan', 'plan_scan_reference', 'plan_scan_fast', 'register_backend',
    'available_backends', 'resolve_backend', 'expand_delta', 'ScanInputError', 'BACKEND_ENV', 'CPU_KERNEL_ENV',
]

BACKEND_ENV = 'VSSM_SCAN_BACKEND'
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def expand_delta(delta: torch.Tensor, delta_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Full Δ (Bt, K, Dm, Lk) from its low-rank form: delta (Bt, K, R, Lk) and delta_weight (K, Dm, R)."""
    if delta_weight is None:
        return delta
    ct = torch.promote_types(delta.dtype, delta_weight.dtype)
    return torch.einsum('kdr,bkrl->bkdl', _cast(delta_weight, ct), _cast(delta, ct))


def _plan_scan_with(seq_scan, u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus,
                    delta_weight=None, merge_fn=cross_merge):
    K = index.shape[0]
    if merge == 'group':  # direction k reads its own channel group: a per-direction (Bt, K, Dm, L) map
        us = cross_scan(u.view(u.shape[0], K, -1, length), index)
    else:
        us = cross_scan(u, index) if u.dim() == 3 else u
    Bt, K, Dm, Lk = us.shape
    ct = compute_dtype(u, delta, A, B, C, D, delta_bias, z, delta_weight)
    delta = expand_delta(delta, delta_weight)
    y = seq_scan(_cast(us, ct).reshape(Bt, K * Dm, Lk), delta.reshape(Bt, K * Dm, Lk), A, B, C, D,
                 None, delta_bias, delta_softplus)
    out = merge_fn(y.view(Bt, K, Dm, Lk), index, length, merge)
    if z is not None:
        gate = F.silu(_cast(z, ct))
        out = out * (gate[:, None] if merge == 'none' else gate)
    return _cast(out, u.dtype)


def plan_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                        delta_softplus=True, delta_weight=None):
    """Oracle: cross-scan copy + step-by-step scan + merge; any dtype and device (meta included)."""
    if u.device.type == 'meta':
        return _empty_output(u, index, length, merge)
    return _plan_scan_with(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                           delta_softplus, delta_weight)


def plan_scan_fast(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                   delta_softplus=True, delta_weight=None):
    """CPU path: cross-scan copy + chunked closed-form scan + merge; differentiable by autograd."""
    if u.device.type == 'meta':
        return _empty_output(u, index, length, merge)
    return _plan_scan_with(selective_scan_fast, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                           delta_softplus, delta_weight)


def _empty_output(u, index, length, merge):
    Bt = u.shape[0]
    Dm = u.shape[1] if u.dim() == 3 else u.shape[2]  # with merge 'group': K*D, the grouped map's channels
    shape = (Bt, index.shape[0], Dm, length) if merge == 'none' else (Bt, Dm, length)
    return u.new_empty(shape)


# ----------------------------------------------------------------------------------------------- backends

@dataclass
class Backend:
    forward: Callable  # (u, delta, A, B, C, D, z, delta_bias, index=, length=, merge=, delta_softplus=[, delta_weight=])
    backward: Optional[Callable] = None  # (grad_out, *inputs, ...) -> grads; None: recompute with autograd
    differentiable: Optional[Callable] = None  # autograd-friendly forward used by the default backward
    supports: Callable = lambda device: True
    # takes delta_weight= (low-rank Δ computed in the kernel, factor gradients returned); otherwise the op
    # expands Δ for it and reduces dΔ to the factors' gradients
    low_rank: bool = False
    # takes merge='group' (direction k reads and writes channel group k); otherwise dispatch picks another backend
    grouped: bool = False


_BACKENDS: Dict[str, Backend] = {}
_LAZY_BACKENDS = {'cpu': 'vssm.ops.cpu_kernel', 'triton': 'vssm.ops.triton_scan', 'cuda': 'vssm.ops.cuda_ext',
                  'export': 'vssm.ops.export_scan'}
CPU_KERNEL_ENV = 'VSSM_CPU_KERNEL'  # 0: never build/use the fused C++ CPU scan


def register_backend(name: str, backend: Backend) -> None:
    _BACKENDS[name] = backend


register_backend('reference', Backend(plan_scan_reference, differentiable=plan_scan_reference, low_rank=True,
                                      grouped=True))
register_backend('fast', Backend(plan_scan_fast, differentiable=plan_scan_fast, low_rank=True, grouped=True))


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
    for name in ('reference', 'fast', 'export', 'cpu', 'triton', 'cuda'):
        b = _BACKENDS.get(name) if name in ('triton', 'cuda') and device.type != 'cuda' else _load_backend(name)
        if b is not None and b.supports(device):
            names.append(name)
    return names


def resolve_backend(device: torch.device, backend: Optional[str] = None, merge: Optional[str] = None) -> str:
    """Explicit argument > VSSM_SCAN_BACKEND > triton on CUDA (when importable) > fused C++ on CPU > fast.

    A grouped plan (merge 'group') skips defaults that cannot run it; asking for such a backend by name fails.
    """
    name = backend or os.environ.get(BACKEND_ENV) or None
    grouped = merge == 'group'
    if name:
        b = _load_backend(name)
        if b is None:
            raise ValueError(f'scan backend {name!r} is not available here; expected one of '
                             f'{available_backends(device)} (set by argument or {BACKEND_ENV})')
        if not b.supports(device):
            raise ValueError(f'scan backend {name!r} cannot run on {device.type} tensors; '
                             f'available there: {available_backends(device)}')
        if grouped and not b.grouped:
            raise ValueError(f"scan backend {name!r} cannot run a grouped plan (merge='group'); backends that can: "
                             f"{[n for n in available_backends(device) if _BACKENDS[n].grouped]}")
        return name
    if device.type == 'cuda':
        b = _load_backend('triton')
        if b is not None and b.supports(device) and (b.grouped or not grouped):
            return 'triton'
        if grouped:
            return 'reference'
    if device.type == 'cpu' and os.environ.get(CPU_KERNEL_ENV, '1') != '0':
        b = _load_backend('cpu')
        if b is not None and b.supports(device) and (b.grouped or not grouped):
            return 'cpu'
    return 'fast'


# ------------------------------------------------------------------------------------------- custom op

def _call_forward(b: Backend, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge,
                  delta_softplus):
    if delta_weight is None:
        return b.forward(u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                         delta_softplus=delta_softplus)
    if b.low_rank:
        return b.forward(u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                         delta_softplus=delta_softplus, delta_weight=delta_weight)
    return b.forward(u, expand_delta(delta, delta_weight), A, B, C, D, z, delta_bias, index=index, length=length,
                     merge=merge, delta_softplus=delta_softplus)


@torch.library.custom_op('vssm::plan_scan', mutates_args=())
def _plan_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                  delta_weight: Optional[torch.Tensor], index: torch.Tensor, length: int, merge: str,
                  delta_softplus: bool, backend: str) -> torch.Tensor:
    return _channel_last(_call_forward(_BACKENDS[backend], u, delta, A, B, C, D, z, delta_bias, delta_weight, index,
                                       length, merge, delta_softplus))


def _channel_last(t: torch.Tensor) -> torch.Tensor:
    # every result is laid out channel-last ((B, L, D) memory for a (B, D, L) result), the layout the
    # LayerNorm after the scan reads without a copy; a no-op for backends that write it that way
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@_plan_scan_op.register_fake
def _plan_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus, backend):
    return _channel_last(_empty_output(u, index, length, merge))


_GRAD_INPUTS = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_weight')


def _low_rank_grads(grads, delta, delta_weight):
    """dΔ from a full-Δ backward -> gradients of the factors (delta, delta_weight)."""
    g_full = grads[1]
    ct = torch.promote_types(g_full.dtype, torch.float32)
    g_full = g_full.to(ct)
    g_delta = torch.einsum('kdr,bkdl->bkrl', delta_weight.to(ct), g_full).to(delta.dtype)
    g_weight = torch.einsum('bkdl,bkrl->kdr', g_full, delta.to(ct)).to(delta_weight.dtype)
    return [grads[0], g_delta, *grads[2:8], g_weight]


@torch.library.custom_op('vssm::plan_scan_bwd', mutates_args=())
def _plan_scan_bwd_op(grad_out: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor,
                      B: torch.Tensor, C: torch.Tensor, D: Optional[torch.Tensor], z: Optional[torch.Tensor],
                      delta_bias: Optional[torch.Tensor], delta_weight: Optional[torch.Tensor], index: torch.Tensor,
                      length: int, merge: str, delta_softplus: bool, backend: str) -> List[torch.Tensor]:
    b = _BACKENDS[backend]
    opts = dict(index=index, length=length, merge=merge, delta_softplus=delta_softplus)
    if b.backward is None:  # autograd through the backend's differentiable forward (it handles the low-rank form)
        inputs = (u, delta, A, B, C, D, z, delta_bias, delta_weight)
        grads = _recompute_backward(b.differentiable or plan_scan_fast, grad_out, inputs, **opts)
    elif delta_weight is not None and b.low_rank:
        grads = b.backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_weight=delta_weight, **opts)
    elif delta_weight is not None:
        grads = b.backward(grad_out, u, expand_delta(delta, delta_weight), A, B, C, D, z, delta_bias, **opts)
        grads = _low_rank_grads(grads, delta, delta_weight)
    else:
        grads = [*b.backward(grad_out, u, delta, A, B, C, D, z, delta_bias, **opts), None]
    present = (u, delta, A, B, C, D, z, delta_bias, delta_weight)
    # an absent optional input gets an empty tensor: custom ops cannot return None
    return [_in_layout_of(g, t) if t is not None else u.new_empty(0) for g, t in zip(grads, present)]


def _in_layout_of(g: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # the op's contract: each gradient has its input's dtype and strides (those of torch.empty_like(t)); a
    # backend that writes that layout directly costs no copy here
    if g.dtype == t.dtype and g.stride() == torch.empty_like(t, device='meta').stride():
        return g
    return torch.empty_like(t).copy_(g)


@_plan_scan_bwd_op.register_fake
def _plan_scan_bwd_fake(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge,
                        delta_softplus, backend):
    return [torch.empty_like(t) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, z, delta_bias, delta_weight)]


def _below_autograd_keys():
    with torch._C._AutoDispatchBelowAutograd():
        return torch._C._dispatch_tls_local_exclude_set()


_AUTOGRAD_KEYS = _below_autograd_keys() - torch._C._dispatch_tls_local_exclude_set()


def _autograd_enabled():
    # custom-op kernels run with the autograd dispatch keys excluded; the recompute needs them back
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(),
                                           torch._C._dispatch_tls_local_exclude_set() - _AUTOGRAD_KEYS)


def _recompute_backward(fn, grad_out, inputs, index, length, merge, delta_softplus):
    """Gradients of every input (None where absent) by autograd through ``fn`` (a differentiable forward).

    ``inputs`` is (u, delta, A, B, C, D, z, delta_bias) or those plus delta_weight (low-rank Δ)."""
    with _autograd_enabled(), torch.enable_grad():
        leaves = [t.detach().requires_grad_(True) if t is not None else None for t in inputs]
        extra = {'delta_weight': leaves[8]} if len(leaves) > 8 and leaves[8] is not None else {}
        out = fn(*leaves[:8], index=index, length=length, merge=merge, delta_softplus=delta_softplus, **extra)
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
    u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, delta_weight, index)
    ctx.options = (length, merge, delta_softplus, backend)


def _backward(ctx, grad_out):
    u, delta, A, B, C, D, z, delta_bias, delta_weight, index = ctx.saved_tensors
    length, merge, delta_softplus, backend = ctx.options
    # grad_out goes with its own strides: each backend reads the layout it is given
    grads = _plan_scan_bwd_op(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge,
                              delta_softplus, backend)
    present = (u, delta, A, B, C, D, z, delta_bias, delta_weight)
    grads = [g if t is not None else None for g, t in zip(grads, present)]
    return (*grads, None, None, None, None, None)


_plan_scan_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------ entry point

class ScanInputError(ValueError, TypeError):
    """A malformed input to the scan (shape, dtype, device, index map): raised before any kernel runs."""


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge):
    """Clear errors before any kernel sees a wrong shape, dtype, device or index map."""
    tensors = (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('z', z),
               ('delta_bias', delta_bias), ('delta_weight', delta_weight))
    for name, t in tensors[:5]:
        if t is None:
            raise ScanInputError(f'selective scan input {name} is required, got None')
    for name, t in tensors:
        if t is not None and not isinstance(t, torch.Tensor):
            raise ScanInputError(f'selective scan input {name} must be a tensor, got {type(t).__name__}')
        if t is not None and t.dtype not in _FLOAT_DTYPES:
            raise ScanInputError(f'selective scan input {name} must be float16/bfloat16/float32/float64, got {t.dtype}')
    devices = {t.device for _, t in tensors if t is not None}
    if len(devices) > 1:
        raise ScanInputError(f'selective scan inputs must share one device, got {sorted(str(d) for d in devices)}')
    if merge not in MERGE_MODES:
        raise ScanInputError(f'merge must be one of {MERGE_MODES}, got {merge!r}')
    if not isinstance(index, torch.Tensor) or index.dim() != 2 or index.dtype != torch.long:
        got = f'{tuple(index.shape)} {index.dtype}' if isinstance(index, torch.Tensor) else type(index).__name__
        raise ScanInputError(f'index must be a (K, Lk) long tensor, got {got}')
    if isinstance(length, bool) or not isinstance(length, (int, torch.Tensor)) or int(length) < 1:
        raise ScanInputError(f'length must be a positive int (H*W), got {length!r}')  # (a tensor under jit.trace)
    K, Lk = index.shape
    if K < 1 or Lk < 1:
        raise ScanInputError(f'index must have at least one direction and one step, got {tuple(index.shape)}')
    if delta.dim() != 4 or delta.shape[1] != K or delta.shape[3] != Lk:
        what = '(B, K={K}, R, Lk={Lk}) (low-rank factor)' if delta_weight is not None else '(B, K={K}, D, Lk={Lk})'
        raise ScanInputError(f'delta must be {what.format(K=K, Lk=Lk)}, got {tuple(delta.shape)}')
    if delta_weight is not None:
        if delta_weight.dim() != 3 or delta_weight.shape[0] != K or delta_weight.shape[2] != delta.shape[2]:
            raise ScanInputError(f'delta_weight must be (K={K}, D, R={delta.shape[2]}), got '
                                 f'{tuple(delta_weight.shape)}')
        Dm = delta_weight.shape[1]
    else:
        Dm = delta.shape[2]
    Bt = delta.shape[0]
    if Bt < 1 or Dm < 1:
        raise ScanInputError(f'the scan needs at least one batch element and one channel, got B={Bt}, D={Dm}')
    map_channels = K * Dm if merge == 'group' else Dm
    if merge == 'group':
        if tuple(u.shape) != (Bt, K * Dm, length):
            raise ScanInputError(f"with merge='group' u must be a map (B={Bt}, K*D={K * Dm}, L={length}), got "
                                 f"{tuple(u.shape)}")
    elif u.dim() == 3:
        if tuple(u.shape) != (Bt, Dm, length):
            raise ScanInputError(f'map input u must be (B={Bt}, D={Dm}, L={length}), got {tuple(u.shape)}')
    elif tuple(u.shape) != (Bt, K, Dm, Lk):
        raise ScanInputError(f'u must be a map (B, D, L) or sequences (B={Bt}, K={K}, D={Dm}, Lk={Lk}), '
                             f'got {tuple(u.shape)}')
    if A.dim() != 2 or A.shape[0] != K * Dm or A.shape[1] < 1:
        raise ScanInputError(f'A must be (K*D={K * Dm}, N), got {tuple(A.shape)}')
    N = A.shape[1]
    for name, t in (('B', B), ('C', C)):
        if tuple(t.shape) != (Bt, K, N, Lk):
            raise ScanInputError(f'{name} must be (B={Bt}, K={K}, N={N}, Lk={Lk}), got {tuple(t.shape)}')
    for name, t in (('D', D), ('delta_bias', delta_bias)):
        if t is not None and tuple(t.shape) != (K * Dm,):
            raise ScanInputError(f'{name} must be (K*D={K * Dm},), got {tuple(t.shape)}')
    if z is not None and tuple(z.shape) != (Bt, map_channels, length):
        raise ScanInputError(f'z must be (B={Bt}, D={map_channels}, L={length}), got {tuple(z.shape)}')
    validate_index(index, length)


def plan_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length: int,
                        merge: str = 'sum', delta_softplus: bool = True, backend: Optional[str] = None,
                        delta_weight: Optional[torch.Tensor] = None):
    """Selective scan over a direction plan (see the module doc for shapes); dispatches to a backend.

    With ``delta_weight`` (K, D, R), ``delta`` is Δ's rank-R factor (B, K, R, Lk): backends that support it
    compute Δ inside the kernel, and nothing of B*K*D*L elements is saved for backward.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge)
    index = index.to(u.device)
    if torch.compiler.is_exporting():  # torch.export / ONNX / AOTInductor: standard ops, no custom op in the graph
        return _load_backend('export').forward(u, delta, A, B, C, D, z, delta_bias, index=index, length=length,
                                               merge=merge, delta_softplus=delta_softplus, delta_weight=delta_weight)
    name = resolve_backend(u.device, backend, merge)
    return _plan_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus,
                         name)


try:  # timm's FX tracer treats the entry point as a leaf
    from timm.layers import register_notrace_function
    register_notrace_function(plan_selective_scan)
except ImportError:  # pragma: no cover
    pass
