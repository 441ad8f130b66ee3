"""The SSD scan mode (Mamba-2 state space duality) over direction plans: one entry point, backend dispatch.

``plan_ssd_scan`` reads a 2D map along every direction of a plan, runs the Mamba-2 scan per direction
(scalar decay per head, B/C shared by the heads of a direction) and merges the outputs back into map positions.

Shapes (Bt batch, K directions, R heads, P head dim, Dm = R*P channels, N state, L = H*W, Lk steps):
    x        (Bt, Dm, L) map shared by all directions (channel d = head d // P, lane d % P), or
             (Bt, K, Dm, Lk) per-direction sequences; with merge 'group': (Bt, K*Dm, L)
    dt       (Bt, K, R, Lk)   Δ before bias / softplus, one per head and step
    A        (K*R,)           a = -exp(A_log) <= 0, one per head of each direction
    B, C     (Bt, K, N, Lk)   one group per direction, shared by its R heads
    D        (K*Dm,) or None  skip, per direction, head and lane
    dt_bias  (K*R,) or None
    index    (K, Lk) long map positions, -1 for padding (vssm.ops.plans); each position at most once per direction
    merge    'sum' / 'mean' -> (Bt, Dm, L); 'none' -> (Bt, K, Dm, L); 'group' -> (Bt, K*Dm, L)
    dt_softplus  Δ <- softplus(dt + dt_bias);  chunk_size  steps per chunk of the chunked form (64 as Mamba-2)
Per direction and head (state P x N):  H_t = exp(Δ_t a) H_{t-1} + Δ_t x_t B_tᵀ,  y_t = H_t C_t + D ⊙ x_t.
Outputs have channel-last memory (a (Bt, Dm, L) result is (Bt, L, Dm) in memory), as the selective op's.
Dtypes: float16 / bfloat16 / float32 compute in float32, float64 in float64; the result has x's dtype.

Backends (registered with the engine's protocol, vssm.ops.backend, as mode 'ssd'; chosen by ``backend=``,
else $VSSM_SCAN_BACKEND, else the capable one of highest priority): 'reference' (ssd_core.ssd_reference, step
by step, the oracle), 'fast' (ssd_core.ssd_chunked, the CPU path and the default), 'export' (the same chunked form with a gather merge; taken while
``torch.compiler.is_exporting()``), 'cpu' (the same chunked form under the name of each mode's CPU path, so
VSSM_SCAN_BACKEND=cpu serves Mamba-1 and Mamba-2 layers alike), 'triton' (ssd_triton.py: fused forward and
backward kernels; the default on CUDA).
The call goes through the ``vssm::plan_ssd`` custom op (backward:
``vssm::plan_ssd_bwd``, a recompute through the backend's differentiable forward), so torch.compile and
jit tracing (FLOP counting, vssm.ops.flops) see one op.

No C++ CPU kernel: the chunked form spends its time in batched matmuls (C Bᵀ, (C Bᵀ ∘ Λ) X, Xᵀ B, C H) that
oneDNN / BLAS already run near peak on one core, and the remaining elementwise work (segment sums, exp) is
O(T) per output element, not a step-serial loop a fused kernel could speed up the way it speeds up the
Mamba-1 recurrence.
"""
from typing import List, Optional

import torch

from .backend import (ALL_FLOAT_DTYPES, Capabilities, ScanBackend, ScanRequest, get_backend, op_gradients,
                      recompute_grads, register_backend, register_lazy_backend, resolve_backend)
from .plans import MERGE_MODES, cross_scan_rows, validate_index
from .scan import ScanInputError, check_common_inputs
from .ssd_core import DEFAULT_CHUNK, ssd_chunked, ssd_reference

__all__ = ['plan_ssd_scan', 'plan_ssd_reference', 'plan_ssd_fast', 'plan_ssd_export', 'ssd_request', 'MODE']


# ------------------------------------------------------------------------------------- plan-level forwards

def _sequences(x, index, length, merge, K):
    """x -> per-direction sequences (Bt, K, Lk, Dm), time-major."""
    if x.dim() == 4:  # already (Bt, K, Dm, Lk)
        return x.transpose(-1, -2)
    x_cl = x.transpose(1, 2)  # (Bt, L, C): a view for channel-last maps
    if merge == 'group':
        x_cl = x_cl.reshape(x.shape[0], length, K, -1)
    return cross_scan_rows(x_cl, index)


