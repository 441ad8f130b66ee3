"""Triton kernels of the fused plan scan (imported only by vssm.ops.triton_scan).

Naming: b batch element, k direction, d channel (a block of BD per program), n state, t step of a
direction, p map position. One "chunk" is at most BT consecutive steps of one direction (see
_triton_schedule.py); inside a chunk the recurrence h_t = a_t h_{t-1} + b_t runs as a parallel
associative scan over t, one state n at a time (keeps the live tiles at [BD, BT]).

Kernels:
  chunk_state_kernel   local scan of every chunk from a zero state: end state and sum of dt
  carry_kernel         walks each direction's chunks: s_c = x; x = exp(A * sdt_c) * x + inc_c
                       (forward states in step order; adjoint states in reverse order)
  forward_kernel       one program per (tile, batch, channel block): scans the tile's chunks,
                       adds their outputs into the fp32 accumulator at their map positions (it owns
                       them: no atomics), then gates / scales and writes the output
  adjoint_state_kernel local reverse (adjoint) scan of every chunk from a zero carry
  backward_kernel      one program per tile: recomputes states and adjoints per chunk and writes all
                       gradients; map-position gradients (u, z) are accumulated like the forward output
Every program that re-reads global memory it wrote (the accumulators) does so after a barrier.
"""
import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    # composition of two affine steps x -> a x + b (first (a1, b1), then (a2, b2))
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # mamba's rule: identity above 20; exp(x) is exact enough below -15 (log(1 + tiny) rounds to 0)
    return tl.where(x > 20.0, x, tl.where(x < -15.0, tl.exp(x), tl.log(1.0 + tl.exp(x))))


