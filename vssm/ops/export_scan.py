"""An exportable plan scan: standard tensor ops only, loops with a trip count fixed by the shapes, safe in float32.

``torch.export`` (and through it ONNX and AOTInductor) cannot keep the ``vssm::plan_scan`` custom op without a
custom-op domain, and the ``fast`` backend picks its chunk bounds from the data (``.tolist()``), which a graph
cannot hold. This backend computes the same op (the whole contract: map or sequence u, low-rank Δ, merges
sum / mean / none / group, z, D, -1 padding) from ops every exporter knows: gather, mul, add, exp, cumsum,
pad, einsum; the merge is a gather too (no scatter-add: see ``merge_by_gather``). ``plan_selective_scan``
routes to it while ``torch.compiler.is_exporting()``.

The recurrence h_t = exp(a_t) h_{t-1} + b_t (a = Δ·A <= 0) runs as a blocked parallel scan:
    1. cut the sequence into chunks of CHUNK steps (zero-padded at the end: decay 1, input 0);
    2. within every chunk at once, CHUNK plain recurrence steps from h = 0 (a loop of fixed length);
    3. the chunk-end states follow the same recurrence over chunks, with per-chunk decay exp(sum a), solved
       by the same function (recursion depth ceil(log_CHUNK(L)), fixed by L);
    4. h_t = local_t + exp(S_t) * (state entering the chunk), S_t = cumsum of a inside the chunk.
Every exponent is a sum of a <= 0, so no exp ever exceeds 1: nothing overflows whatever Δ and A are (the
closed form exp(S_t) * cumsum(exp(-S_s) ...) of the ``fast`` backend overflows past |S| ~ 88 in float32, which
is why it cuts its chunks where the data says, something a graph cannot do).

Cost model, per (batch, direction, channel, state) lane and L steps: about 2·L multiply-adds in step 2, 3·L
elementwise ops in step 4, and L/CHUNK + L/CHUNK² + ... for the levels above; memory O(L·N) per channel (the
state of every step, as C·h needs it), never the O(L·CHUNK·N) of a segment-sum matrix. The first level runs
time-major (see ``selective_scan_export``). The graph holds about 2·CHUNK nodes per recursion level: ~100 per
scan for the 3136 steps of a 56x56 map. Profiled in onnxruntime (1 thread, EfficientVMamba-T, 224², batch 1,
2026-12-01): 274 ms per image, of which convs and matmuls take 16 ms and the scan's gathers, splits, slices,
multiply-adds, exp and cumsum nearly all the rest; docs/benchmarks.md has the throughput table.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from .backend import ALL_FLOAT_DTYPES, Capabilities, ScanBackend, register_backend
from .scan import empty_output, scan_over_plan
from .selective_scan import finish_output, prepare_inputs

__all__ = ['CHUNK', 'linear_recurrence', 'selective_scan_export', 'inverse_index', 'merge_by_gather',
           'plan_scan_export']

# steps per chunk: the in-chunk loop length (graph size) against the number of chunks (recursion levels)
CHUNK = 16


def _steps(decay: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """h_t = decay_t * h_{t-1} + inp_t from h = 0 along the last dim (a python loop of fixed length)."""
    decay = decay.movedim(-1, 0).unbind(0)  # time first: every step reads one contiguous slice; one unbind
    inp = inp.movedim(-1, 0).unbind(0)  # node instead of one select per step keeps the graph small
    h = inp[0]
    states = [h]
    for t in range(1, len(inp)):
        h = decay[t] * h + inp[t]
        states.append(h)
    return torch.stack(states, dim=-1)


def linear_recurrence(a: torch.Tensor, b: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """h_t = exp(a_t) * h_{t-1} + b_t along the last dim, h_{-1} = 0, for a <= 0 (blocked; see module doc)."""
    L = a.shape[-1]
    if L <= chunk:
        return _steps(torch.exp(a), b)
    n = -(-L // chunk)
    pad = n * chunk - L
    if pad:  # trailing steps with decay 1 and no input: they only repeat the last state, then are cropped
        a, b = F.pad(a, (0, pad)), F.pad(b, (0, pad))
    a = a.unflatten(-1, (n, chunk))
    b = b.unflatten(-1, (n, chunk))
    S = torch.cumsum(a, dim=-1)  # decay exponent from the chunk start to step t, <= 0
    local = _steps(torch.exp(a), b)  # each chunk on its own, from a zero state
    ends = linear_recurrence(S[..., -1], local[..., -1], chunk)  # true state at each chunk's end
    entering = F.pad(ends[..., :-1], (1, 0))  # state entering each chunk (zero for the first)
    h = local + torch.exp(S) * entering[..., None]
    return h.flatten(-2)[..., :L] if pad else h.flatten(-2)


def _time_major(t: torch.Tensor, chunks: int, chunk: int) -> torch.Tensor:
    """(..., L) -> (..., chunk, chunks): step j of every chunk side by side, zero-padded at the end."""
    pad = chunks * chunk - t.shape[-1]
    if pad:
        t = F.pad(t, (0, pad))
    # a gather, not a transpose: onnxruntime's transpose optimiser would push a Transpose past the
    # broadcasting multiplies onto the N-wide tensors and bring the strided layout back
    order = torch.arange(chunks * chunk, device=t.device).view(chunks, chunk).t().reshape(-1)
    return t.index_select(-1, order).unflatten(-1, (chunk, chunks))


def selective_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          chunk: int = CHUNK):
    """Sequence-form selective scan (same signature and values as ``selective_scan_ref``), exportable.

    The first level of ``linear_recurrence`` is laid out time-major here: the N-wide state tensors are born in
    (.., step-in-chunk, chunk) order from the small inputs (Δ, u, B, C have no state axis, or a small one), so
    every loop step reads and writes contiguous rows and no N-wide tensor is transposed (in onnxruntime the
    strided splits, stacks and cumsums of the time-last layout took half the model's time).
    """
    if u.device.type == 'meta':
        return torch.empty_like(u)
    shape, dtype = u.shape, u.dtype
    us, delta, A, B, C, _ = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    if A.shape[-1] == 1:
        # one state: the state tensors are no larger than the inputs, so reordering the inputs costs as much as
        # it saves (measured in onnxruntime on VMamba-T s1l8): the time-last recurrence as it is
        a = delta[:, :, :, None, :] * A[..., None]  # (B, G, Dg, 1, L)
        h = linear_recurrence(a, (delta * us)[:, :, :, None, :] * B.transpose(-1, -2), chunk)
        return finish_output((h * C.transpose(-1, -2)).sum(-2), us, D, z, dtype, shape)
    L = us.shape[-1]
    T = min(chunk, L)
    n = -(-L // T)
    # (B, G, Dg, T, n) and (B, G, 1, N, T, n); padded steps have Δ = 0: decay 1, no input
    d_tm = _time_major(delta, n, T)
    x_tm = _time_major(delta * us, n, T)
    B_tm = _time_major(B.transpose(-1, -2), n, T)
    C_tm = _time_major(C.transpose(-1, -2), n, T)
    a = d_tm[:, :, :, None] * A[..., None, None]  # (B, G, Dg, N, T, n), <= 0
    b = x_tm[:, :, :, None] * B_tm
    local = _steps_tm(torch.exp(a), b)  # every chunk from a zero state
    S = torch.cumsum(a, dim=-2)  # decay exponent from the chunk start, <= 0
    ends = linear_recurrence(S[..., -1, :], local[..., -1, :], chunk)  # true state at each chunk's end
    entering = F.pad(ends[..., :-1], (1, 0))
    h = local + torch.exp(S) * entering[..., None, :]
    y = (h * C_tm).sum(3).transpose(-1, -2).flatten(-2)  # (B, G, Dg, n*T), time-last again (no state axis)
    if n * T != L:
        y = y[..., :L]
    return finish_output(y, us, D, z, dtype, shape)


def _steps_tm(decay: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
    """``_steps`` along dim -2 of time-major tensors (..., T, n)."""
    decay, inp = decay.unbind(-2), inp.unbind(-2)
    h = inp[0]
    states = [h]
    for t in range(1, len(inp)):
        h = decay[t] * h + inp[t]
        states.append(h)
    return torch.stack(states, dim=-2)


def inverse_index(index: torch.Tensor, length: int) -> torch.Tensor:
    """(K, length): the step at which direction k visits each map position, or Lk (a zero slot) if it never does.

    A scatter without reduction: every kept slot is written once (padding all lands in a dropped extra slot).
    """
    K, Lk = index.shape
    pos = torch.where(index < 0, torch.full_like(index, length), index)
    steps = torch.arange(Lk, device=index.device).expand(K, Lk)
    inverse = torch.full((K, length + 1), Lk, dtype=index.dtype, device=index.device).scatter(1, pos, steps)
    return inverse[:, :length]


def merge_by_gather(y: torch.Tensor, index: torch.Tensor, length: int, merge: str = 'sum') -> torch.Tensor:
    """``plans.cross_merge`` as one gather through the inverse index, then a sum over directions.

    The scatter-add of cross_merge becomes ONNX ScatterND(reduction='add') with every map position written
    once per direction; onnxruntime's multi-threaded CPU kernel races on such repeated indices (measured:
    errors of 1e-4..6e-4 relative on a few images of a batch, changing run to run, none with one thread).
    A gather has no write conflicts and is deterministic.
    """
    Bt, K, C, Lk = y.shape
    flat = inverse_index(index, length) + torch.arange(K, device=index.device)[:, None] * (Lk + 1)
    seqs = F.pad(y, (0, 1)).transpose(1, 2).reshape(Bt, C, K * (Lk + 1))  # direction k's zero slot at k*(Lk+1)+Lk
    out = seqs.index_select(-1, flat.reshape(-1)).view(Bt, C, K, length)
    if merge == 'none':
        return out.transpose(1, 2)
    if merge == 'group':
        return out.transpose(1, 2).reshape(Bt, K * C, length)
    out = out.sum(2)
    return out / K if merge == 'mean' else out


def plan_scan_export(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                     delta_softplus=True, delta_weight: Optional[torch.Tensor] = None):
    """The plan scan (cross-scan gather, exportable scan, gather merge) in standard ops; any dtype, meta included."""
    if u.device.type == 'meta':
        return empty_output(u, index, length, merge)
    return scan_over_plan(selective_scan_export, u, delta, A, B, C, D, z, delta_bias, index, length, merge,
                           delta_softplus, delta_weight, merge_fn=merge_by_gather)


# also a named backend ('export', or VSSM_SCAN_BACKEND=export) so eager runs and tests can call it
def export_cost(s):
    """Blocked scan: ~5 passes over the (lanes, steps) states at the first level, 1/CHUNK of that above it; about
    2·CHUNK op calls per recursion level (the fixed-length loops)."""
    import math
    from .cost import pytorch_path_cost
    levels = max(1, math.ceil(math.log(max(2, s.steps), CHUNK)))
    return pytorch_path_cost('export', s, passes=5, chunk=s.steps, launches_per_chunk=2 * CHUNK * levels)


# priority -1: never a default; the entry point takes it while exporting (and it is a named backend, 'export' or
# VSSM_SCAN_BACKEND=export, so eager runs and tests can call it)
register_backend(ScanBackend(
    name='export', forward=plan_scan_export, differentiable=plan_scan_export, priority=-1, cost=export_cost,
    capabilities=Capabilities(devices=frozenset({'cpu', 'cuda', 'meta'}), dtypes=ALL_FLOAT_DTYPES,
                              low_rank_delta=True, exportable=True)))
