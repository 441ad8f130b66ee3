"""'triton' backend of the SSD scan mode: fused Triton kernels, forward and backward (cross-scan reads through the
plan's index, chunked matmul SSD with ``tl.dot``, chunk-state passing in registers, merged output).

Importing this module imports Triton and registers the backend (vssm.ops.ssd imports it lazily on CUDA, or
when the name 'triton' is asked for). It runs on CUDA tensors, and on CPU tensors under Triton's interpreter
(``TRITON_INTERPRET=1`` set before Triton is imported), which is how CPU CI tests it.

Kernel (one program per (batch element, head), looping over the plan's directions, then over chunks):
    for each direction k:  state (P x N) = 0
        for each chunk of T steps:  positions = index[k, chunk]  (-1: padding, zero input)
            x (T x P) read from the map through the positions (no cross-scan copy), Δ = softplus(dt + bias),
            a = Δ·A, cumulative sums inside the chunk;
            y  = (C Bᵀ ∘ Λ) (Δ x) + exp(cumsum a) ⊙ (C stateᵀ) + D x     (tl.dot for the three products)
            state = exp(Σ a) state + (Δ x ∘ exp(Σ a after s))ᵀ B           (tl.dot)
            out[positions, head channels] += y    (the merge: one program owns its head's channels, so the
                                                    directions add into the float32 output in a fixed order,
                                                    with a barrier between directions: no atomics)
Every exponent is a sum of a <= 0 (Λ masked to -inf above the diagonal before the exp): nothing overflows.
Results are bitwise reproducible run to run (fixed order, no atomics). Products run in IEEE float32
(``input_precision='ieee'``), not TF32.

Backward (``triton_plan_ssd_backward``, one program per (batch element, direction), looping over the heads):
per head a forward pass stores each chunk's entering state in a scratch buffer, then the adjoint runs over the
chunks in reverse, carrying the state gradient G (P x N) in registers: dX, dB, dC by tl.dot products of the
same tiles (C Bᵀ, dY (Δx)ᵀ, B Gᵀ, C H_inᵀ), the decay exponents' gradient from the masked products and the
chunk-end terms, then Δ's through softplus. Heads share B and C, so their gradients are added in head order in
the program's own rows; x's gradient is written per direction and summed over directions by torch; the
per-(batch, direction) partials of dA, dD, d(dt_bias) are summed over the batch by torch. No atomics: bitwise
reproducible. Scratch: (B*K, chunks, P, N) float32 states and (B, K, L, D) float32 per-direction dX.
The kernel's tile T (64) is its own: the result does not depend on the chunking, so ``chunk_size`` only
steers the PyTorch paths.
"""
import os

import torch
import triton
import triton.language as tl

from .backend import REDUCED_FLOAT_DTYPES, Capabilities, ScanBackend, register_backend
from .ssd import MODE, cost_of, plan_ssd_fast

__all__ = ['triton_plan_ssd', 'triton_plan_ssd_backward', 'BLOCK_T']

BLOCK_T = 64


