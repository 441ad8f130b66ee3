"""'triton' backend of the SSD scan mode: one fused Triton kernel for the forward (cross-scan reads through the
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

Backward: not a fused kernel yet. Gradients come from autograd through the chunked PyTorch form
(``plan_ssd_fast``, recomputed in the op's backward), which on CUDA uses index_add for the cross-scan
gradient (atomics: not bitwise reproducible there unless torch.use_deterministic_algorithms is on).
The kernel's tile T (64) is its own: the result does not depend on the chunking, so ``chunk_size`` only
steers the PyTorch paths.
"""
import os

import torch
import triton
import triton.language as tl

from .backend import REDUCED_FLOAT_DTYPES, Capabilities, ScanBackend, register_backend
from .ssd import MODE, plan_ssd_fast

__all__ = ['triton_plan_ssd', 'BLOCK_T']

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


def supports_device(device) -> bool:
    device = torch.device(device)
    return device.type == 'cuda' or (device.type == 'cpu' and os.environ.get('TRITON_INTERPRET') == '1')


# CPU tensors only under the interpreter (a test tool): never a default there
register_backend(ScanBackend(
    name='triton', mode=MODE, forward=triton_plan_ssd, differentiable=plan_ssd_fast, available=supports_device,
    priority=30, default_devices=frozenset({'cuda'}),
    capabilities=Capabilities(devices=frozenset({'cuda', 'cpu'}), dtypes=REDUCED_FLOAT_DTYPES,
                              merges=frozenset({'sum', 'mean'}), plan_kinds=frozenset({'map'}))))
