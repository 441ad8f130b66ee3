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

Backends register through the public protocol of vssm/ops/backend.py (``ScanBackend``, ``Capabilities``,
``register_backend``): 'reference' (the oracle), 'fast' (chunked PyTorch), 'cpu' (fused C++, the CPU default),
'triton' (fused GPU kernel, the CUDA default), 'cuda' (native extension, when built) and 'export' (standard
ops, taken while ``torch.export`` traces). Dispatch picks by capability; ``VSSM_SCAN_BACKEND`` or ``backend=``
force one. The call goes through the ``vssm::plan_scan`` custom op (backward: ``vssm::plan_scan_bwd``) so
torch.compile and jit tracing (FLOP counting) see one op. docs/scan_engine.md is the engine's page.
"""
import contextlib
from typing import List, Optional

import torch
import torch.nn.functional as F

from .cost import ScanShape, pytorch_path_cost, scan_shape
from .backend import (
    ALL_FLOAT_DTYPES, BACKEND_ENV, Capabilities, ScanBackend, ScanRequest, get_backend, op_gradients,
    recompute_grads, register_backend, register_lazy_backend, resolve_backend,
)
from .plans import cross_merge, cross_scan, validate_index, MERGE_MODES
from .selective_scan import cast_to, selective_scan_fast, selective_scan_ref, compute_dtype

__all__ = [
    'plan_selective_scan', 'plan_scan_reference', 'plan_scan_fast', 'scan_over_plan', 'empty_output', 'expand_delta',
    'low_rank_grads', 'scan_request', 'record_scan_shapes', 'check_common_inputs', 'ScanInputError', 'BACKEND_ENV',
    'CPU_KERNEL_ENV', 'MODE', 'INPUT_NAMES',
]

MODE = 'selective'
# the op's tensor inputs, in order; backward returns one gradient per present input
INPUT_NAMES = ('u', 'delta', 'A', 'B', 'C', 'D', 'z', 'delta_bias', 'delta_weight')
_FLOAT_DTYPES = tuple(ALL_FLOAT_DTYPES)


def expand_delta(delta: torch.Tensor, delta_weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Full Δ (Bt, K, Dm, Lk) from its low-rank form: delta (Bt, K, R, Lk) and delta_weight (K, Dm, R)."""
    if delta_weight is None:
        return delta
    ct = torch.promote_types(delta.dtype, delta_weight.dtype)
    return torch.einsum('kdr,bkrl->bkdl', cast_to(delta_weight, ct), cast_to(delta, ct))


def scan_over_plan(seq_scan, u, delta, A, B, C, D, z, delta_bias, index, length, merge, delta_softplus,
                   delta_weight=None, merge_fn=cross_merge):
    """The op from a sequence scan: cross-scan copy, ``seq_scan`` over (Bt, K*Dm, Lk) sequences, merge, gate.

    ``seq_scan`` has ``selective_scan_ref``'s signature; ``merge_fn`` has ``plans.cross_merge``'s."""
    K = index.shape[0]
    if merge == 'group':  # direction k reads its own channel group: a per-direction (Bt, K, Dm, L) map
        us = cross_scan(u.view(u.shape[0], K, -1, length), index)
    else:
        us = cross_scan(u, index) if u.dim() == 3 else u
    Bt, K, Dm, Lk = us.shape
    ct = compute_dtype(u, delta, A, B, C, D, delta_bias, z, delta_weight)
    delta = expand_delta(delta, delta_weight)
    y = seq_scan(cast_to(us, ct).reshape(Bt, K * Dm, Lk), delta.reshape(Bt, K * Dm, Lk), A, B, C, D,
                 None, delta_bias, delta_softplus)
    out = merge_fn(y.view(Bt, K, Dm, Lk), index, length, merge)
    if z is not None:
        gate = F.silu(cast_to(z, ct))
        out = out * (gate[:, None] if merge == 'none' else gate)
    return cast_to(out, u.dtype)


def plan_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                        delta_softplus=True, delta_weight=None):
    """Oracle: cross-scan copy + step-by-step scan + merge; any dtype and device (meta included)."""
    if u.device.type == 'meta':
        return empty_output(u, index, length, merge)
    return scan_over_plan(selective_scan_ref, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                          delta_softplus, delta_weight)


def plan_scan_fast(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                   delta_softplus=True, delta_weight=None):
    """CPU path: cross-scan copy + chunked closed-form scan + merge; differentiable by autograd."""
    if u.device.type == 'meta':
        return empty_output(u, index, length, merge)
    return scan_over_plan(selective_scan_fast, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                          delta_softplus, delta_weight)


def empty_output(u, index, length, merge):
    """An uninitialised output of the op's shape for these inputs (meta and fake implementations)."""
    Bt = u.shape[0]
    Dm = u.shape[1] if u.dim() == 3 else u.shape[2]  # with merge 'group': K*D, the grouped map's channels
    shape = (Bt, index.shape[0], Dm, length) if merge == 'none' else (Bt, Dm, length)
    return u.new_empty(shape)


