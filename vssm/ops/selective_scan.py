"""Selective scan (Mamba-1 / S6 semantics) in plain PyTorch: the reference oracle and the fast CPU path.

Sequence form, as mamba_ssm's ``selective_scan_fn``:
    u, delta  (B, G*D, L)     A  (G*D, N)     B, C  (B, G, N, L) or (B, N, L)     D, delta_bias  (G*D,)
    delta <- softplus(delta + delta_bias)     (softplus returns its input above 20)
    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t,   y_t = C_t . h_t + D * u_t,   y <- y * silu(z)
Accumulates in float32 (float64 when any input is float64) and returns u's dtype.
"""
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ['selective_scan_ref', 'selective_scan_fast', 'compute_dtype', 'cast_to', 'prepare_inputs', 'finish_output',
           'chunk_length']

# exp(-cumsum(delta * A)) must stay finite inside a chunk: float32 overflows near exp(88)
_RANGE_LIMIT = {torch.float32: 60.0, torch.float64: 600.0}
# elements of one chunk's (B, G*D, T, N) state tensor; bounds memory, keeps the python loop short
_CHUNK_ELEMENTS = 1 << 21


def compute_dtype(*tensors: Optional[torch.Tensor]) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def cast_to(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # skips the no-op cast that torch.export would otherwise record as a node (two with its metadata check)
    return t if t.dtype == dtype else t.to(dtype)


def prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus):
    """Shared by the sequence scans: cast to the compute dtype, apply bias/softplus, split channels into groups.

    Returns u, Δ (B, G, Dg, L), A (G, Dg, N), B and C (B, G, 1, L, N), and the compute dtype."""
    ct = compute_dtype(u, delta, A, B, C, D, delta_bias)
    u, delta, A = cast_to(u, ct), cast_to(delta, ct), cast_to(A, ct)
    if delta_bias is not None:
        delta = delta + cast_to(delta_bias, ct)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    Bt, channels, L = u.shape
    if B.dim() == 3:
        B = B[:, None]
    if C.dim() == 3:
        C = C[:, None]
    groups = B.shape[1]
    # (B, G, N, L) -> (B, G, 1, L, N): one group per block of channels, broadcast over them
    B = cast_to(B, ct).transpose(-1, -2)[:, :, None]
    C = cast_to(C, ct).transpose(-1, -2)[:, :, None]
    per_group = channels // groups
    u = u.view(Bt, groups, per_group, L)
    delta = delta.view(Bt, groups, per_group, L)
    A = A.view(groups, per_group, -1)
    return u, delta, A, B, C, ct


def finish_output(y, u, D, z, dtype, shape):
    """y + D·u, back to ``shape``, gated by silu(z), in ``dtype``; y, u: (B, G, Dg, L) in the compute dtype."""
    if D is not None:
        y = y + u * cast_to(D, y.dtype).view(1, *u.shape[1:3], 1)
    y = y.reshape(shape)
    if z is not None:
        y = y * F.silu(cast_to(z, y.dtype))
    return cast_to(y, dtype)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The oracle: one time step at a time, any dtype (float64 for gradcheck), any device incl. meta."""
    if u.device.type == 'meta':
        return torch.empty_like(u)
    shape, dtype = u.shape, u.dtype
    us, delta, A, B, C, _ = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    h = us.new_zeros(*us.shape[:3], A.shape[-1])
    ys = []
    for t in range(us.shape[-1]):
        dA = torch.exp(delta[..., t, None] * A)
        h = dA * h + (delta[..., t] * us[..., t])[..., None] * B[..., t, :]
        ys.append((h * C[..., t, :]).sum(-1))
    y = torch.stack(ys, dim=-1)
    return finish_output(y, us, D, z, dtype, shape)


def chunk_length(lanes: int) -> int:
    """Steps per chunk for ``lanes`` (batch, channel, state) recurrences: bounds one chunk's state tensor."""
    return max(8, min(512, _CHUNK_ELEMENTS // max(1, lanes)))


def _chunk_bounds(delta, A, L, max_chunk):
    """Chunk ends such that no channel's |cumsum(delta * A)| exceeds the exp range inside a chunk.

    r_t bounds every channel's growth at step t, so a greedy cut on cumsum(r) is safe for all of them.
    """
    limit = _RANGE_LIMIT[delta.dtype]
    r = (delta.abs().amax(dim=(0, 1, 2)) * A.abs().amax()).tolist()  # (L,) -> python floats
    bounds, start, acc = [], 0, 0.0
    for t, rt in enumerate(r):
        # `not <=`: a NaN growth bound (NaN in delta or A) cuts too, so a -inf elsewhere in A never meets the
        # closed form (-inf - -inf = NaN) but the plain recurrence (exp(-inf) = 0), as in the reference
        if t > start and (not acc + rt <= limit or t - start >= max_chunk):
            bounds.append((start, t))
            start, acc = t, 0.0
        acc += rt
    bounds.append((start, L))
    return bounds


def _scan_chunk(h, delta, x, A, B, C):
    """Closed form over one chunk: h_t = e^{S_t} (h_0 + sum_{s<=t} e^{-S_s} x_s B_s), S = cumsum(delta A).

    Layout (B, G, Dg, N, T), time last. A one-step chunk (a single step past the exp range) is the
    plain recurrence.
    """
    dA = delta[:, :, :, None, :] * A[..., None]  # (B, G, Dg, N, T)
    xB = x[:, :, :, None, :] * B  # B: (B, G, 1, N, T)
    if delta.shape[-1] == 1:
        hs = torch.exp(dA) * h[..., None] + xB
    else:
        S = dA.cumsum(-1)
        hs = torch.exp(S) * (h[..., None] + torch.cumsum(torch.exp(-S) * xB, dim=-1))
    y = (hs * C).sum(-2)
    return y, hs[..., -1]


def selective_scan_fast(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        chunk_size: Optional[int] = None):
    """Chunked closed-form scan: same values as the reference, a short python loop, differentiable."""
    if u.device.type == 'meta':
        return torch.empty_like(u)
    shape, dtype = u.shape, u.dtype
    us, delta, A, B, C, _ = prepare_inputs(u, delta, A, B, C, D, delta_bias, delta_softplus)
    Bt, G, Dg, L = us.shape
    N = A.shape[-1]
    if chunk_size is None:
        chunk_size = chunk_length(Bt * G * Dg * N)
    B = B.transpose(-1, -2)  # back to (B, G, 1, N, L): time last
    C = C.transpose(-1, -2)
    x = delta * us
    h = us.new_zeros(Bt, G, Dg, N)
    ys = []
    with torch.no_grad():
        bounds = _chunk_bounds(delta, A, L, chunk_size)
    for s, e in bounds:
        y, h = _scan_chunk(h, delta[..., s:e], x[..., s:e], A, B[..., s:e], C[..., s:e])
        ys.append(y)
    y = torch.cat(ys, dim=-1) if len(ys) > 1 else ys[0]
    return finish_output(y, us, D, z, dtype, shape)