def _merge_rows(y, index, length, merge):
    """Sequences (Bt, K, Lk, Dm) -> map positions; index_add over rows of Dm channels (channel-last out)."""
    Bt, K, Lk, Dm = y.shape
    pos = torch.where(index < 0, torch.full_like(index, length), index)  # padding lands in a dropped row
    if merge in ('sum', 'mean'):
        out = y.new_zeros(Bt, length + 1, Dm).index_add(1, pos.reshape(-1), y.reshape(Bt, K * Lk, Dm))
        out = out[:, :length].transpose(1, 2)
        return out / K if merge == 'mean' else out
    k = torch.arange(K, device=index.device)[:, None]
    if merge == 'group':  # direction k writes channel group k: row pos * K + k of (Bt, (L+1)*K, Dm)
        rows = pos * K + k
        out = y.new_zeros(Bt, (length + 1) * K, Dm).index_add(1, rows.reshape(-1), y.reshape(Bt, K * Lk, Dm))
        return out.view(Bt, length + 1, K * Dm)[:, :length].transpose(1, 2)
    rows = k * (length + 1) + pos  # 'none': one map per direction
    out = y.new_zeros(Bt, K * (length + 1), Dm).index_add(1, rows.reshape(-1), y.reshape(Bt, K * Lk, Dm))
    return out.view(Bt, K, length + 1, Dm)[:, :, :length].transpose(-1, -2)


def _merge_gather(y, index, length, merge):
    from .export_scan import merge_by_gather  # a gather merge: no ScatterND with repeated indices in ONNX
    return merge_by_gather(y.transpose(-1, -2), index, length, merge)


def _empty_output(x, index, length, merge):
    Bt = x.shape[0]
    Dm = x.shape[1] if x.dim() == 3 else x.shape[2]
    shape = (Bt, index.shape[0], Dm, length) if merge == 'none' else (Bt, Dm, length)
    return x.new_empty(shape)


def _plan_ssd_with(seq_fn, merge_fn, x, dt, A, B, C, D, dt_bias, index, length, merge, dt_softplus, **kw):
    if x.device.type == 'meta':
        return _empty_output(x, index, length, merge)
    K = index.shape[0]
    R = dt.shape[2]
    xs = _sequences(x, index, length, merge, K)  # (Bt, K, Lk, Dm)
    Bt, _, Lk, Dm = xs.shape
    P = Dm // R
    y = seq_fn(xs.reshape(Bt, K, Lk, R, P), dt.transpose(-1, -2), A.view(K, R), B.transpose(-1, -2),
               C.transpose(-1, -2), None if D is None else D.view(K, R, P),
               None if dt_bias is None else dt_bias.view(K, R), dt_softplus, **kw)
    return merge_fn(y.reshape(Bt, K, Lk, Dm), index, length, merge)


def plan_ssd_reference(x, dt, A, B, C, D=None, dt_bias=None, *, index, length, merge='sum', dt_softplus=True,
                       chunk_size=DEFAULT_CHUNK):
    """The oracle: cross-scan copy, step-by-step recurrence, merge (chunk_size is ignored)."""
    return _plan_ssd_with(ssd_reference, _merge_rows, x, dt, A, B, C, D, dt_bias, index, length, merge,
                          dt_softplus)


def plan_ssd_fast(x, dt, A, B, C, D=None, dt_bias=None, *, index, length, merge='sum', dt_softplus=True,
                  chunk_size=DEFAULT_CHUNK):
    """CPU path: cross-scan copy, chunked matmul form, row merge; differentiable by autograd."""
    return _plan_ssd_with(ssd_chunked, _merge_rows, x, dt, A, B, C, D, dt_bias, index, length, merge, dt_softplus,
                          chunk_size=chunk_size)


def plan_ssd_export(x, dt, A, B, C, D=None, dt_bias=None, *, index, length, merge='sum', dt_softplus=True,
                    chunk_size=DEFAULT_CHUNK):
    """Export path: the chunked form (standard ops, no data-dependent control flow) with a gather merge."""
    return _plan_ssd_with(ssd_chunked, _merge_gather, x, dt, A, B, C, D, dt_bias, index, length, merge,
                          dt_softplus, chunk_size=chunk_size)


# ----------------------------------------------------------------------------------------------- backends

MODE = 'ssd'
_PYTORCH_CAPS = dict(devices=frozenset({'cpu', 'cuda', 'meta'}), dtypes=ALL_FLOAT_DTYPES,
                     merges=frozenset(MERGE_MODES))


def cost_of(name: str):
    """The ``cost`` of SSD backend ``name``: ScanShape -> (forward, backward) ScanCost (vssm/ops/ssd_cost.py).

    For mode 'ssd' a ScanShape's ``heads`` is the number of heads R and ``channels`` the per-direction width R * P."""
    def cost(s):
        from .ssd_cost import ssd_cost
        heads = s.heads or 1
        return ssd_cost(s.batch, s.directions, heads, s.channels // heads, s.length, s.d_state, dtype=s.dtype,
                        steps=s.steps, backend=name)
    return cost