# ----------------------------------------------------------------------------------------------- backends

CPU_KERNEL_ENV = 'VSSM_CPU_KERNEL'  # 0: never build/use the fused C++ CPU scan


def reference_cost(s: ScanShape):
    # one python step at a time: about 7 op calls per step, each over a (B, K*Dm, N) state slice
    return pytorch_path_cost('reference', s, passes=6, chunk=1, launches_per_chunk=7)


def fast_cost(s: ScanShape):
    # selective_scan_fast: chunks of up to 512 steps with ~8 elementwise/cumsum passes over (lanes, chunk) tensors
    from .selective_scan import chunk_length
    return pytorch_path_cost('fast', s, passes=8, chunk=chunk_length(s.lanes), launches_per_chunk=10)


register_backend(ScanBackend(
    name='reference', forward=plan_scan_reference, differentiable=plan_scan_reference, priority=0, cost=reference_cost,
    capabilities=Capabilities(devices=frozenset({'cpu', 'cuda', 'meta'}), dtypes=ALL_FLOAT_DTYPES,
                              low_rank_delta=True)))
register_backend(ScanBackend(
    name='fast', forward=plan_scan_fast, differentiable=plan_scan_fast, priority=10, cost=fast_cost,
    capabilities=Capabilities(devices=frozenset({'cpu', 'cuda', 'meta'}), dtypes=ALL_FLOAT_DTYPES,
                              low_rank_delta=True)))
# built-ins with heavy imports (a C++ build, Triton, a native extension): each module registers itself
for _name, _module in (('cpu', 'vssm.ops.cpu_kernel'), ('triton', 'vssm.ops.triton_scan'),
                       ('cuda', 'vssm.ops.cuda_ext'), ('export', 'vssm.ops.export_scan')):
    register_lazy_backend(_name, _module, MODE)


def scan_request(u, merge: str, *tensors) -> ScanRequest:
    """The capabilities a call needs: u's device, the widest dtype among the inputs, the merge and the plan kind."""
    dtype = torch.float64 if any(t is not None and t.dtype == torch.float64 for t in (u, *tensors)) else u.dtype
    kind = 'map' if u.dim() == 3 else 'sequences'
    return ScanRequest(mode=MODE, device=u.device.type, dtype=dtype, merge=merge, plan_kind=kind)


# ------------------------------------------------------------------------------------------- custom op

def _call_forward(b: ScanBackend, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge,
                  delta_softplus):
    opts = dict(index=index, length=length, merge=merge, delta_softplus=delta_softplus)
    if delta_weight is None:
        return b.forward(u, delta, A, B, C, D, z, delta_bias, **opts)
    if b.capabilities.low_rank_delta:
        return b.forward(u, delta, A, B, C, D, z, delta_bias, delta_weight=delta_weight, **opts)
    return b.forward(u, expand_delta(delta, delta_weight), A, B, C, D, z, delta_bias, **opts)


@torch.library.custom_op('vssm::plan_scan', mutates_args=())
def _plan_scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                  D: Optional[torch.Tensor], z: Optional[torch.Tensor], delta_bias: Optional[torch.Tensor],
                  delta_weight: Optional[torch.Tensor], index: torch.Tensor, length: int, merge: str,
                  delta_softplus: bool, backend: str) -> torch.Tensor:
    return _channel_last(_call_forward(get_backend(backend, MODE), u, delta, A, B, C, D, z, delta_bias, delta_weight,
                                       index, length, merge, delta_softplus))


def _channel_last(t: torch.Tensor) -> torch.Tensor:
    # every result is laid out channel-last ((B, L, D) memory for a (B, D, L) result), the layout the
    # LayerNorm after the scan reads without a copy; a no-op for backends that write it that way
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@_plan_scan_op.register_fake
def _plan_scan_fake(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus, backend):
    return _channel_last(empty_output(u, index, length, merge))


def low_rank_grads(grads, delta, delta_weight):
    """dΔ from a full-Δ backward -> gradients of the factors (delta, delta_weight): the 9 gradients."""
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
    """Gradients of every input: the backend's backward, or autograd through its differentiable forward."""
    b = get_backend(backend, MODE)
    opts = dict(index=index, length=length, merge=merge, delta_softplus=delta_softplus)
    if b.backward is None:
        grads = recompute_grads(_positional(b.differentiable or plan_scan_reference), grad_out,
                                (u, delta, A, B, C, D, z, delta_bias, delta_weight), **opts)
    elif delta_weight is not None and b.capabilities.low_rank_delta:
        grads = b.backward(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_weight=delta_weight, **opts)
    elif delta_weight is not None:
        grads = b.backward(grad_out, u, expand_delta(delta, delta_weight), A, B, C, D, z, delta_bias, **opts)
        grads = low_rank_grads(grads, delta, delta_weight)
    else:
        grads = [*b.backward(grad_out, u, delta, A, B, C, D, z, delta_bias, **opts), None]
    present = (u, delta, A, B, C, D, z, delta_bias, delta_weight)
    return op_gradients(grads, present, (grad_out, index))