@triton.jit
def _ssd_fwd_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, idx_ptr, out_ptr,
        R, K, Lk, P, N,
        sx_b, sx_c, sx_l,
        sdt_b, sdt_k, sdt_r, sdt_l,
        sB_b, sB_k, sB_n, sB_l,
        sC_b, sC_k, sC_n, sC_l,
        so_b, so_c, so_l,
        scale,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // R
    h = pid % R
    t = tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    pm = p < P
    nm = n < N
    ch = h * P + p
    causal = t[:, None] >= t[None, :]
    for k in range(K):
        a_h = tl.load(A_ptr + k * R + h).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + k * R + h).to(tl.float32)
        else:
            bias = 0.0
        if HAS_D:
            Dv = tl.load(D_ptr + k * R * P + ch, mask=pm, other=0.0).to(tl.float32)
        state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for c0 in range(0, Lk, BLOCK_T):
            steps = c0 + t
            tm = steps < Lk
            pos = tl.load(idx_ptr + k * Lk + steps, mask=tm, other=-1)
            valid = pos >= 0
            xm = valid[:, None] & pm[None, :]
            xt = tl.load(x_ptr + b * sx_b + ch[None, :] * sx_c + pos[:, None] * sx_l, mask=xm, other=0.0)
            xt = xt.to(tl.float32)
            dt = tl.load(dt_ptr + b * sdt_b + k * sdt_k + h * sdt_r + steps * sdt_l, mask=tm, other=0.0)
            dt = dt.to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
            dt = tl.where(tm, dt, 0.0)  # steps past the end: decay 1, no input
            a = dt * a_h
            acum = tl.cumsum(a, 0)
            bm = tm[:, None] & nm[None, :]
            Bt = tl.load(B_ptr + b * sB_b + k * sB_k + n[None, :] * sB_n + steps[:, None] * sB_l, mask=bm,
                         other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + b * sC_b + k * sC_k + n[None, :] * sC_n + steps[:, None] * sC_l, mask=bm,
                         other=0.0).to(tl.float32)
            u = xt * dt[:, None]
            CB = tl.dot(Ct, tl.trans(Bt), input_precision='ieee')
            decay = tl.exp(tl.where(causal, acum[:, None] - acum[None, :], float('-inf')))
            y = tl.dot(CB * decay, u, input_precision='ieee')
            y += tl.exp(acum)[:, None] * tl.dot(Ct, tl.trans(state), input_precision='ieee')
            if HAS_D:
                y += xt * Dv[None, :]
            total = tl.sum(a, 0)
            to_end = tl.exp(total - acum)
            state = state * tl.exp(total) + tl.dot(tl.trans(u * to_end[:, None]), Bt, input_precision='ieee')
            optr = out_ptr + b * so_b + ch[None, :] * so_c + pos[:, None] * so_l
            prev = tl.load(optr, mask=xm, other=0.0)
            tl.store(optr, prev + y * scale, mask=xm)
        tl.debug_barrier()  # the next direction reads what this one added, through other threads