# CUDA runs index_add (cross-scan gradient, merge) with atomics: bitwise reproducible on CPU only
register_backend(ScanBackend(
    name='reference', mode=MODE, forward=plan_ssd_reference, differentiable=plan_ssd_reference, priority=-1,
    capabilities=Capabilities(**_PYTORCH_CAPS), cost=cost_of('reference')))
register_backend(ScanBackend(
    name='fast', mode=MODE, forward=plan_ssd_fast, differentiable=plan_ssd_fast, priority=10,
    capabilities=Capabilities(**_PYTORCH_CAPS), cost=cost_of('fast')))
register_backend(ScanBackend(
    name='export', mode=MODE, forward=plan_ssd_export, differentiable=plan_ssd_export, priority=-1,
    capabilities=Capabilities(**_PYTORCH_CAPS, exportable=True), cost=cost_of('export')))
# 'cpu' names the CPU path of each mode, so VSSM_SCAN_BACKEND=cpu runs Mamba-1 and Mamba-2 models alike; for the
# SSD that path is the chunked PyTorch form (see the module doc for why there is no C++ kernel)
register_backend(ScanBackend(
    name='cpu', mode=MODE, forward=plan_ssd_fast, differentiable=plan_ssd_fast, priority=-1,
    capabilities=Capabilities(**dict(_PYTORCH_CAPS, devices=frozenset({'cpu'}))), cost=cost_of('cpu')))
register_lazy_backend('triton', 'vssm.ops.ssd_triton', mode=MODE)


# ------------------------------------------------------------------------------------------- custom op

def _channel_last(t: torch.Tensor) -> torch.Tensor:
    return t.transpose(-1, -2).contiguous().transpose(-1, -2)


@torch.library.custom_op('vssm::plan_ssd', mutates_args=())
def _plan_ssd_op(x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                 D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor], index: torch.Tensor, length: int,
                 merge: str, dt_softplus: bool, chunk_size: int, backend: str) -> torch.Tensor:
    return _channel_last(get_backend(backend, MODE).forward(
        x, dt, A, B, C, D, dt_bias, index=index, length=length, merge=merge, dt_softplus=dt_softplus,
        chunk_size=chunk_size))


@_plan_ssd_op.register_fake
def _plan_ssd_fake(x, dt, A, B, C, D, dt_bias, index, length, merge, dt_softplus, chunk_size, backend):
    return _channel_last(_empty_output(x, index, length, merge))


@torch.library.custom_op('vssm::plan_ssd_bwd', mutates_args=())
def _plan_ssd_bwd_op(grad_out: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                     C: torch.Tensor, D: Optional[torch.Tensor], dt_bias: Optional[torch.Tensor],
                     index: torch.Tensor, length: int, merge: str, dt_softplus: bool, chunk_size: int,
                     backend: str) -> List[torch.Tensor]:
    b = get_backend(backend, MODE)
    inputs = (x, dt, A, B, C, D, dt_bias)
    opts = dict(index=index, length=length, merge=merge, dt_softplus=dt_softplus, chunk_size=chunk_size)
    if b.backward is not None:
        grads = b.backward(grad_out, *inputs, **opts)
    else:  # autograd (torch.func.vjp) through the backend's differentiable forward, recomputed now
        grads = recompute_grads(b.differentiable or plan_ssd_fast, grad_out, inputs, **opts)
    # custom ops cannot return None: an absent optional input gets an empty tensor; each gradient takes its
    # input's dtype and layout
    return op_gradients(grads, inputs, (grad_out, index))


@_plan_ssd_bwd_op.register_fake
def _plan_ssd_bwd_fake(grad_out, x, dt, A, B, C, D, dt_bias, index, length, merge, dt_softplus, chunk_size,
                       backend):
    return [torch.empty_like(t) if t is not None else x.new_empty(0) for t in (x, dt, A, B, C, D, dt_bias)]


def _setup_context(ctx, inputs, output):
    x, dt, A, B, C, D, dt_bias, index, length, merge, dt_softplus, chunk_size, backend = inputs
    ctx.save_for_backward(x, dt, A, B, C, D, dt_bias, index)
    ctx.options = (length, merge, dt_softplus, chunk_size, backend)


def _backward(ctx, grad_out):
    x, dt, A, B, C, D, dt_bias, index = ctx.saved_tensors
    grads = _plan_ssd_bwd_op(grad_out, x, dt, A, B, C, D, dt_bias, index, *ctx.options)
    present = (x, dt, A, B, C, D, dt_bias)
    return (*[g if t is not None else None for g, t in zip(grads, present)], None, None, None, None, None, None)


