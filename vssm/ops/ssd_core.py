"""Mamba-2 SSD (state space duality) in sequence form: the step-by-step oracle and the chunked matmul form.

Time-major layout (b batch, k directions = B/C groups, l steps, h heads, p head dim, n state):
    x   (b, k, l, h, p)     dt  (b, k, l, h)     A  (k, h), a_h <= 0     B, C  (b, k, l, n)
    D   (k, h, p) or None   dt_bias  (k, h) or None
    dt <- softplus(dt + dt_bias) (if dt_softplus)
    per head, state H (p x n):  H_t = exp(dt_t a_h) H_{t-1} + dt_t x_t B_tᵀ,   y_t = H_t C_t + D ⊙ x_t
B and C are shared by all heads of one direction (ngroups = k). Accumulates in float32 (float64 when any
input is float64) and returns x's dtype.

The chunked form (``ssd_chunked``) cuts the steps into chunks of T (the last one zero-padded: dt = 0 is decay
1 and no input) and computes, for all chunks at once:
    1. intra-chunk:  Y = (C Bᵀ ∘ Λ) (dt·x), Λ[t, s] = exp(a_{s+1} + ... + a_t) for s <= t, 0 above;
    2. chunk states: S_c = Σ_s exp(a_{s+1} + ... + a_T) (dt·x)_s B_sᵀ   (each chunk from a zero state);
    3. state passing: the state entering chunk c, Σ_{c'<c} exp(Σ_{c'<j<c} a_j^total) S_{c'}, as one more
       segment-sum matrix over chunks;
    4. output: Y += exp(a_1 + ... + a_t) C_t · (state entering the chunk).
Λ is built from segment sums (a cumulative sum of the masked, repeated a inside the chunk), never from a
difference of running sums: every exponent is a sum of a <= 0, and the entries above the diagonal are -inf
before the exp, so nothing overflows and nothing cancels, at any length. Only standard ops (matmul, cumsum,
exp, pad, masked_fill), no data-dependent control flow: the same code is the CPU path, the autograd path and
the export path.
"""

import torch
import torch.nn.functional as F

from .selective_scan import cast_to as _cast, compute_dtype

__all__ = ['ssd_reference', 'ssd_chunked', 'segment_sum', 'DEFAULT_CHUNK']

DEFAULT_CHUNK = 64


def _prepare_dt(dt, dt_bias, dt_softplus, ct):
    dt = _cast(dt, ct)
    if dt_bias is not None:
        dt = dt + _cast(dt_bias, ct)[None, :, None, :]
    return F.softplus(dt) if dt_softplus else dt


def _skip(y, x, D):
    if D is None:
        return y
    return y + x * _cast(D, y.dtype)[None, :, None]


