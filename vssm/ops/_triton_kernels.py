"""Triton kernels of the fused plan scan (imported only by vssm.ops.triton_scan).

Naming: b batch element, k direction, d channel (a tile of BD), n state, r rank of the low-rank Δ, t step of
a direction, pos its map position (-1: padding; the state still advances, nothing is read or written there).
A *chunk* is BT consecutive steps of one direction, scanned as one parallel associative scan over t, one
state n at a time (a runtime loop: live tiles stay [BD, BT]). A *link* is a run of chunks whose end state
the carry pass chains: a forward segment, or one chunk in the backward.

Δ: with LOW_RANK, raw Δ = W[k] (BD x R) @ dts (R x BT) is formed per chunk in registers from the rank-R
factor (R outer products, float32); otherwise it is read. Then + bias, then softplus.

State buffers are (B, K * n_links, N, Dm) float32 (channels contiguous); sums of Δ (B, K * n_links, Dm).

Map targets (output, du, the dz accumulator) are written per launch in one of four modes (see
_triton_schedule.py): DIRECT 0, STORE 1, ADD 2, FINAL 3; the running float32 sum lives in the float32
target itself (ACC 1), in the 16-bit target plus a 16-bit scratch holding the two halves of its bits
(ACC 2, exact float32), or in a float32 scratch (ACC 3).

Kernels (1D grids; program ids decoded channel block fastest):
  segment_state_kernel  local scan of each link from a zero state: end state and sum of Δ
  carry_kernel          chains the links of each direction (in place, a blocked associative scan over links):
                        end_c = exp(A * sdt_c) * end_{c-1} + local_c; REVERSE for the adjoint
  forward_kernel        one run of directions: walks each segment's chunks from its carried state, writes y
  adjoint_state_kernel  local reverse (adjoint) scan of each chunk from a zero carry
  sequence_grad_kernel  per (chunk, batch): loops over channel blocks, writes du / dz / dΔ and dB, dC, d(dts)
                        summed over every channel in registers (no per-channel-block partials)
  param_grad_kernel     per (direction, channel block, work group): dA, dD, dΔ-bias, d(delta_weight) summed over
                        the group's (batch, chunk) items in registers; one partial per work group
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
def _col(tile, col):
    """Column n of a [BD, NP] tile as a [BD] vector (col: the [1, NP] mask of column n)."""
    return tl.sum(tl.where(col, tile, 0.0), 1)


@triton.jit
def _load_state(ptr, row, N, Dm, d, dm, ncol):
    """[BD, NP] float32 state of link ``row`` (= b * links + link) of a (B, links, N, Dm) buffer."""
    off = (row * N + ncol[None, :]) * Dm + d[:, None]
    return tl.load(ptr + off, mask=dm[:, None] & (ncol < N)[None, :], other=0.0)


@triton.jit
def _store_state(ptr, val, row, N, Dm, d, dm, ncol):
    off = (row * N + ncol[None, :]) * Dm + d[:, None]
    tl.store(ptr + off, val, mask=dm[:, None] & (ncol < N)[None, :])


@triton.jit
def _channel_vector(ptr, k, Dm, d, dm, PRESENT: tl.constexpr, BD: tl.constexpr):
    # a per-(direction, channel) parameter (Δ bias, D) for this block's channels; zeros when the op has none
    if PRESENT:
        v = tl.load(ptr + k * Dm + d, mask=dm, other=0.0).to(tl.float32)
    else:
        v = tl.zeros([BD], dtype=tl.float32)
    return v


@triton.jit
def _load_x(u_ptr, b, k, d, dm, t, tm, pos, valid, su_b, su_k, su_d, su_l, SEQ_U: tl.constexpr):
    """Input x [BD, BT]: read through the index map (map u), or per step (sequence-form u)."""
    if SEQ_U:
        x = tl.load(u_ptr + b * su_b + k * su_k + d[:, None] * su_d + t[None, :] * su_l,
                    mask=dm[:, None] & tm[None, :], other=0.0)
    else:
        x = tl.load(u_ptr + b * su_b + k * su_k + d[:, None] * su_d + pos[None, :] * su_l,
                    mask=dm[:, None] & valid[None, :], other=0.0)
    return x.to(tl.float32)


@triton.jit
def _load_raw(delta_ptr, W_ptr, b, k, d, dm, t, tm, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R,
              BD: tl.constexpr, BT: tl.constexpr, LOW_RANK: tl.constexpr):
    """Pre-bias Δ [BD, BT]: sum_r W[k, :, r] (x) dts[r, t] in registers (low rank), or read. A runtime loop of
    outer products: only [BD, BT] stays live (tl.dot's operand tiles cost ~100 registers on sm_90)."""
    if LOW_RANK:
        raw = tl.zeros([BD, BT], dtype=tl.float32)
        for r in range(R):
            w = tl.load(W_ptr + k * sw_k + d * sw_d + r * sw_r, mask=dm, other=0.0).to(tl.float32)
            v = tl.load(delta_ptr + b * sd_b + k * sd_k + r * sd_c + t * sd_l, mask=tm, other=0.0).to(tl.float32)
            raw += w[:, None] * v[None, :]
    else:
        raw = tl.load(delta_ptr + b * sd_b + k * sd_k + d[:, None] * sd_c + t[None, :] * sd_l,
                      mask=dm[:, None] & tm[None, :], other=0.0).to(tl.float32)
    return raw


@triton.jit
def _dt(raw, bias, m2, SOFTPLUS: tl.constexpr):
    raw = raw + bias[:, None]
    if SOFTPLUS:
        dt = _softplus(raw)
    else:
        dt = raw
    return raw, tl.where(m2, dt, 0.0)  # masked steps: a = 1, b = 0 (the state passes unchanged)


@triton.jit
def _load_gy(g_ptr, z_ptr, b, k, d, dm, pos, valid, scale, sg_b, sg_k, sg_d, sg_l, sz_b, sz_k, sz_d, sz_l,
             HAS_Z: tl.constexpr):
    """Output gradient at each step before the gate (times the merge scale) and after it."""
    vm = dm[:, None] & valid[None, :]
    gsel = tl.load(g_ptr + b * sg_b + k * sg_k + d[:, None] * sg_d + pos[None, :] * sg_l, mask=vm,
                   other=0.0).to(tl.float32) * scale
    if HAS_Z:
        zz = tl.load(z_ptr + b * sz_b + k * sz_k + d[:, None] * sz_d + pos[None, :] * sz_l, mask=vm,
                     other=0.0).to(tl.float32)
        gy = gsel * zz * tl.sigmoid(zz)
    else:
        gy = gsel
    return gsel, gy


@triton.jit
def _acc_load(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, mask, ACC: tl.constexpr):
    if ACC == 1:  # the float32 target
        v = tl.load(tgt_ptr + off_t, mask=mask, other=0.0)
    elif ACC == 2:  # high half in the 16-bit target, low half in the scratch: the exact float32 sum
        hi = tl.load(hi_ptr + off_t, mask=mask, other=0).to(tl.int32) & 0xFFFF
        lo = tl.load(acc_ptr + off_a, mask=mask, other=0).to(tl.int32) & 0xFFFF
        v = ((hi << 16) | lo).to(tl.float32, bitcast=True)
    else:  # float32 scratch
        v = tl.load(acc_ptr + off_a, mask=mask, other=0.0)
    return v


@triton.jit
def _acc_store(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, v, mask, ACC: tl.constexpr):
    if ACC == 1:
        tl.store(tgt_ptr + off_t, v, mask=mask)
    elif ACC == 2:
        bits = v.to(tl.int32, bitcast=True)
        tl.store(hi_ptr + off_t, (bits >> 16).to(tl.int16), mask=mask)
        tl.store(acc_ptr + off_a, (bits & 0xFFFF).to(tl.int16), mask=mask)
    else:
        tl.store(acc_ptr + off_a, v, mask=mask)


@triton.jit
def _write_map(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, v, fin, mask, MODE: tl.constexpr, ACC: tl.constexpr):
    """Write one direction's contribution v to a map target; ``fin`` finishes the sum (scale, gate)."""
    if MODE == 0:  # DIRECT
        tl.store(tgt_ptr + off_t, (v * fin).to(tgt_ptr.dtype.element_ty), mask=mask)
    elif MODE == 1:  # STORE
        _acc_store(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, v, mask, ACC)
    elif MODE == 2:  # ADD
        _acc_store(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, v + _acc_load(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, mask,
                                                                          ACC), mask, ACC)
    else:  # FINAL (the same thread reads and writes each element, so the target may hold the accumulator)
        v = v + _acc_load(tgt_ptr, hi_ptr, acc_ptr, off_t, off_a, mask, ACC)
        tl.store(tgt_ptr + off_t, (v * fin).to(tgt_ptr.dtype.element_ty), mask=mask)


@triton.jit
def segment_state_kernel(
    u_ptr, delta_ptr, W_ptr, bias_ptr, A_ptr, B_ptr, index_ptr, hloc_ptr, sdt_ptr,
    nd, K, n_links, Dm, Lk, S, R,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, sA_r, sA_n, sB_b, sB_k, sB_n, sB_l,
    N: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    SEQ_U: tl.constexpr, LOW_RANK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
):
    """Link j of direction k covers steps [j S, (j + 1) S): its end state from zero and its sum of Δ."""
    pid = tl.program_id(0)
    pd = pid % nd
    rest = pid // nd
    j = rest % n_links
    rest = rest // n_links
    k = rest % K
    b = (rest // K).to(tl.int64)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    last = (tl.arange(0, BT) == BT - 1)[None, :]  # masked steps are identities: the last lane holds the end
    bias = _channel_vector(bias_ptr, k, Dm, d, dm, HAS_BIAS, BD)
    h = tl.zeros([BD, NP], dtype=tl.float32)
    sdt = tl.zeros([BD], dtype=tl.float32)
    s0 = j * S
    s1 = tl.minimum(s0 + S, Lk)
    for c0 in range(s0, s1, BT):
        t = c0 + tl.arange(0, BT)
        tm = t < s1
        pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
        valid = tm & (pos >= 0)
        x = _load_x(u_ptr, b, k, d, dm, t, tm, pos, valid, su_b, su_k, su_d, su_l, SEQ_U)
        raw = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t, tm, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R, BD, BT,
                    LOW_RANK)
        raw, dt = _dt(raw, bias, dm[:, None] & tm[None, :], SOFTPLUS)
        sdt += tl.sum(dt, 1)
        dtx = dt * x
        for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
            col = ncol[None, :] == n
            A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
            acum, hs = tl.associative_scan((tl.exp(dt * A_n[:, None]), dtx * B_n[None, :]), 1, _combine)
            hn = acum * _col(h, col)[:, None] + hs
            h = tl.where(col, tl.sum(tl.where(last, hn, 0.0), 1)[:, None], h)
    row = b * (K * n_links) + k * n_links + j
    _store_state(hloc_ptr, h, row, N, Dm, d, dm, ncol)
    tl.store(sdt_ptr + row * Dm + d, sdt, mask=dm)


@triton.jit
def carry_kernel(
    A_ptr, sdt_ptr, state_ptr, nd, K, n_links, Dm, sA_r, sA_n,
    N: tl.constexpr, BD: tl.constexpr, CB: tl.constexpr, REVERSE: tl.constexpr,
):
    """In place over one direction's links: state_c <- exp(A * sdt_c) * state_{c-1} + state_c (forward
    order; with REVERSE from the last link down). A parallel scan over CB links at a time."""
    pid = tl.program_id(0)
    pd = pid % nd
    rest = pid // nd
    k = rest % K
    b = (rest // K).to(tl.int64)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    base = b * (K * n_links) + k * n_links
    lastc = (tl.arange(0, CB) == CB - 1)[None, :]
    for n in range(N):
        A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
        x = tl.zeros([BD], dtype=tl.float32)
        for j0 in range(0, n_links, CB):
            jj = j0 + tl.arange(0, CB)
            jm = jj < n_links
            if REVERSE:
                c = n_links - 1 - jj
            else:
                c = jj
            m = dm[:, None] & jm[None, :]
            rows = base + c[None, :]
            sd = tl.load(sdt_ptr + rows * Dm + d[:, None], mask=m, other=0.0)
            off = (rows * N + n) * Dm + d[:, None]
            inc = tl.load(state_ptr + off, mask=m, other=0.0)
            a = tl.where(m, tl.exp(A_n[:, None] * sd), 1.0)
            acum, hcum = tl.associative_scan((a, inc), 1, _combine)
            res = acum * x[:, None] + hcum
            tl.store(state_ptr + off, res, mask=m)
            x = tl.sum(tl.where(lastc, res, 0.0), 1)  # past the last link the maps are identities


@triton.jit
def forward_kernel(
    u_ptr, delta_ptr, W_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, index_ptr, hend_ptr,
    out_ptr, hi_ptr, acc_ptr,
    k0, G, nseg, nd, K, Dm, Lk, L, S, R, scale,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, sA_r, sA_n,
    sB_b, sB_k, sB_n, sB_l, sC_b, sC_k, sC_n, sC_l, sz_b, sz_k, sz_d, sz_l, so_b, so_k, so_d, so_l,
    N: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    SEQ_U: tl.constexpr, LOW_RANK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, MODE: tl.constexpr, ACC: tl.constexpr, STATES: tl.constexpr,
):
    """Directions k0 .. k0 + G - 1; one program per (segment, channel block, batch element) walks the segment's
    chunks with the state in registers, starting from the carried end state of the previous segment."""
    pid = tl.program_id(0)
    pd = pid % nd
    rest = pid // nd
    j = rest % nseg
    rest = rest // nseg
    k = k0 + rest % G
    b = (rest // G).to(tl.int64)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    last = (tl.arange(0, BT) == BT - 1)[None, :]
    if STATES:
        h = _load_state(hend_ptr, b * (K * nseg) + k * nseg + j - 1, N, Dm, d, dm & (j > 0), ncol)
    else:
        h = tl.zeros([BD, NP], dtype=tl.float32)
    bias = _channel_vector(bias_ptr, k, Dm, d, dm, HAS_BIAS, BD)
    Dv = _channel_vector(D_ptr, k, Dm, d, dm, HAS_D, BD)
    s0 = j * S
    s1 = tl.minimum(s0 + S, Lk)
    for c0 in range(s0, s1, BT):
        t = c0 + tl.arange(0, BT)
        tm = t < s1
        pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
        valid = tm & (pos >= 0)
        x = _load_x(u_ptr, b, k, d, dm, t, tm, pos, valid, su_b, su_k, su_d, su_l, SEQ_U)
        raw = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t, tm, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R, BD, BT,
                    LOW_RANK)
        raw, dt = _dt(raw, bias, dm[:, None] & tm[None, :], SOFTPLUS)
        dtx = dt * x
        y = Dv[:, None] * x
        for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
            col = ncol[None, :] == n
            A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
            acum, hs = tl.associative_scan((tl.exp(dt * A_n[:, None]), dtx * B_n[None, :]), 1, _combine)
            hn = acum * _col(h, col)[:, None] + hs
            y += hn * C_n[None, :]
            h = tl.where(col, tl.sum(tl.where(last, hn, 0.0), 1)[:, None], h)
        vm = dm[:, None] & valid[None, :]
        off_t = b * so_b + k * so_k + d[:, None] * so_d + pos[None, :] * so_l
        off_a = (b * L + pos[None, :]) * Dm + d[:, None]
        fin = scale
        if HAS_Z:
            if MODE == 0 or MODE == 3:
                zz = tl.load(z_ptr + b * sz_b + k * sz_k + d[:, None] * sz_d + pos[None, :] * sz_l, mask=vm,
                             other=0.0).to(tl.float32)
                fin = scale * zz * tl.sigmoid(zz)
        _write_map(out_ptr, hi_ptr, acc_ptr, off_t, off_a, y, fin, vm, MODE, ACC)


@triton.jit
def adjoint_state_kernel(
    delta_ptr, W_ptr, bias_ptr, A_ptr, C_ptr, z_ptr, g_ptr, index_ptr, q_ptr,
    nd, K, nch, Dm, Lk, R, scale,
    sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, sA_r, sA_n, sC_b, sC_k, sC_n, sC_l,
    sz_b, sz_k, sz_d, sz_l, sg_b, sg_k, sg_d, sg_l,
    N: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    LOW_RANK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_Z: tl.constexpr,
):
    """q_c = a_s * dh_s at the chunk's first step s, from a zero adjoint past its end."""
    pid = tl.program_id(0)
    pd = pid % nd
    rest = pid // nd
    c = rest % nch
    rest = rest // nch
    k = rest % K
    b = (rest // K).to(tl.int64)
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    first = (tl.arange(0, BT) == 0)[None, :]
    t = c * BT + tl.arange(0, BT)
    e = tl.minimum(c * BT + BT, Lk)
    tm = t < e
    nm = dm[:, None] & (t + 1 < e)[None, :]
    pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
    valid = tm & (pos >= 0)
    bias = _channel_vector(bias_ptr, k, Dm, d, dm, HAS_BIAS, BD)
    raw = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t, tm, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R, BD, BT,
                    LOW_RANK)
    raw, dt = _dt(raw, bias, dm[:, None] & tm[None, :], SOFTPLUS)
    raw_n = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t + 1, t + 1 < e, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R,
                         BD, BT, LOW_RANK)
    raw_n, dt_next = _dt(raw_n, bias, nm, SOFTPLUS)
    gsel, gy = _load_gy(g_ptr, z_ptr, b, k, d, dm, pos, valid, scale, sg_b, sg_k, sg_d, sg_l, sz_b, sz_k, sz_d, sz_l,
                        HAS_Z)
    q = tl.zeros([BD, NP], dtype=tl.float32)
    for n in range(N):
        col = ncol[None, :] == n
        A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
        C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
        a_next = tl.where(nm, tl.exp(dt_next * A_n[:, None]), 0.0)
        _, dh = tl.associative_scan((a_next, gy * C_n[None, :]), 1, _combine, reverse=True)
        a = tl.exp(dt * A_n[:, None])
        q = tl.where(col, tl.sum(tl.where(first, a * dh, 0.0), 1)[:, None], q)
    _store_state(q_ptr, q, b * (K * nch) + k * nch + c, N, Dm, d, dm, ncol)


@triton.jit
def sequence_grad_kernel(
    u_ptr, delta_ptr, W_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, D_ptr, z_ptr, g_ptr, index_ptr, hend_ptr, lam_ptr,
    du_ptr, du_hi_ptr, du_acc_ptr, dz_ptr, dz_hi_ptr, w_acc_ptr, ddelta_ptr, dB_ptr, dC_ptr, part_ptr,
    k0, G, nch, ncs, nd, Bt, K, Dm, Lk, L, R, scale,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, sA_r, sA_n,
    sB_b, sB_k, sB_n, sB_l, sC_b, sC_k, sC_n, sC_l, sz_b, sz_k, sz_d, sz_l, sg_b, sg_k, sg_d, sg_l,
    sdu_b, sdu_k, sdu_d, sdu_l, sdz_b, sdz_k, sdz_d, sdz_l, sdd_b, sdd_k, sdd_c, sdd_l,
    sdB_b, sdB_k, sdB_n, sdB_l, sdC_b, sdC_k, sdC_n, sdC_l,
    N: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    SEQ_U: tl.constexpr, LOW_RANK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, DU_MODE: tl.constexpr, DU_ACC: tl.constexpr,
    W_MODE: tl.constexpr, W_ACC: tl.constexpr, STATES: tl.constexpr, SPLIT: tl.constexpr,
):
    """Gradients along the sequence of one chunk: du, dz (via w = sum_k gout_k y_k), dΔ (full Δ), and dB, dC,
    d(dts) summed over this program's channels in registers. With SPLIT (channel split sp of ncs) the sums
    go to float32 partials (ncs, B, K, 2N + R, Lk) instead, reduced in a fixed order by the host."""
    pid = tl.program_id(0)
    sp = pid % ncs
    rest = pid // ncs
    c = rest % nch
    rest = rest // nch
    k = k0 + rest % G
    b = (rest // G).to(tl.int64)
    ncol = tl.arange(0, NP)
    nrow = tl.arange(0, NP)[:, None]
    t = c * BT + tl.arange(0, BT)
    e = tl.minimum(c * BT + BT, Lk)
    tm = t < e
    last = (t == e - 1)[None, :]
    pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
    valid = tm & (pos >= 0)
    row = b * (K * nch) + k * nch + c
    dB_acc = tl.zeros([NP, BT], dtype=tl.float32)
    dC_acc = tl.zeros([NP, BT], dtype=tl.float32)
    dts_acc = tl.zeros([RP, BT], dtype=tl.float32)
    rrow = tl.arange(0, RP)[:, None]
    per = (nd + ncs - 1) // ncs
    for pd in range(sp * per, tl.minimum(sp * per + per, nd)):
        d = pd * BD + tl.arange(0, BD)
        dm = d < Dm
        m2 = dm[:, None] & tm[None, :]
        nm = dm[:, None] & (t + 1 < e)[None, :]
        vm = dm[:, None] & valid[None, :]
        if STATES:
            h0 = _load_state(hend_ptr, row - 1, N, Dm, d, dm & (c > 0), ncol)
            lam = _load_state(lam_ptr, row + 1, N, Dm, d, dm & (c + 1 < nch), ncol)
        else:
            h0 = tl.zeros([BD, NP], dtype=tl.float32)
            lam = tl.zeros([BD, NP], dtype=tl.float32)
        bias = _channel_vector(bias_ptr, k, Dm, d, dm, HAS_BIAS, BD)
        x = _load_x(u_ptr, b, k, d, dm, t, tm, pos, valid, su_b, su_k, su_d, su_l, SEQ_U)
        raw = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t, tm, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R, BD, BT,
                    LOW_RANK)
        raw, dt = _dt(raw, bias, m2, SOFTPLUS)
        raw_n = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t + 1, t + 1 < e, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R,
                         BD, BT, LOW_RANK)
        raw_n, dt_next = _dt(raw_n, bias, nm, SOFTPLUS)
        gsel, gy = _load_gy(g_ptr, z_ptr, b, k, d, dm, pos, valid, scale, sg_b, sg_k, sg_d, sg_l,
                            sz_b, sz_k, sz_d, sz_l, HAS_Z)
        dtx = dt * x
        Dv = _channel_vector(D_ptr, k, Dm, d, dm, HAS_D, BD)
        y = Dv[:, None] * x
        dx = Dv[:, None] * gy
        ddt = tl.zeros([BD, BT], dtype=tl.float32)
        for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
            col = ncol[None, :] == n
            A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
            bx = dtx * B_n[None, :]
            acum, hs = tl.associative_scan((tl.exp(dt * A_n[:, None]), bx), 1, _combine)
            h = acum * _col(h0, col)[:, None] + hs
            y += h * C_n[None, :]
            # adjoint dh_t = gy_t C_t + a_{t+1} dh_{t+1}; the carry from later chunks enters at the last step
            a_next = tl.where(nm, tl.exp(dt_next * A_n[:, None]), 0.0)
            inj = gy * C_n[None, :] + tl.where(last, _col(lam, col)[:, None], 0.0)
            _, dh = tl.associative_scan((a_next, inj), 1, _combine, reverse=True)
            dx += dh * dt * B_n[None, :]
            ddt += dh * (B_n[None, :] * x + A_n[:, None] * (h - bx))  # h - bx = a_t h_{t-1}
            dB_acc = tl.where(nrow == n, dB_acc + tl.sum(dh * dtx, 0)[None, :], dB_acc)
            dC_acc = tl.where(nrow == n, dC_acc + tl.sum(gy * h, 0)[None, :], dC_acc)
        if SOFTPLUS:
            ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
        ddt = tl.where(m2, ddt, 0.0)
        if LOW_RANK:  # d(dts)[r, t] += sum over this block's channels of W[k, d, r] ddt[d, t]
            for r in range(R):
                w = tl.load(W_ptr + k * sw_k + d * sw_d + r * sw_r, mask=dm, other=0.0).to(tl.float32)
                dts_acc = tl.where(rrow == r, dts_acc + tl.sum(w[:, None] * ddt, 0)[None, :], dts_acc)
        else:
            tl.store(ddelta_ptr + b * sdd_b + k * sdd_k + d[:, None] * sdd_c + t[None, :] * sdd_l,
                     ddt.to(ddelta_ptr.dtype.element_ty), mask=m2)
        if SEQ_U:
            tl.store(du_ptr + b * sdu_b + k * sdu_k + d[:, None] * sdu_d + t[None, :] * sdu_l,
                     dx.to(du_ptr.dtype.element_ty), mask=m2)
        else:
            off_t = b * sdu_b + k * sdu_k + d[:, None] * sdu_d + pos[None, :] * sdu_l
            off_a = (b * L + pos[None, :]) * Dm + d[:, None]
            _write_map(du_ptr, du_hi_ptr, du_acc_ptr, off_t, off_a, dx, 1.0, vm, DU_MODE, DU_ACC)
        if HAS_Z:
            fin = 1.0
            if W_MODE == 0 or W_MODE == 3:  # dz = w * silu'(z)
                zz = tl.load(z_ptr + b * sz_b + k * sz_k + d[:, None] * sz_d + pos[None, :] * sz_l, mask=vm,
                             other=0.0).to(tl.float32)
                sg = tl.sigmoid(zz)
                fin = sg * (1.0 + zz * (1.0 - sg))
            off_t = b * sdz_b + k * sdz_k + d[:, None] * sdz_d + pos[None, :] * sdz_l
            off_a = (b * L + pos[None, :]) * Dm + d[:, None]
            _write_map(dz_ptr, dz_hi_ptr, w_acc_ptr, off_t, off_a, gsel * y, fin, vm, W_MODE, W_ACC)
    nm_ = (ncol < N)[:, None] & tm[None, :]
    r = tl.arange(0, RP)[:, None]
    rm = (r < R) & tm[None, :]
    if SPLIT:  # partial sp of (ncs, B, K, 2N + R, Lk)
        sbase = ((sp * Bt + b) * K + k) * (2 * N + R)
        tl.store(part_ptr + (sbase + nrow) * Lk + t[None, :], dB_acc, mask=nm_)
        tl.store(part_ptr + (sbase + N + nrow) * Lk + t[None, :], dC_acc, mask=nm_)
        if LOW_RANK:
            tl.store(part_ptr + (sbase + 2 * N + r) * Lk + t[None, :], dts_acc, mask=rm)
    else:
        tl.store(dB_ptr + b * sdB_b + k * sdB_k + nrow * sdB_n + t[None, :] * sdB_l,
                 dB_acc.to(dB_ptr.dtype.element_ty), mask=nm_)
        tl.store(dC_ptr + b * sdC_b + k * sdC_k + nrow * sdC_n + t[None, :] * sdC_l,
                 dC_acc.to(dC_ptr.dtype.element_ty), mask=nm_)
        if LOW_RANK:
            tl.store(ddelta_ptr + b * sdd_b + k * sdd_k + r * sdd_c + t[None, :] * sdd_l,
                     dts_acc.to(ddelta_ptr.dtype.element_ty), mask=rm)