@triton.jit
def _ssd_bwd_kernel(
        x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, idx_ptr, go_ptr,
        dxs_ptr, ddt_ptr, dB_ptr, dC_ptr, dA_ptr, dbias_ptr, dD_ptr, st_ptr,
        R, K, Lk, L, P, N, n_chunks,
        sx_b, sx_c, sx_l,
        sdt_b, sdt_k, sdt_r, sdt_l,
        sB_b, sB_k, sB_n, sB_l,
        sC_b, sC_k, sC_n, sC_l,
        sg_b, sg_c, sg_l,
        scale,
        HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
        BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """One program per (batch element, direction), looping over the heads: per head a forward pass that stores
    each chunk's entering state (scratch), then the adjoint pass over the chunks in reverse. Heads share B and C:
    their gradients are added in head order in this program's own rows (no atomics). Outputs (float32):
    dxs (Bt, K, L, Dm) per direction, ddt (Bt, K, R, Lk), dB / dC (Bt, K, Lk, N), per-(b, k) partials of
    dA / dbias (Bt, K, R) and dD (Bt, K, Dm)."""
    pid = tl.program_id(0)
    b = pid // K
    k = pid % K
    t = tl.arange(0, BLOCK_T)
    p = tl.arange(0, BLOCK_P)
    n = tl.arange(0, BLOCK_N)
    pm = p < P
    nm = n < N
    causal = t[:, None] >= t[None, :]
    st_base = st_ptr + pid * n_chunks * BLOCK_P * BLOCK_N
    st_off = p[:, None] * BLOCK_N + n[None, :]
    Dm = R * P
    for h in range(R):
        ch = h * P + p
        a_h = tl.load(A_ptr + k * R + h).to(tl.float32)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + k * R + h).to(tl.float32)
        else:
            bias = 0.0
        if HAS_D:
            Dv = tl.load(D_ptr + k * Dm + ch, mask=pm, other=0.0).to(tl.float32)
        # forward pass: the state entering each chunk
        state = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
        for ci in range(n_chunks):
            steps = ci * BLOCK_T + t
            tm = steps < Lk
            pos = tl.load(idx_ptr + k * Lk + steps, mask=tm, other=-1)
            xm = (pos >= 0)[:, None] & pm[None, :]
            xt = tl.load(x_ptr + b * sx_b + ch[None, :] * sx_c + pos[:, None] * sx_l, mask=xm, other=0.0)
            xt = xt.to(tl.float32)
            dt = tl.load(dt_ptr + b * sdt_b + k * sdt_k + h * sdt_r + steps * sdt_l, mask=tm, other=0.0)
            dt = dt.to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(dt > 20.0, dt, tl.log(1.0 + tl.exp(tl.minimum(dt, 20.0))))
            dt = tl.where(tm, dt, 0.0)
            a = dt * a_h
            acum = tl.cumsum(a, 0)
            bm = tm[:, None] & nm[None, :]
            Bt = tl.load(B_ptr + b * sB_b + k * sB_k + n[None, :] * sB_n + steps[:, None] * sB_l, mask=bm,
                         other=0.0).to(tl.float32)
            tl.store(st_base + ci * BLOCK_P * BLOCK_N + st_off, state)
            total = tl.sum(a, 0)
            u = xt * dt[:, None]
            state = state * tl.exp(total) + tl.dot(tl.trans(u * tl.exp(total - acum)[:, None]), Bt,
                                                   input_precision='ieee')
        tl.debug_barrier()  # the reverse pass reads the stored states through other threads
        G = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)  # gradient of the state leaving the chunk
        dA_acc = 0.0
        dbias_acc = 0.0
        dD_acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
        for cr in range(n_chunks):
            ci = n_chunks - 1 - cr
            steps = ci * BLOCK_T + t
            tm = steps < Lk
            pos = tl.load(idx_ptr + k * Lk + steps, mask=tm, other=-1)
            xm = (pos >= 0)[:, None] & pm[None, :]
            xt = tl.load(x_ptr + b * sx_b + ch[None, :] * sx_c + pos[:, None] * sx_l, mask=xm, other=0.0)
            xt = xt.to(tl.float32)
            dY = tl.load(go_ptr + b * sg_b + ch[None, :] * sg_c + pos[:, None] * sg_l, mask=xm, other=0.0)
            dY = dY.to(tl.float32) * scale
            raw = tl.load(dt_ptr + b * sdt_b + k * sdt_k + h * sdt_r + steps * sdt_l, mask=tm, other=0.0)
            raw = raw.to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(raw > 20.0, raw, tl.log(1.0 + tl.exp(tl.minimum(raw, 20.0))))
                dsoft = tl.where(raw > 20.0, 1.0, 1.0 / (1.0 + tl.exp(-raw)))
            else:
                dt = raw
                dsoft = tl.full((BLOCK_T,), 1.0, tl.float32)
            dt = tl.where(tm, dt, 0.0)
            a = dt * a_h
            acum = tl.cumsum(a, 0)
            total = tl.sum(a, 0)
            bm = tm[:, None] & nm[None, :]
            Bt = tl.load(B_ptr + b * sB_b + k * sB_k + n[None, :] * sB_n + steps[:, None] * sB_l, mask=bm,
                         other=0.0).to(tl.float32)
            Ct = tl.load(C_ptr + b * sC_b + k * sC_k + n[None, :] * sC_n + steps[:, None] * sC_l, mask=bm,
                         other=0.0).to(tl.float32)
            H_in = tl.load(st_base + ci * BLOCK_P * BLOCK_N + st_off)
            u = xt * dt[:, None]
            decay = tl.exp(tl.where(causal, acum[:, None] - acum[None, :], float('-inf')))
            to_end = tl.exp(total - acum)
            from_start = tl.exp(acum)
            CB = tl.dot(Ct, tl.trans(Bt), input_precision='ieee')  # [t, s] = C_t . B_s
            S = tl.dot(dY, tl.trans(u), input_precision='ieee')  # [t, s] = dY_t . u_s
            BG = tl.dot(Bt, tl.trans(G), input_precision='ieee')  # (T, P): G B_s
            CH = tl.dot(Ct, tl.trans(H_in), input_precision='ieee')  # (T, P): H_in C_t
            dU = tl.dot(tl.trans(CB * decay), dY, input_precision='ieee') + to_end[:, None] * BG
            dC = tl.dot(S * decay, Bt, input_precision='ieee') + from_start[:, None] * tl.dot(
                dY, H_in, input_precision='ieee')
            dB = tl.dot(tl.trans(S * decay), Ct, input_precision='ieee') + to_end[:, None] * tl.dot(
                u, G, input_precision='ieee')
            # gradient of the in-chunk cumulative decay exponents, then of each step's a (a reverse cumsum)
            W = S * CB * decay
            q = tl.sum(u * BG, 1) * to_end  # <G, to_end_s u_s B_sᵀ>
            d_acum = tl.sum(W, 1) - tl.sum(W, 0) + from_start * tl.sum(CH * dY, 1) - q
            d_total = tl.exp(total) * tl.sum(tl.sum(G * H_in, 1), 0) + tl.sum(q, 0)
            d_acum += tl.where(t == BLOCK_T - 1, d_total, 0.0)  # total = acum at the tile's last step
            da = tl.sum(d_acum, 0) - tl.cumsum(d_acum, 0) + d_acum
            G = G * tl.exp(total) + tl.dot(tl.trans(dY * from_start[:, None]), Ct, input_precision='ieee')
            dx = dU * dt[:, None]
            if HAS_D:
                dx += Dv[None, :] * dY
                dD_acc += tl.sum(dY * xt, 0)
            ddt = (tl.sum(dU * xt, 1) + da * a_h) * dsoft
            ddt = tl.where(tm, ddt, 0.0)
            dA_acc += tl.sum(da * dt, 0)
            dbias_acc += tl.sum(ddt, 0)
            tl.store(dxs_ptr + ((b * K + k) * L + pos[:, None]) * Dm + ch[None, :], dx, mask=xm)
            tl.store(ddt_ptr + ((b * K + k) * R + h) * Lk + steps, ddt, mask=tm)
            rows = ((b * K + k) * Lk + steps[:, None]) * N + n[None, :]
            if h == 0:
                tl.store(dB_ptr + rows, dB, mask=bm)
                tl.store(dC_ptr + rows, dC, mask=bm)
            else:
                tl.store(dB_ptr + rows, tl.load(dB_ptr + rows, mask=bm, other=0.0) + dB, mask=bm)
                tl.store(dC_ptr + rows, tl.load(dC_ptr + rows, mask=bm, other=0.0) + dC, mask=bm)
        tl.store(dA_ptr + (b * K + k) * R + h, dA_acc)
        tl.store(dbias_ptr + (b * K + k) * R + h, dbias_acc)
        tl.store(dD_ptr + (b * K + k) * Dm + ch, dD_acc, mask=pm)
        tl.debug_barrier()  # the next head adds into the dB / dC rows this one wrote, through other threads