@_plan_scan_bwd_op.register_fake
def _plan_scan_bwd_fake(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge,
                        delta_softplus, backend):
    return [torch.empty_like(t) if t is not None else u.new_empty(0)
            for t in (u, delta, A, B, C, D, z, delta_bias, delta_weight)]


def _setup_context(ctx, inputs, output):
    u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus, backend = inputs
    ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, delta_weight, index)
    ctx.options = (length, merge, delta_softplus, backend)


def _backward(ctx, grad_out):
    u, delta, A, B, C, D, z, delta_bias, delta_weight, index = ctx.saved_tensors
    length, merge, delta_softplus, backend = ctx.options
    present = (u, delta, A, B, C, D, z, delta_bias, delta_weight)
    # grad_out goes with its own strides: each backend reads the layout it is given
    grads = _plan_scan_bwd_op(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length,
                              merge, delta_softplus, backend)
    grads = [g if t is not None else None for g, t in zip(grads, present)]
    return (*grads, None, None, None, None, None)


def _positional(fn):
    """``fn`` with delta_weight as the ninth positional input (the order recompute_grads differentiates)."""
    def call(u, delta, A, B, C, D, z, delta_bias, delta_weight, **opts):
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_weight=delta_weight, **opts)
    return call


_plan_scan_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------ entry point

class ScanInputError(ValueError, TypeError):
    """A malformed input to the scan (shape, dtype, device, index map): raised before any kernel runs."""


def check_common_inputs(what: str, tensors, required: int, index, length, merge) -> None:
    """The checks every scan mode shares: ``tensors`` are (name, tensor or None) pairs, the first ``required``
    of them mandatory; all float tensors on one device; a known merge; a (K, Lk) long index; a positive length."""
    for name, t in tensors[:required]:
        if t is None:
            raise ScanInputError(f'{what} input {name} is required, got None')
    for name, t in tensors:
        if t is not None and not isinstance(t, torch.Tensor):
            raise ScanInputError(f'{what} input {name} must be a tensor, got {type(t).__name__}')
        if t is not None and t.dtype not in _FLOAT_DTYPES:
            raise ScanInputError(f'{what} input {name} must be float16/bfloat16/float32/float64, got {t.dtype}')
    devices = {t.device for _, t in tensors if t is not None}
    if len(devices) > 1:
        raise ScanInputError(f'{what} inputs must share one device, got {sorted(str(d) for d in devices)}')
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


def _check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge):
    """Clear errors before any kernel sees a wrong shape, dtype, device or index map."""
    tensors = (('u', u), ('delta', delta), ('A', A), ('B', B), ('C', C), ('D', D), ('z', z),
               ('delta_bias', delta_bias), ('delta_weight', delta_weight))
    check_common_inputs('selective scan', tensors, 5, index, length, merge)
    K, Lk = index.shape
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


_RECORDERS: List[list] = []


@contextlib.contextmanager
def record_scan_shapes():
    """Collects the ScanShape (vssm/ops/cost.py) of every plan_selective_scan call made inside the block, with
    the call's index map: the layer shapes of a real model, for benchmarks and cost tables."""
    calls: list = []
    _RECORDERS.append(calls)
    try:
        yield calls
    finally:
        _RECORDERS.remove(calls)


def plan_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length: int,
                        merge: str = 'sum', delta_softplus: bool = True, backend: Optional[str] = None,
                        delta_weight: Optional[torch.Tensor] = None):
    """Selective scan over a direction plan (see the module doc for shapes); dispatches to a backend.

    With ``delta_weight`` (K, D, R), ``delta`` is Δ's rank-R factor (B, K, R, Lk): backends that support it
    compute Δ inside the kernel, and nothing of B*K*D*L elements is saved for backward.
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge)
    index = index.to(u.device)
    for calls in _RECORDERS:
        calls.append(scan_shape(u, delta, A, index, length, merge, z=z, D=D, delta_weight=delta_weight))
    if torch.compiler.is_exporting():  # torch.export / ONNX / AOTInductor: standard ops, no custom op in the graph
        return get_backend('export', MODE).forward(u, delta, A, B, C, D, z, delta_bias, index=index, length=length,
                                               merge=merge, delta_softplus=delta_softplus, delta_weight=delta_weight)
    chosen = resolve_backend(scan_request(u, merge, delta, A, B, C, D, z, delta_bias, delta_weight), backend)
    return _plan_scan_op(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus,
                         chosen.name)


try:  # timm's FX tracer treats the entry point as a leaf
    from timm.layers import register_notrace_function
    register_notrace_function(plan_selective_scan)
except ImportError:  # pragma: no cover
    pass