def ssd_reference(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = True) -> torch.Tensor:
    """The oracle: one step at a time (see the module doc for shapes); any dtype, float64 for gradcheck."""
    ct = compute_dtype(x, dt, A, B, C, D, dt_bias)
    xs, A, B, C = _cast(x, ct), _cast(A, ct), _cast(B, ct), _cast(C, ct)
    dt = _prepare_dt(dt, dt_bias, dt_softplus, ct)
    b, k, l, h, p = xs.shape
    state = xs.new_zeros(b, k, h, p, B.shape[-1])
    ys = []
    for t in range(l):
        decay = torch.exp(dt[:, :, t] * A)  # (b, k, h)
        inp = (dt[:, :, t, :, None] * xs[:, :, t])[..., None] * B[:, :, t, None, None, :]  # (b, k, h, p, n)
        state = decay[..., None, None] * state + inp
        ys.append((state * C[:, :, t, None, None, :]).sum(-1))
    y = torch.stack(ys, dim=2)
    return _cast(_skip(y, xs, D), x.dtype)


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): [i, j] = a_{j+1} + ... + a_i for j <= i (0 on the diagonal), -inf above.

    A cumulative sum of the repeated, masked a: no difference of two running sums (no cancellation), and
    the -inf entries make exp() zero there without ever computing exp of a positive number.
    """
    T = a.shape[-1]
    below = torch.ones(T, T, dtype=torch.bool, device=a.device).tril(-1)
    rep = a[..., :, None].expand(*a.shape, T).masked_fill(~below, 0)  # [i, j] = a_i for i > j
    seg = rep.cumsum(dim=-2)
    return seg.masked_fill(~below.logical_or(torch.eye(T, dtype=torch.bool, device=a.device)), float('-inf'))


def ssd_chunked(x, dt, A, B, C, D=None, dt_bias=None, dt_softplus: bool = True,
                chunk_size: int = DEFAULT_CHUNK) -> torch.Tensor:
    """The chunked matmul form (module doc): same values as ``ssd_reference``, differentiable, exportable."""
    if chunk_size < 1:
        raise ValueError(f'chunk_size must be a positive int, got {chunk_size}')
    ct = compute_dtype(x, dt, A, B, C, D, dt_bias)
    xs, A, B, C = _cast(x, ct), _cast(A, ct), _cast(B, ct), _cast(C, ct)
    dt = _prepare_dt(dt, dt_bias, dt_softplus, ct)
    b, k, l, h, p = xs.shape
    n = B.shape[-1]
    T = min(chunk_size, l)
    c = -(-l // T)
    pad = c * T - l
    a = dt * A[None, :, None, :]  # (b, k, l, h), <= 0
    xdt = xs * dt[..., None]
    if pad:  # padded steps: decay exp(0) = 1, no input, outputs cropped
        a = F.pad(a, (0, 0, 0, pad))
        xdt = F.pad(xdt, (0, 0, 0, 0, 0, pad))
        B = F.pad(B, (0, 0, 0, pad))
        C = F.pad(C, (0, 0, 0, pad))
    a = a.view(b, k, c, T, h).permute(0, 1, 4, 2, 3)  # (b, k, h, c, T)
    X = xdt.view(b, k, c, T, h, p).permute(0, 1, 4, 2, 3, 5)  # (b, k, h, c, T, p)
    Bc = B.view(b, k, 1, c, T, n)  # shared by the heads of a direction
    Cc = C.view(b, k, 1, c, T, n)
    a_cum = a.cumsum(dim=-1)  # (b, k, h, c, T): exponent from the chunk start, <= 0

    # 1. intra-chunk: (C Bᵀ ∘ Λ) X; C Bᵀ once per direction, Λ per head
    CB = torch.matmul(Cc, Bc.transpose(-1, -2))  # (b, k, 1, c, T, T)
    Y = torch.matmul(CB * torch.exp(segment_sum(a)), X)  # (b, k, h, c, T, p)
    # 2. each chunk's end state from a zero state; the exponent a_cum[-1] - a_cum[s] = sum of a after s <= 0
    to_end = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.matmul((X * to_end[..., None]).transpose(-1, -2), Bc)  # (b, k, h, c, p, n)
    if c > 1:
        # 3. state entering each chunk: a segment-sum matrix over the chunks' total decays
        # totals padded with a leading 0: [i, j] of its segment sum = totals_j + ... + totals_{i-1}, the decay
        # from the end of chunk j - 1 to the start of chunk i
        totals = F.pad(a_cum[..., -1], (1, 0))  # (b, k, h, c + 1)
        passing = torch.exp(segment_sum(totals))[..., :c, 1:]  # (b, k, h, c, c), lower triangular
        entering = torch.matmul(passing, states.flatten(-2)).view(b, k, h, c, p, n)
        # 4. the entering state seen from each step: exp(a_cum[t]) C_t · state
        Y = Y + torch.matmul(Cc, entering.transpose(-1, -2)) * torch.exp(a_cum)[..., None]
    y = Y.permute(0, 1, 3, 4, 2, 5).reshape(b, k, c * T, h, p)
    if pad:
        y = y[:, :, :l]
    return _cast(_skip(y, xs, D), x.dtype)