def _pow2(v: int) -> int:
    return max(16, triton.next_power_of_2(v))


def triton_plan_ssd(x, dt, A, B, C, D=None, dt_bias=None, *, index, length, merge='sum', dt_softplus=True,
                    chunk_size=64):
    """Fused forward (module doc); same contract as plan_ssd_reference for map inputs and sum / mean merges."""
    if x.device.type == 'meta':
        return plan_ssd_fast(x, dt, A, B, C, D, dt_bias, index=index, length=length, merge=merge,
                             dt_softplus=dt_softplus, chunk_size=chunk_size)
    if x.dim() != 3 or merge not in ('sum', 'mean') or x.dtype == torch.float64:
        raise ValueError("the triton SSD backend takes a (B, D, L) map, merge 'sum' or 'mean', and 16/32-bit "
                         f"floats; got x {tuple(x.shape)} {x.dtype}, merge {merge!r}")
    Bt, Dm, L = x.shape
    K, Lk = index.shape
    R = dt.shape[2]
    P, N = Dm // R, B.shape[2]
    out = torch.zeros(Bt, L, Dm, device=x.device, dtype=torch.float32)  # channel-last float32 accumulator
    o = out.transpose(1, 2)
    index = index.contiguous()
    dummy = A
    _ssd_fwd_kernel[(Bt * R,)](
        x, dt, A, B, C, D if D is not None else dummy, dt_bias if dt_bias is not None else dummy, index, o,
        R, K, Lk, P, N,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *o.stride(),
        1.0 / K if merge == 'mean' else 1.0,
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_T=BLOCK_T, BLOCK_P=_pow2(P), BLOCK_N=_pow2(N),
    )
    return o if x.dtype == torch.float32 else o.to(x.dtype)