@triton.jit
def param_grad_kernel(
    u_ptr, delta_ptr, W_ptr, bias_ptr, A_ptr, B_ptr, C_ptr, z_ptr, g_ptr, index_ptr, hend_ptr, lam_ptr,
    pA_ptr, pD_ptr, pbias_ptr, pW_ptr,
    npg, per, n_items, nch, nd, K, Dm, Lk, R, scale,
    su_b, su_k, su_d, su_l, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, sA_r, sA_n,
    sB_b, sB_k, sB_n, sB_l, sC_b, sC_k, sC_n, sC_l, sz_b, sz_k, sz_d, sz_l, sg_b, sg_k, sg_d, sg_l,
    N: tl.constexpr, NP: tl.constexpr, RP: tl.constexpr, BD: tl.constexpr, BT: tl.constexpr,
    SEQ_U: tl.constexpr, LOW_RANK: tl.constexpr, HAS_BIAS: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_Z: tl.constexpr, STATES: tl.constexpr,
):
    """dA, dD, dΔ-bias and d(delta_weight) of one (direction, channel block) over work group g's (batch, chunk)
    items, summed in registers; written as partial g of (npg, K * Dm, .) float32 buffers."""
    pid = tl.program_id(0)
    pd = pid % nd
    rest = pid // nd
    g = rest % npg
    k = rest // npg
    d = pd * BD + tl.arange(0, BD)
    dm = d < Dm
    ncol = tl.arange(0, NP)
    rcol = tl.arange(0, RP)
    bias = _channel_vector(bias_ptr, k, Dm, d, dm, HAS_BIAS, BD)
    dA = tl.zeros([BD, NP], dtype=tl.float32)
    dD = tl.zeros([BD], dtype=tl.float32)
    dbias = tl.zeros([BD], dtype=tl.float32)
    dW = tl.zeros([BD, RP], dtype=tl.float32)
    for item in range(g * per, tl.minimum(g * per + per, n_items)):
        b = (item // nch).to(tl.int64)
        c = item % nch
        t = c * BT + tl.arange(0, BT)
        e = tl.minimum(c * BT + BT, Lk)
        tm = t < e
        last = (t == e - 1)[None, :]
        m2 = dm[:, None] & tm[None, :]
        nm = dm[:, None] & (t + 1 < e)[None, :]
        pos = tl.load(index_ptr + k * Lk + t, mask=tm, other=-1)
        valid = tm & (pos >= 0)
        row = b * (K * nch) + k * nch + c
        if STATES:
            h0 = _load_state(hend_ptr, row - 1, N, Dm, d, dm & (c > 0), ncol)
            lam = _load_state(lam_ptr, row + 1, N, Dm, d, dm & (c + 1 < nch), ncol)
        else:
            h0 = tl.zeros([BD, NP], dtype=tl.float32)
            lam = tl.zeros([BD, NP], dtype=tl.float32)
        x = _load_x(u_ptr, b, k, d, dm, t, tm, pos, valid, su_b, su_k, su_d, su_l, SEQ_U)
        raw = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t, tm, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R, BD, BT,
                    LOW_RANK)
        raw, dt = _dt(raw, bias, m2, SOFTPLUS)
        raw_n = _load_raw(delta_ptr, W_ptr, b, k, d, dm, t + 1, t + 1 < e, sd_b, sd_k, sd_c, sd_l, sw_k, sw_d, sw_r, R,
                         BD, BT, LOW_RANK)
        raw_n, dt_next = _dt(raw_n, bias, nm, SOFTPLUS)
        gsel, gy = _load_gy(g_ptr, z_ptr, b, k, d, dm, pos, valid, scale, sg_b, sg_k, sg_d, sg_l,
                            sz_b, sz_k, sz_d, sz_l, HAS_Z)
        dtx = dt * x
        ddt = tl.zeros([BD, BT], dtype=tl.float32)
        for n in range(N):  # not unrolled: N unrolled scans take minutes to compile
            col = ncol[None, :] == n
            A_n = tl.load(A_ptr + (k * Dm + d) * sA_r + n * sA_n, mask=dm, other=0.0).to(tl.float32)
            B_n = tl.load(B_ptr + b * sB_b + k * sB_k + n * sB_n + t * sB_l, mask=tm, other=0.0).to(tl.float32)
            C_n = tl.load(C_ptr + b * sC_b + k * sC_k + n * sC_n + t * sC_l, mask=tm, other=0.0).to(tl.float32)
            bx = dtx * B_n[None, :]
            acum, hs = tl.associative_scan((tl.exp(dt * A_n[:, None]), bx), 1, _combine)
            ah = acum * _col(h0, col)[:, None] + hs - bx  # a_t h_{t-1}
            a_next = tl.where(nm, tl.exp(dt_next * A_n[:, None]), 0.0)
            inj = gy * C_n[None, :] + tl.where(last, _col(lam, col)[:, None], 0.0)
            _, dh = tl.associative_scan((a_next, inj), 1, _combine, reverse=True)
            ddt += dh * (B_n[None, :] * x + A_n[:, None] * ah)
            dA = tl.where(col, dA + tl.sum(dh * dt * ah, 1)[:, None], dA)
        if SOFTPLUS:
            ddt = tl.where(raw > 20.0, ddt, ddt * tl.sigmoid(raw))
        ddt = tl.where(m2, ddt, 0.0)
        dbias += tl.sum(ddt, 1)
        dD += tl.sum(gy * x, 1)
        if LOW_RANK:  # dW[d, r] += sum_t ddt[d, t] dts[r, t]
            for r in range(R):
                v = tl.load(delta_ptr + b * sd_b + k * sd_k + r * sd_c + t * sd_l, mask=tm, other=0.0).to(tl.float32)
                dW = tl.where(rcol[None, :] == r, dW + tl.sum(ddt * v[None, :], 1)[:, None], dW)
    prow = g * (K * Dm) + k * Dm + d
    tl.store(pA_ptr + prow[:, None] * N + ncol[None, :], dA, mask=dm[:, None] & (ncol < N)[None, :])
    tl.store(pD_ptr + prow, dD, mask=dm)
    tl.store(pbias_ptr + prow, dbias, mask=dm)
    if LOW_RANK:
        tl.store(pW_ptr + prow[:, None] * R + rcol[None, :], dW, mask=dm[:, None] & (rcol < R)[None, :])