_plan_ssd_op.register_autograd(_backward, setup_context=_setup_context)


# ------------------------------------------------------------------------------------------ entry point

def _check_inputs(x, dt, A, B, C, D, dt_bias, index, length, merge, chunk_size):
    """Clear errors before any kernel sees a wrong shape, dtype, device or index map."""
    tensors = (('x', x), ('dt', dt), ('A', A), ('B', B), ('C', C), ('D', D), ('dt_bias', dt_bias))
    check_common_inputs('SSD scan', tensors, 5, index, length, merge)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ScanInputError(f'chunk_size must be a positive int, got {chunk_size!r}')
    K, Lk = index.shape
    if dt.dim() != 4 or dt.shape[1] != K or dt.shape[3] != Lk or dt.shape[0] < 1 or dt.shape[2] < 1:
        raise ScanInputError(f'dt must be (B, K={K}, R heads, Lk={Lk}), got {tuple(dt.shape)}')
    Bt, _, R, _ = dt.shape
    if merge == 'group':
        if x.dim() != 3 or x.shape[0] != Bt or x.shape[2] != length or x.shape[1] % K:
            raise ScanInputError(f"with merge='group' x must be a map (B={Bt}, K*D, L={length}) with K={K}, got "
                                 f"{tuple(x.shape)}")
        Dm = x.shape[1] // K
    elif x.dim() == 3:
        if x.shape[0] != Bt or x.shape[2] != length:
            raise ScanInputError(f'map input x must be (B={Bt}, D, L={length}), got {tuple(x.shape)}')
        Dm = x.shape[1]
    elif x.dim() == 4:
        if x.shape[0] != Bt or x.shape[1] != K or x.shape[3] != Lk:
            raise ScanInputError(f'x must be a map (B, D, L) or sequences (B={Bt}, K={K}, D, Lk={Lk}), got '
                                 f'{tuple(x.shape)}')
        Dm = x.shape[2]
    else:
        raise ScanInputError(f'x must be a map (B, D, L) or sequences (B, K, D, Lk), got {tuple(x.shape)}')
    if Dm < 1 or Dm % R:
        raise ScanInputError(f'x has {Dm} channels per direction, which the R={R} heads of dt must divide '
                             f'(head dim P = D / R)')
    if tuple(A.shape) != (K * R,):
        raise ScanInputError(f'A must be (K*R={K * R},): one scalar per head and direction, got {tuple(A.shape)}')
    if B.dim() != 4 or tuple(B.shape[:2]) != (Bt, K) or B.shape[3] != Lk or B.shape[2] < 1:
        raise ScanInputError(f'B must be (B={Bt}, K={K}, N, Lk={Lk}), got {tuple(B.shape)}')
    if tuple(C.shape) != tuple(B.shape):
        raise ScanInputError(f'C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}')
    if D is not None and tuple(D.shape) != (K * Dm,):
        raise ScanInputError(f'D must be (K*D={K * Dm},), got {tuple(D.shape)}')
    if dt_bias is not None and tuple(dt_bias.shape) != (K * R,):
        raise ScanInputError(f'dt_bias must be (K*R={K * R},), got {tuple(dt_bias.shape)}')
    validate_index(index, int(length))


def ssd_request(x: torch.Tensor, merge: str) -> ScanRequest:
    """What a call with map / sequences ``x`` and ``merge`` needs of an SSD backend (for resolve_backend)."""
    return ScanRequest(mode=MODE, device=x.device.type, dtype=x.dtype, merge=merge,
                       plan_kind='sequences' if x.dim() == 4 else 'map')


def plan_ssd_scan(x, dt, A, B, C, D=None, dt_bias=None, *, index, length: int, merge: str = 'sum',
                  dt_softplus: bool = True, chunk_size: int = DEFAULT_CHUNK, backend: Optional[str] = None):
    """Mamba-2 SSD scan over a direction plan (shapes in the module doc); dispatches to a backend."""
    _check_inputs(x, dt, A, B, C, D, dt_bias, index, length, merge, chunk_size)
    index = index.to(x.device)
    if torch.compiler.is_exporting():  # torch.export / ONNX: standard ops, no custom op in the graph
        return plan_ssd_export(x, dt, A, B, C, D, dt_bias, index=index, length=length, merge=merge,
                               dt_softplus=dt_softplus, chunk_size=chunk_size)
    name = resolve_backend(ssd_request(x, merge), backend).name
    return _plan_ssd_op(x, dt, A, B, C, D, dt_bias, index, length, merge, dt_softplus, chunk_size, name)


try:  # timm's FX tracer treats the entry point as a leaf
    from timm.layers import register_notrace_function
    register_notrace_function(plan_ssd_scan)
except ImportError:  # pragma: no cover
    pass