def triton_plan_ssd_backward(grad_out, x, dt, A, B, C, D=None, dt_bias=None, *, index, length, merge='sum',
                             dt_softplus=True, chunk_size=64):
    """Gradients of (x, dt, A, B, C, D, dt_bias) by the fused adjoint kernel (module doc); deterministic."""
    Bt, Dm, L = x.shape
    K, Lk = index.shape
    R = dt.shape[2]
    P, N = Dm // R, B.shape[2]
    BP, BN = _pow2(P), _pow2(N)
    n_chunks = triton.cdiv(Lk, BLOCK_T)
    f32 = dict(device=x.device, dtype=torch.float32)
    dxs = torch.zeros(Bt, K, L, Dm, **f32)
    ddt = torch.empty(Bt, K, R, Lk, **f32)
    dB = torch.empty(Bt, K, Lk, N, **f32)
    dC = torch.empty(Bt, K, Lk, N, **f32)
    dA = torch.empty(Bt, K, R, **f32)
    dbias = torch.empty(Bt, K, R, **f32)
    dD = torch.empty(Bt, K, Dm, **f32)
    states = torch.empty(Bt * K, n_chunks, BP, BN, **f32)  # each chunk's entering state, reused per head
    index = index.contiguous()
    _ssd_bwd_kernel[(Bt * K,)](
        x, dt, A, B, C, D if D is not None else A, dt_bias if dt_bias is not None else A, index, grad_out,
        dxs, ddt, dB, dC, dA, dbias, dD, states,
        R, K, Lk, L, P, N, n_chunks,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *grad_out.stride(),
        1.0 / K if merge == 'mean' else 1.0,
        HAS_D=D is not None, HAS_BIAS=dt_bias is not None, SOFTPLUS=bool(dt_softplus),
        BLOCK_T=BLOCK_T, BLOCK_P=BP, BLOCK_N=BN,
    )
    # direction and batch sums in a fixed order (torch reductions on fixed shapes: reproducible)
    gx = dxs.sum(1).transpose(1, 2)
    return [gx, ddt, dA.sum(0).flatten(), dB.transpose(-1, -2), dC.transpose(-1, -2),
            None if D is None else dD.sum(0).flatten(), None if dt_bias is None else dbias.sum(0).flatten()]


def supports_device(device) -> bool:
    device = torch.device(device)
    return device.type == 'cuda' or (device.type == 'cpu' and os.environ.get('TRITON_INTERPRET') == '1')


# CPU tensors only under the interpreter (a test tool): never a default there
register_backend(ScanBackend(
    name='triton', mode=MODE, forward=triton_plan_ssd, backward=triton_plan_ssd_backward,
    differentiable=plan_ssd_fast, available=supports_device, cost=cost_of('triton'),
    priority=30, default_devices=frozenset({'cuda'}),
    capabilities=Capabilities(devices=frozenset({'cuda', 'cpu'}), dtypes=REDUCED_FLOAT_DTYPES,
                              merges=frozenset({'sum', 'mean'}), plan_kinds=frozenset({'map'}))))