@triton.jit
def _load_steps(u_ptr, delta_ptr, bias_ptr, index_ptr, b, k, d, dm, t, tm, Dm, Lk,
                su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l,
                SEQ_U: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Map positions, validity, input x [BD, BT] (read through the index map) and dt of a chunk."""
    pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
    valid = tm & (pos >= 0)
    m2 = dm[:, None] & tm[None, :]
    if SEQ_U:
        x = tl.load(u_ptr + b * su_b + k * su_k + d[:, None] * su_d + t[None, :] * su_l, mask=m2, other=0.0)
    else:
        x = tl.load(u_ptr + b * su_b + d[:, None] * su_d + pos[None, :] * su_l,
                    mask=dm[:, None] & valid[None, :], other=0.0)
    x = x.to(tl.float32)
    raw = tl.load(delta_ptr + b * sd_b + k * sd_k + d[:, None] * sd_d + t[None, :] * sd_l, mask=m2,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + k * Dm + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    dt = tl.where(m2, dt, 0.0)  # masked steps: a = 1, b = 0 (state passes unchanged)
    return pos, valid, x, raw, dt


@triton.jit
def _load_state(ptr, b, c, n_chunks, Dm, d, dm, ncol, N: tl.constexpr):
    """[BD, NP] fp32 state of chunk c from a (Bt, n_chunks, Dm, N) buffer."""
    off = ((b * n_chunks + c) * Dm + d[:, None]) * N + ncol[None, :]
    return tl.load(ptr + off, mask=dm[:, None] & (ncol < N)[None, :], other=0.0)


@triton.jit
def _store_state(ptr, val, b, c, n_chunks, Dm, d, dm, ncol, N: tl.constexpr):
    off = ((b * n_chunks + c) * Dm + d[:, None]) * N + ncol[None, :]
    tl.store(ptr + off, val, mask=dm[:, None] & (ncol < N)[None, :])


@triton.jit
def chunk_state_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, bias_ptr, index_ptr, chunk_k_ptr, chunk_s_ptr, chunk_e_ptr,
    hloc_ptr, sdt_ptr,
    Dm, Lk, n_chunks,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l, sA_r, sA_n, sB_b, sB_k, sB_n, sB_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    SEQ_U: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    pd = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    k = tl.load(chunk_k_ptr + c)
    s = tl.load(chunk_s_ptr + c)
    e = tl.load(chunk_e_ptr + c)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    t = s + tl.arange(0, BT)
    tm = t < e
    last = (t == e - 1)[None, :]
    ncol = tl.arange(0, NP)
    pos, valid, x, raw, dt = _load_steps(u_ptr, delta_ptr, bias_ptr, index_ptr, b, k, d, dm, t, tm, Dm, Lk,
                                         su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l, SEQ_U, HAS_BIAS, SOFTPLUS)
    dtx = dt * x
    hl = tl.zeros([BD, NP], dtype=tl.float32)
    for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
        col = ncol[None, :] == n  # state n's column of [BD, NP] tiles
        A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
        B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
        a = tl.exp(dt * A_n[:, None])
        _, h = tl.associative_scan((a, dtx * B_n[None, :]), 1, _combine)
        hl = tl.where(col, tl.sum(tl.where(last, h, 0.0), 1)[:, None], hl)
    _store_state(hloc_ptr, hl, b, c, n_chunks, Dm, d, dm, ncol, N)
    tl.store(sdt_ptr + (b * n_chunks + c) * Dm + d, tl.sum(dt, 1), mask=dm)


@triton.jit
def carry_kernel(
    A_ptr, sdt_ptr, inc_ptr, state_ptr, dir_ptr,
    Dm, K, n_chunks, sA_r, sA_n,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, REVERSE: tl.constexpr,
):
    """state_c = x; x = exp(A * sdt_c) * x + inc_c over one direction's chunks (sequential, tiny)."""
    pd = tl.program_id(0)
    bk = tl.program_id(1)
    b = (bk // K).to(tl.int64)
    k = bk % K
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    A = tl.load(A_ptr + (k * Dm + d[:, None]) * sA_r + ncol[None, :] * sA_n,
                mask=dm[:, None] & (ncol < N)[None, :], other=0.0).to(tl.float32)
    lo = tl.load(dir_ptr + k)
    hi = tl.load(dir_ptr + k + 1)
    x = tl.zeros([BD, NP], dtype=tl.float32)
    for j in range(0, hi - lo):
        if REVERSE:
            c = hi - 1 - j
        else:
            c = lo + j
        _store_state(state_ptr, x, b, c, n_chunks, Dm, d, dm, ncol, N)
        sdt = tl.load(sdt_ptr + (b * n_chunks + c) * Dm + d, mask=dm, other=0.0)
        inc = _load_state(inc_ptr, b, c, n_chunks, Dm, d, dm, ncol, N)
        x = tl.exp(A * sdt[:, None]) * x + inc


@triton.jit
def forward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, index_ptr,
    chunk_k_ptr, chunk_s_ptr, chunk_e_ptr, tile_start_ptr, tile_ptr, tile_chunks_ptr,
    hstart_ptr, acc_ptr, out_ptr,
    Dm, Lk, L, n_chunks, KACC, scale,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l, sA_r, sA_n, sB_b, sB_k, sB_n, sB_l,
    sC_b, sC_k, sC_n, sC_l, sz_b, sz_d, sz_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
    SEQ_U: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, PER_DIR: tl.constexpr, LOAD_STATES: tl.constexpr,
):
    pd = tl.program_id(0)
    tile = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    p0 = tl.load(tile_start_ptr + tile)
    p1 = tl.load(tile_start_ptr + tile + 1)
    # the accumulator (Bt, KACC, Dm, L) fp32: this program's tile starts at zero
    for kk in range(0, KACC):
        for q in range(p0, p1, BP):
            pp = q + tl.arange(0, BP)
            tl.store(acc_ptr + ((b * KACC + kk) * Dm + d[:, None]) * L + pp[None, :],
                     tl.zeros([BD, BP], dtype=tl.float32), mask=dm[:, None] & (pp < p1)[None, :])
    tl.debug_barrier()

    hcar = tl.zeros([BD, NP], dtype=tl.float32)
    prev_k = tl.load(chunk_k_ptr) * 0 - 1
    prev_e = prev_k
    for i in range(tl.load(tile_ptr + tile), tl.load(tile_ptr + tile + 1)):
        c = tl.load(tile_chunks_ptr + i)
        k = tl.load(chunk_k_ptr + c)
        s = tl.load(chunk_s_ptr + c)
        e = tl.load(chunk_e_ptr + c)
        if LOAD_STATES:
            h0 = _load_state(hstart_ptr, b, c, n_chunks, Dm, d, dm, ncol, N)
        else:  # one tile: chunks of a direction come in step order; carry the state across them
            h0 = tl.where((k == prev_k) & (s == prev_e), hcar, 0.0)
        t = s + tl.arange(0, BT)
        tm = t < e
        last = (t == e - 1)[None, :]
        pos, valid, x, raw, dt = _load_steps(u_ptr, delta_ptr, bias_ptr, index_ptr, b, k, d, dm, t, tm, Dm, Lk,
                                             su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l,
                                             SEQ_U, HAS_BIAS, SOFTPLUS)
        dtx = dt * x
        if HAS_D:
            y = tl.load(D_ptr + k * Dm + d, mask=dm, other=0.0).to(tl.float32)[:, None] * x
        else:
            y = tl.zeros([BD, BT], dtype=tl.float32)
        for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
            col = ncol[None, :] == n
            A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
            a = tl.exp(dt * A_n[:, None])
            acum, hs = tl.associative_scan((a, dtx * B_n[None, :]), 1, _combine)
            h = acum * tl.sum(tl.where(col, h0, 0.0), 1)[:, None] + hs
            y += h * C_n[None, :]
            hcar = tl.where(col, tl.sum(tl.where(last, h, 0.0), 1)[:, None], hcar)
        if PER_DIR:
            slab = k
        else:
            slab = k * 0
        aptr = acc_ptr + ((b * KACC + slab) * Dm + d[:, None]) * L + pos[None, :]
        am = dm[:, None] & valid[None, :]
        tl.store(aptr, tl.load(aptr, mask=am, other=0.0) + y, mask=am)
        tl.debug_barrier()
        prev_k = k
        prev_e = e

    # gate, scale and write the tile (acc may alias out when out is fp32: same element, same thread)
    for kk in range(0, KACC):
        for q in range(p0, p1, BP):
            pp = q + tl.arange(0, BP)
            m = dm[:, None] & (pp < p1)[None, :]
            off = ((b * KACC + kk) * Dm + d[:, None]) * L + pp[None, :]
            v = tl.load(acc_ptr + off, mask=m, other=0.0) * scale
            if HAS_Z:
                zz = tl.load(z_ptr + b * sz_b + d[:, None] * sz_d + pp[None, :] * sz_l, mask=m,
                             other=0.0).to(tl.float32)
                v = v * zz * tl.sigmoid(zz)
            tl.store(out_ptr + off, v.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _load_grad_steps(delta_ptr, bias_ptr, z_ptr, gout_ptr, b, k, d, dm, t, e, pos, valid, Dm, L, KACC, scale,
                     sd_b, sd_k, sd_d, sd_l, sz_b, sz_d, sz_l,
                     HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, PER_DIR: tl.constexpr):
    """dt of the next step (0 past the chunk) and the output gradient at each step before / after the gate."""
    tn = t + 1
    nm = dm[:, None] & (tn < e)[None, :]
    raw_n = tl.load(delta_ptr + b * sd_b + k * sd_k + d[:, None] * sd_d + tn[None, :] * sd_l, mask=nm,
                    other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw_n += tl.load(bias_ptr + k * Dm + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt_next = _softplus(raw_n)
    else:
        dt_next = raw_n
    dt_next = tl.where(nm, dt_next, 0.0)
    if PER_DIR:
        slab = k
    else:
        slab = k * 0
    vm = dm[:, None] & valid[None, :]
    gy_merge = tl.load(gout_ptr + ((b * KACC + slab) * Dm + d[:, None]) * L + pos[None, :], mask=vm,
                       other=0.0).to(tl.float32) * scale
    if HAS_Z:
        zz = tl.load(z_ptr + b * sz_b + d[:, None] * sz_d + pos[None, :] * sz_l, mask=vm, other=0.0).to(tl.float32)
        gy = gy_merge * zz * tl.sigmoid(zz)
    else:
        gy = gy_merge
    return dt_next, nm, gy_merge, gy


@triton.jit
def adjoint_state_kernel(
    delta_ptr, A_ptr, C_ptr, bias_ptr, z_ptr, gout_ptr, index_ptr, chunk_k_ptr, chunk_s_ptr, chunk_e_ptr,
    q_ptr,
    Dm, Lk, L, n_chunks, KACC, scale,
    sd_b, sd_k, sd_d, sd_l, sA_r, sA_n, sC_b, sC_k, sC_n, sC_l, sz_b, sz_d, sz_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr, PER_DIR: tl.constexpr,
):
    """q_c = a_{first} * adjoint at the chunk's first step, from a zero carry past its end."""
    pd = tl.program_id(0)
    c = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    k = tl.load(chunk_k_ptr + c)
    s = tl.load(chunk_s_ptr + c)
    e = tl.load(chunk_e_ptr + c)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    t = s + tl.arange(0, BT)
    tm = t < e
    first = (t == s)[None, :]
    ncol = tl.arange(0, NP)
    pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
    valid = tm & (pos >= 0)
    m2 = dm[:, None] & tm[None, :]
    raw = tl.load(delta_ptr + b * sd_b + k * sd_k + d[:, None] * sd_d + t[None, :] * sd_l, mask=m2,
                  other=0.0).to(tl.float32)
    if HAS_BIAS:
        raw += tl.load(bias_ptr + k * Dm + d, mask=dm, other=0.0).to(tl.float32)[:, None]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    dt = tl.where(m2, dt, 0.0)
    dt_next, nm, gy_merge, gy = _load_grad_steps(delta_ptr, bias_ptr, z_ptr, gout_ptr, b, k, d, dm, t, e, pos, valid,
                                                 Dm, L, KACC, scale, sd_b, sd_k, sd_d, sd_l, sz_b, sz_d, sz_l,
                                                 HAS_BIAS, SOFTPLUS, HAS_Z, PER_DIR)
    q = tl.zeros([BD, NP], dtype=tl.float32)
    for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
        col = ncol[None, :] == n  # state n's column of [BD, NP] tiles
        A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
        a_next = tl.where(nm, tl.exp(dt_next * A_n[:, None]), 0.0)
        _, dh = tl.associative_scan((a_next, gy * C_n[None, :]), 1, _combine, reverse=True)
        a = tl.exp(dt * A_n[:, None])
        q = tl.where(col, tl.sum(tl.where(first, a * dh, 0.0), 1)[:, None], q)
    _store_state(q_ptr, q, b, c, n_chunks, Dm, d, dm, ncol, N)


@triton.jit
def backward_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, z_ptr, index_ptr, gout_ptr,
    chunk_k_ptr, chunk_s_ptr, chunk_e_ptr, tile_start_ptr, tile_ptr, tile_chunks_ptr,
    hstart_ptr, lam_ptr,
    du_ptr, du_acc_ptr, ddelta_ptr, dB_ptr, dC_ptr, dA_ptr, dD_ptr, dbias_ptr, w_acc_ptr, dz_ptr,
    Dm, Lk, L, n_chunks, n_tiles, K, KACC, scale,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l, sA_r, sA_n, sB_b, sB_k, sB_n, sB_l,
    sC_b, sC_k, sC_n, sC_l, sz_b, sz_d, sz_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr, BP: tl.constexpr,
    SEQ_U: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, PER_DIR: tl.constexpr, LOAD_ADJOINT: tl.constexpr,
):
    """Gradients of one tile. Outputs:
    du (map: via du_acc fp32 (Bt, Dm, L); sequences: direct (Bt, K, Dm, Lk)), ddelta (Bt, K, Dm, Lk),
    dB / dC partials (Bt, n_dblocks, K, N, Lk) fp32 summed over channel blocks by the host,
    dA (Bt, n_tiles, K, Dm, N), dD / dbias (Bt, n_tiles, K, Dm) fp32 partials (zero-initialised, this
    program owns its [b, tile, :, d-block] slices), dz via w_acc = sum_k gout_k * y_k (Bt, Dm, L).
    """
    pd = tl.program_id(0)
    tile = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    n_dblocks = tl.num_programs(0)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    p0 = tl.load(tile_start_ptr + tile)
    p1 = tl.load(tile_start_ptr + tile + 1)
    for q in range(p0, p1, BP):
        pp = q + tl.arange(0, BP)
        off = (b * Dm + d[:, None]) * L + pp[None, :]
        m = dm[:, None] & (pp < p1)[None, :]
        if not SEQ_U:
            tl.store(du_acc_ptr + off, tl.zeros([BD, BP], dtype=tl.float32), mask=m)
        if HAS_Z:
            tl.store(w_acc_ptr + off, tl.zeros([BD, BP], dtype=tl.float32), mask=m)
    tl.debug_barrier()

    lamcar = tl.zeros([BD, NP], dtype=tl.float32)
    prev_k = tl.load(chunk_k_ptr) * 0 - 1
    prev_s = prev_k
    for i in range(tl.load(tile_ptr + tile), tl.load(tile_ptr + tile + 1)):
        c = tl.load(tile_chunks_ptr + i)
        k = tl.load(chunk_k_ptr + c)
        s = tl.load(chunk_s_ptr + c)
        e = tl.load(chunk_e_ptr + c)
        h0 = _load_state(hstart_ptr, b, c, n_chunks, Dm, d, dm, ncol, N)
        if LOAD_ADJOINT:
            lam = _load_state(lam_ptr, b, c, n_chunks, Dm, d, dm, ncol, N)
        else:  # one tile: chunks of a direction come in reverse step order; carry the adjoint
            lam = tl.where((k == prev_k) & (e == prev_s), lamcar, 0.0)
        t = s + tl.arange(0, BT)
        tm = t < e
        last = (t == e - 1)[None, :]
        first = (t == s)[None, :]
        m2 = dm[:, None] & tm[None, :]
        pos, valid, x, raw, dt = _load_steps(u_ptr, delta_ptr, bias_ptr, index_ptr, b, k, d, dm, t, tm, Dm, Lk,
                                             su_b, su_k, su_d, su_l, sd_b, sd_k, sd_d, sd_l,
                                             SEQ_U, HAS_BIAS, SOFTPLUS)
        dt_next, nm, gy_merge, gy = _load_grad_steps(delta_ptr, bias_ptr, z_ptr, gout_ptr, b, k, d, dm, t, e, pos,
                                                     valid, Dm, L, KACC, scale, sd_b, sd_k, sd_d, sd_l,
                                                     sz_b, sz_d, sz_l, HAS_BIAS, SOFTPLUS, HAS_Z, PER_DIR)
        dtx = dt * x
        if HAS_D:
            Dv = tl.load(D_ptr + k * Dm + d, mask=dm, other=0.0).to(tl.float32)
            y = Dv[:, None] * x
            dx = Dv[:, None] * gy
        else:
            y = tl.zeros([BD, BT], dtype=tl.float32)
            dx = tl.zeros([BD, BT], dtype=tl.float32)
        ddt = tl.zeros([BD, BT], dtype=tl.float32)
        dA = tl.zeros([BD, NP], dtype=tl.float32)
        for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
            col = ncol[None, :] == n
            A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
            a = tl.exp(dt * A_n[:, None])
            bx = dtx * B_n[None, :]
            acum, hs = tl.associative_scan((a, bx), 1, _combine)
            h = acum * tl.sum(tl.where(col, h0, 0.0), 1)[:, None] + hs
            y += h * C_n[None, :]
            # adjoint: dh_t = gy_t C_t + a_{t+1} dh_{t+1}; the carry from later chunks enters at the last step
            a_next = tl.where(nm, tl.exp(dt_next * A_n[:, None]), 0.0)
            inj = gy * C_n[None, :] + tl.where(last, tl.sum(tl.where(col, lam, 0.0), 1)[:, None], 0.0)
            _, dh = tl.associative_scan((a_next, inj), 1, _combine, reverse=True)
            ah = h - bx  # a_t * h_{t-1}
            dx += dh * dt * B_n[None, :]
            ddt += dh * (B_n[None, :] * x + A_n[:, None] * ah)
            dA = tl.where(col, tl.sum(dh * dt * ah, 1)[:, None], dA)
            tl.store(dB_ptr + (((b * n_dblocks + pd) * K + k) * N + n) * Lk + t, tl.sum(dh * dtx, 0), mask=tm)
            tl.store(dC_ptr + (((b * n_dblocks + pd) * K + k) * N + n) * Lk + t, tl.sum(gy * h, 0), mask=tm)
            lamcar = tl.where(col, tl.sum(tl.where(first, a * dh, 0.0), 1)[:, None], lamcar)
        if SOFTPLUS:
            ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
        ddt = tl.where(m2, ddt, 0.0)
        tl.store(ddelta_ptr + ((b * K + k) * Dm + d[:, None]) * Lk + t[None, :],
                 ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        # per-(tile, direction) partial sums, owned by this program
        pk = ((b * n_tiles + tile) * K + k) * Dm + d
        if HAS_BIAS:
            tl.store(dbias_ptr + pk, tl.load(dbias_ptr + pk, mask=dm, other=0.0) + tl.sum(ddt, 1), mask=dm)
        if HAS_D:
            tl.store(dD_ptr + pk, tl.load(dD_ptr + pk, mask=dm, other=0.0) + tl.sum(gy * x, 1), mask=dm)
        pa = pk[:, None] * N + ncol[None, :]
        am = dm[:, None] & (ncol < N)[None, :]
        tl.store(dA_ptr + pa, tl.load(dA_ptr + pa, mask=am, other=0.0) + dA, mask=am)
        vm = dm[:, None] & valid[None, :]
        if SEQ_U:
            tl.store(du_ptr + ((b * K + k) * Dm + d[:, None]) * Lk + t[None, :], dx.to(du_ptr.dtype.element_ty),
                     mask=m2)
        else:
            gptr = du_acc_ptr + (b * Dm + d[:, None]) * L + pos[None, :]
            tl.store(gptr, tl.load(gptr, mask=vm, other=0.0) + dx, mask=vm)
        if HAS_Z:
            wptr = w_acc_ptr + (b * Dm + d[:, None]) * L + pos[None, :]
            tl.store(wptr, tl.load(wptr, mask=vm, other=0.0) + gy_merge * y, mask=vm)
        tl.debug_barrier()
        prev_k = k
        prev_s = s

    for q in range(p0, p1, BP):
        pp = q + tl.arange(0, BP)
        off = (b * Dm + d[:, None]) * L + pp[None, :]
        m = dm[:, None] & (pp < p1)[None, :]
        if not SEQ_U:
            tl.store(du_ptr + off, tl.load(du_acc_ptr + off, mask=m, other=0.0).to(du_ptr.dtype.element_ty), mask=m)
        if HAS_Z:
            zz = tl.load(z_ptr + b * sz_b + d[:, None] * sz_d + pp[None, :] * sz_l, mask=m, other=0.0).to(tl.float32)
            sg = tl.sigmoid(zz)
            dz = tl.load(w_acc_ptr + off, mask=m, other=0.0) * sg * (1.0 + zz * (1.0 - sg))
            tl.store(dz_ptr + off, dz.to(dz_ptr.dtype.element_ty), mask=m)
