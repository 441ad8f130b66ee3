// The plan-scan kernels as portable block bodies.
//
// Each body is a struct with `template <class Ctx> static void run(const Ctx&, const ScanParams&, float* smem)`:
// Ctx gives the thread and block indices and the block barrier. Under nvcc, Ctx reads threadIdx/blockIdx
// and syncs with __syncthreads (cuda_device.cuh); on the CPU, emulator.h runs every thread of a block as a
// fiber with a real barrier, so the same code is tested without a GPU.
//
// Notation: batch b, direction k, channel d (global channel c = k*Dm + d), state n, step t along the
// direction, pos = index[k, t] the map position (-1: padding). One thread scans one channel of one chunk.
// Low-rank Δ (p.R > 0): Δ[b, k, d, t] = Σ_r W[k, d, r] * dts[b, k, r, t] (+ bias) is formed per step from the
// thread's row of W, kept in shared memory; it never goes to memory, in either direction.
#pragma once
#include <math.h>

#include <cmath>

#include "scan_params.h"

#if defined(__CUDACC__)
#define VSSM_DEVICE __device__ __forceinline__
#define VSSM_UNROLL _Pragma("unroll")
#else
#define VSSM_DEVICE inline
#define VSSM_UNROLL
#endif

namespace vssm {

// Element type conversion; specialised for float here, for the half types in cuda_device.cuh / emulator.h.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  VSSM_DEVICE static float load(float x) { return x; }
  VSSM_DEVICE static float store(float x) { return x; }
};

VSSM_DEVICE int imin(int a, int b) { return a < b ? a : b; }
VSSM_DEVICE float softplus_f(float x) { return x > 20.f ? x : log1pf(expf(x)); }  // torch's threshold
VSSM_DEVICE float sigmoid_f(float x) { return 1.f / (1.f + expf(-x)); }
VSSM_DEVICE float silu_f(float x) { return x * sigmoid_f(x); }
VSSM_DEVICE float dsilu_f(float x) {
  const float s = sigmoid_f(x);
  return s * (1.f + x * (1.f - s));
}

template <typename T>
VSSM_DEVICE float ld(const void* p, int64_t i) {
  return Elem<T>::load(static_cast<const T*>(p)[i]);
}
template <typename T>
VSSM_DEVICE void st(void* p, int64_t i, float v) {
  static_cast<T*>(p)[i] = Elem<T>::store(v);
}

VSSM_DEVICE int64_t state_slot(const ScanParams& p, int b, int k, int j, int d) {
  return ((static_cast<int64_t>(b) * p.K + k) * p.nchunks + j) * p.Dm + d;  // times N for the state arrays
}
VSSM_DEVICE int64_t part_slot(const ScanParams& p, int slot, int k, int jslot, int d) {
  return ((static_cast<int64_t>(slot) * p.K + k) * p.chunk_slots + jslot) * p.Dm + d;  // backward partials
}
VSSM_DEVICE int64_t map_slot(const ScanParams& p, int b, int64_t pos, int d) {
  return (static_cast<int64_t>(b) * p.L + pos) * p.Dm + d;  // channel-last (Bt, L, Dm) accumulators
}
VSSM_DEVICE int64_t at4(const int64_t* s, int64_t b, int64_t k, int64_t c, int64_t t) {
  return b * s[0] + k * s[1] + c * s[2] + t * s[3];
}

// The thread's row of the Δ weight (low rank) into its own column of shared memory: only this thread reads
// it in the scan passes, so no barrier is needed; inactive threads hold zeros (the backward reduces over them).
VSSM_DEVICE void load_weights(const ScanParams& p, float* col, int stride, int k, int d, bool active) {
  for (int r = 0; r < p.R; ++r) col[r * stride] = active ? p.W[(static_cast<int64_t>(k) * p.Dm + d) * p.R + r] : 0.f;
}

// One channel's constants and the per-step loads through the index map. kARegs: A's row in registers;
// at d_state 16 it is read through the cache instead (the registers it would take make the scans spill).
template <typename T, int kN, bool kARegs = (kN < 16)>
struct Channel {
  const ScanParams& p;
  int b, k, d;
  float Areg[kARegs ? kN : 1];
  const float* Ap;
  float Dv, bias;
  const float* w;  // this channel's Δ weights (stride ws), low rank only
  int ws;

  VSSM_DEVICE Channel(const ScanParams& p_, int b_, int k_, int d_, const float* w_, int ws_)
      : p(p_), b(b_), k(k_), d(d_), w(w_), ws(ws_) {
    const int64_t c = static_cast<int64_t>(k) * p.Dm + d;
    VSSM_UNROLL
    for (int n = 0; n < (kARegs ? kN : 0); ++n) Areg[n] = n < p.N ? p.A[c * p.N + n] : 0.f;
    Ap = p.A + c * p.N;
    Dv = p.has_D ? p.D[c] : 0.f;
    bias = p.has_bias ? p.bias[c] : 0.f;
  }
  VSSM_DEVICE float A(int n) const {
    if constexpr (kARegs) return Areg[n];
    return Ap[n];
  }
  VSSM_DEVICE int64_t pos(int t) const { return p.index[static_cast<int64_t>(k) * p.Lk + t]; }
  VSSM_DEVICE float u(int t, int64_t pos_) const {
    if (p.seq_u) return ld<T>(p.u, at4(p.su, b, k, d, t));
    return pos_ >= 0 ? ld<T>(p.u, at4(p.su, b, k, d, pos_)) : 0.f;  // padding reads zero
  }
  // the factor dts[b, k, r, t] (low rank)
  VSSM_DEVICE float dts(int r, int t) const { return ld<T>(p.delta, at4(p.sdelta, b, k, r, t)); }
  VSSM_DEVICE float delta_in(int t) const {  // Δ + bias, before softplus
    if (p.R == 0) return ld<T>(p.delta, at4(p.sdelta, b, k, d, t)) + bias;
    float x = 0.f;
    for (int r = 0; r < p.R; ++r) x += w[r * ws] * dts(r, t);  // fixed order: every pass forms the same Δ
    return x + bias;
  }
  VSSM_DEVICE float dt(float x) const { return p.softplus ? softplus_f(x) : x; }
  VSSM_DEVICE float Bv(int n, int t) const { return ld<T>(p.Bm, at4(p.sB, b, k, n, t)); }
  VSSM_DEVICE float Cv(int n, int t) const { return ld<T>(p.Cm, at4(p.sC, b, k, n, t)); }
  VSSM_DEVICE float zv(int64_t pos_) const { return ld<T>(p.z, at4(p.sz, b, k, d, pos_)); }
  VSSM_DEVICE float gate(int64_t pos_) const { return silu_f(zv(pos_)); }
  VSSM_DEVICE float grad_out(int64_t pos_) const { return ld<T>(p.gout, at4(p.sg, b, k, d, pos_)); }
  // gradient reaching this direction's output y at step t: the merge scale and the z gate applied
  VSSM_DEVICE float grad_y(int64_t pos_) const {
    if (pos_ < 0) return 0.f;
    float g = grad_out(pos_) * p.scale;
    if (p.has_z) g *= gate(pos_);
    return g;
  }
  // h <- exp(dt*A) h + dt*B*u
  VSSM_DEVICE void step(float* h, int t, float dtv, float uv) const {
    VSSM_UNROLL
    for (int n = 0; n < kN; ++n)
      if (n < p.N) h[n] = expf(dtv * A(n)) * h[n] + dtv * Bv(n, t) * uv;
  }
  VSSM_DEVICE void load_state(float* h, const float* src) const {
    VSSM_UNROLL
    for (int n = 0; n < kN; ++n) h[n] = n < p.N ? src[n] : 0.f;
  }
};

// Block coordinates of the scan passes: grid y is batch x direction, or batch alone in a per-direction launch.
struct BlockBK {
  int b, k;
  template <class Ctx>
  VSSM_DEVICE BlockBK(const Ctx& c, const ScanParams& p)
      : b(p.k >= 0 ? c.by() : c.by() / p.K), k(p.k >= 0 ? p.k : c.by() % p.K) {}
};

// ------------------------------------------------------------------------------------------------ forward

// Pass 1 (only with several chunks): each chunk scanned from a zero state; its end state and sum of Δ.
// Grid (nchunks, Bt*K, ntiles), block `tile`, shared memory: the Δ weights (low rank).
template <typename T, int kN>
struct ChunkStateBody {
  static constexpr const char* kName = "chunk_state";
  static constexpr int kMinBlocks = kN >= 16 ? 1 : 2;  // d_state 16: more than 128 registers, no spills
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float* smem) {
    const int j = c.bx(), b = c.by() / p.K, k = c.by() % p.K;
    const int d = c.bz() * p.tile + c.tid();
    if (d >= p.Dm) return;  // no barrier in this body
    load_weights(p, smem + c.tid(), c.nthreads(), k, d, true);
    Channel<T, kN> ch(p, b, k, d, smem + c.tid(), c.nthreads());
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk);
    float h[kN];
    VSSM_UNROLL
    for (int n = 0; n < kN; ++n) h[n] = 0.f;
    float sum_dt = 0.f;
    for (int t = t0; t < t1; ++t) {
      const int64_t pos = ch.pos(t);
      const float dtv = ch.dt(ch.delta_in(t));
      ch.step(h, t, dtv, ch.u(t, pos));
      sum_dt += dtv;
    }
    const int64_t s = state_slot(p, b, k, j, d);
    VSSM_UNROLL
    for (int n = 0; n < kN; ++n)
      if (n < p.N) p.states[s * p.N + n] = h[n];
    p.sdt[s] = sum_dt;
  }
};

// Pass 2: chain the chunks of each (b, k, d, n) in order; states[j] becomes the state entering chunk j.
// Flat grid over Bt*K*Dm*N.
template <typename T, int kN>
struct ChunkCombineBody {
  static constexpr const char* kName = "chunk_combine";
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int64_t i = static_cast<int64_t>(c.bx()) * c.nthreads() + c.tid();
    const int64_t total = static_cast<int64_t>(p.Bt) * p.K * p.Dm * p.N;
    if (i >= total) return;
    const int n = static_cast<int>(i % p.N);
    const int d = static_cast<int>((i / p.N) % p.Dm);
    const int64_t bk = i / (static_cast<int64_t>(p.N) * p.Dm);
    const int b = static_cast<int>(bk / p.K), k = static_cast<int>(bk % p.K);
    const float A = p.A[(static_cast<int64_t>(k) * p.Dm + d) * p.N + n];
    float h = 0.f;
    for (int j = 0; j < p.nchunks; ++j) {
      const int64_t s = state_slot(p, b, k, j, d);
      const float local = p.states[s * p.N + n];
      p.states[s * p.N + n] = h;
      h = expf(A * p.sdt[s]) * h + local;
    }
  }
};

// Pass 3: scan each chunk from its entering state and write y through the index map.
// sum/mean: one launch per direction (launches run in order, so the directions are added in a fixed order
// without atomics), grid (nchunks, Bt, ntiles): acc[b, pos, d] += y; direction 0 stores when it covers the map
// (no zero fill) and direction K-1 writes out = acc * scale * silu(z) when it does (no finalize pass).
// none/group: one launch, grid (nchunks, Bt*K, ntiles): out[b, k, d, pos] = y * silu(z[b, k, d, pos]).
template <typename T, int kN>
struct ChunkOutputBody {
  static constexpr const char* kName = "chunk_output";
  static constexpr int kMinBlocks = kN >= 16 ? 1 : 2;  // d_state 16: more than 128 registers, no spills
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float* smem) {
    const BlockBK bk(c, p);
    const int j = c.bx(), b = bk.b, k = bk.k;
    const int d = c.bz() * p.tile + c.tid();
    if (d >= p.Dm) return;
    load_weights(p, smem + c.tid(), c.nthreads(), k, d, true);
    Channel<T, kN> ch(p, b, k, d, smem + c.tid(), c.nthreads());
    float h[kN];
    if (p.nchunks > 1) {
      ch.load_state(h, p.states + state_slot(p, b, k, j, d) * p.N);
    } else {
      VSSM_UNROLL
      for (int n = 0; n < kN; ++n) h[n] = 0.f;
    }
    const bool first = k == 0 && p.store_first, last = k == p.K - 1 && p.fuse_finalize;
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk);
    for (int t = t0; t < t1; ++t) {
      const int64_t pos = ch.pos(t);
      const float uv = ch.u(t, pos);
      ch.step(h, t, ch.dt(ch.delta_in(t)), uv);
      if (pos < 0) continue;  // padded steps advance the state but have no output
      float y = ch.Dv * uv;
      VSSM_UNROLL
      for (int n = 0; n < kN; ++n)
        if (n < p.N) y += ch.Cv(n, t) * h[n];
      if (!p.merged()) {
        if (p.has_z) y *= ch.gate(pos);
        st<T>(p.out, at4(p.so, b, k, d, pos), y);
        continue;
      }
      const int64_t m = map_slot(p, b, pos, d);
      float v = first ? y : p.acc[m] + y;
      if (last) {
        v *= p.scale;
        if (p.has_z) v *= ch.gate(pos);
        st<T>(p.out, at4(p.so, b, 0, d, pos), v);  // may be the accumulator itself (float32, no gate)
      } else {
        p.acc[m] = v;
      }
    }
  }
};

// Pass 4 (sum/mean, only when the last direction does not cover the map): out = acc * scale * silu(z), cast.
// Flat grid over Bt*L*Dm (d fastest).
template <typename T, int kN>
struct MapFinalizeBody {
  static constexpr const char* kName = "map_finalize";
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int64_t i = static_cast<int64_t>(c.bx()) * c.nthreads() + c.tid();
    if (i >= static_cast<int64_t>(p.Bt) * p.L * p.Dm) return;
    const int d = static_cast<int>(i % p.Dm);
    const int64_t pos = (i / p.Dm) % p.L;
    const int b = static_cast<int>(i / (static_cast<int64_t>(p.Dm) * p.L));
    float v = p.acc[i] * p.scale;
    if (p.has_z) v *= silu_f(ld<T>(p.z, at4(p.sz, b, 0, d, pos)));
    st<T>(p.out, at4(p.so, b, 0, d, pos), v);
  }
};

// ----------------------------------------------------------------------------------------------- backward
//
// Adjoint of the state: gh_t = gy_t * C_t + a_{t+1} * gh_{t+1}, a_t = exp(dt_t * A). The carry into a step
// is a_{t+1} * gh_{t+1}; within chunk j it starts from carries[j] (what the later chunks send back).

// Pass B1 (only with several chunks): each chunk's outgoing carry computed from a zero incoming carry.
// Grid (nchunks, Bt*K, ntiles).
template <typename T, int kN>
struct ChunkCarryBody {
  static constexpr const char* kName = "chunk_carry";
  static constexpr int kMinBlocks = kN >= 16 ? 1 : 2;  // d_state 16: more than 128 registers, no spills
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float* smem) {
    const int j = c.bx(), b = c.by() / p.K, k = c.by() % p.K;
    const int d = c.bz() * p.tile + c.tid();
    if (d >= p.Dm) return;
    load_weights(p, smem + c.tid(), c.nthreads(), k, d, true);
    Channel<T, kN> ch(p, b, k, d, smem + c.tid(), c.nthreads());
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk);
    float carry[kN];
    VSSM_UNROLL
    for (int n = 0; n < kN; ++n) carry[n] = 0.f;
    for (int t = t1 - 1; t >= t0; --t) {
      const int64_t pos = ch.pos(t);
      const float gy = ch.grad_y(pos);
      const float dtv = ch.dt(ch.delta_in(t));
      VSSM_UNROLL
      for (int n = 0; n < kN; ++n)
        if (n < p.N) carry[n] = expf(dtv * ch.A(n)) * (gy * ch.Cv(n, t) + carry[n]);
    }
    const int64_t s = state_slot(p, b, k, j, d);
    VSSM_UNROLL
    for (int n = 0; n < kN; ++n)
      if (n < p.N) p.carries[s * p.N + n] = carry[n];
  }
};

// Pass B2: chain carries backwards: carries[j] becomes the carry entering chunk j from chunk j+1.
// carry_in(j) = out(j+1) + exp(A * sdt[j+1]) * carry_in(j+1). Flat grid over Bt*K*Dm*N.
template <typename T, int kN>
struct CarryCombineBody {
  static constexpr const char* kName = "carry_combine";
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int64_t i = static_cast<int64_t>(c.bx()) * c.nthreads() + c.tid();
    const int64_t total = static_cast<int64_t>(p.Bt) * p.K * p.Dm * p.N;
    if (i >= total) return;
    const int n = static_cast<int>(i % p.N);
    const int d = static_cast<int>((i / p.N) % p.Dm);
    const int64_t bk = i / (static_cast<int64_t>(p.N) * p.Dm);
    const int b = static_cast<int>(bk / p.K), k = static_cast<int>(bk % p.K);
    const float A = p.A[(static_cast<int64_t>(k) * p.Dm + d) * p.N + n];
    float carry = 0.f;
    for (int j = p.nchunks - 1; j >= 0; --j) {
      const int64_t s = state_slot(p, b, k, j, d);
      const float out = p.carries[s * p.N + n];
      p.carries[s * p.N + n] = carry;
      carry = out + expf(A * p.sdt[s]) * carry;
    }
  }
};

// Accumulate into a backward partial: the first batch of a slot stores, later ones add (fixed order).
VSSM_DEVICE void add_part(float* part, int64_t i, float v, bool first) { part[i] = first ? v : part[i] + v; }

// Pass B3: grid (chunk_slots, slots) per direction when a map accumulator is shared by the directions (map u
// or a z gate, merges sum/mean/none: launches in direction order, no atomics), else (chunk_slots, slots*K) once.
// Block (jx, i) walks the batches b = i, i + slots, ... and the chunks j = jx, jx + chunk_slots, ...; for each
// (b, j), every channel tile, so that dB/dC/d(dts) (shared by the channels of a direction) are summed inside
// the block in a fixed order, and dA/dD/dΔ-bias/dW are summed over the block's (b, j) before they go out as
// per-slot partials. Per tile, each thread (one channel) scans its chunk forward keeping a checkpoint every
// `sub` steps, then goes backward one sub-chunk at a time, recomputing that sub-chunk's states into shared
// memory.
template <typename T, int kN>
struct BackwardMainBody {
  static constexpr const char* kName = "backward_main";
  static constexpr bool kUsesBarrier = true;
  static constexpr int kMinBlocks = 1;  // up to 255 registers: d_state 16 keeps h, carry and dA in registers
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float* smem) {
    const int jslot = c.bx(), tid = c.tid(), nt = c.nthreads();
    const int k = p.k >= 0 ? p.k : c.by() / p.slots;
    const int slot = p.k >= 0 ? c.by() : c.by() % p.slots;
    const int N = p.N, S = p.sub, W = nt + 1, R = p.R;  // W: padded row of the reduction buffers
    const int max_nsub = (p.chunk + S - 1) / S;
    float* ckpt = smem;                    // [max_nsub][N][nt]: state before each sub-chunk
    float* hs = ckpt + max_nsub * N * nt;  // [S][N][nt]: state after each step of the sub-chunk
    float* red = hs + S * N * nt;          // [2][S][N][W]: per-thread dC (0) / dB (1) terms
    float* accbc = red + 2 * S * N * W;    // [2][len][N]: this chunk's dC / dB
    float* wsm = accbc + 2 * p.chunk * N;  // [R][W]: the tile's Δ weights (low rank)
    float* dwsm = wsm + R * W;             // [R][nt]: per-thread dW sums over the chunk
    float* dxs = dwsm + R * nt;            // [S][W]: the sub-chunk's dΔ, per thread
    float* accdts = dxs + S * W;           // [len][R]: this chunk's d(dts)
    const bool first_dir = k == 0 && p.store_first, last_dir = k == p.K - 1 && p.fuse_finalize;

    // every (batch, chunk) pair of this block's slots, in a fixed order
    for (int b = slot; b < p.Bt; b += p.slots)
    for (int j = jslot; j < p.nchunks; j += p.chunk_slots) {
      const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk), len = t1 - t0;
      const int nsub = (len + S - 1) / S;
      for (int i = tid; i < 2 * len * N; i += nt) accbc[i] = 0.f;
      for (int i = tid; i < len * R; i += nt) accdts[i] = 0.f;
      c.sync();

      for (int tile = 0; tile < p.ntiles; ++tile) {
        const int d = tile * nt + tid;
        const bool active = d < p.Dm;
        load_weights(p, wsm + tid, W, k, active ? d : 0, active);
        for (int r = 0; r < R; ++r) dwsm[r * nt + tid] = 0.f;
        Channel<T, kN> ch(p, b, k, active ? d : 0, wsm + tid, W);
        const int64_t sslot = state_slot(p, b, k, j, active ? d : 0);
        float h[kN], carry[kN], dA[kN];
        VSSM_UNROLL
        for (int n = 0; n < kN; ++n) h[n] = carry[n] = dA[n] = 0.f;
        if (active && p.nchunks > 1) {
          ch.load_state(h, p.states + sslot * N);
          ch.load_state(carry, p.carries + sslot * N);
        }
        float dD = 0.f, dbias = 0.f;

        // forward over the chunk, checkpointing the state before each sub-chunk
        for (int sb = 0; sb < nsub; ++sb) {
          VSSM_UNROLL
          for (int n = 0; n < kN; ++n)
            if (n < N) ckpt[(sb * N + n) * nt + tid] = h[n];
          if (!active) continue;
          const int s1 = imin(t1, t0 + (sb + 1) * S);
          for (int t = t0 + sb * S; t < s1; ++t) ch.step(h, t, ch.dt(ch.delta_in(t)), ch.u(t, ch.pos(t)));
        }

        for (int sb = nsub - 1; sb >= 0; --sb) {
          const int s0 = t0 + sb * S, s1 = imin(t1, s0 + S), rows = s1 - s0;
          if (active) {
            VSSM_UNROLL
            for (int n = 0; n < kN; ++n) h[n] = n < N ? ckpt[(sb * N + n) * nt + tid] : 0.f;
            for (int t = s0; t < s1; ++t) {
              ch.step(h, t, ch.dt(ch.delta_in(t)), ch.u(t, ch.pos(t)));
              VSSM_UNROLL
              for (int n = 0; n < kN; ++n)
                if (n < N) hs[((t - s0) * N + n) * nt + tid] = h[n];
            }
          }
          for (int t = s1 - 1; t >= s0; --t) {
            const int r = t - s0;
            if (!active) {
              for (int n = 0; n < N; ++n)
                red[((0 * S + r) * N + n) * W + tid] = red[((1 * S + r) * N + n) * W + tid] = 0.f;
              if (R > 0) dxs[r * W + tid] = 0.f;
              continue;
            }
            const int64_t pos = ch.pos(t);
            const float uv = ch.u(t, pos);
            const float x = ch.delta_in(t);
            const float dtv = ch.dt(x);
            const float gy = ch.grad_y(pos);
            float du = ch.Dv * gy, ddt = 0.f, y = ch.Dv * uv;
            VSSM_UNROLL
            for (int n = 0; n < kN; ++n) {
              if (n >= N) continue;
              const float hprev = r > 0 ? hs[((r - 1) * N + n) * nt + tid] : ckpt[(sb * N + n) * nt + tid];
              const float hcur = hs[(r * N + n) * nt + tid];
              const float a = expf(dtv * ch.A(n));
              const float Bn = ch.Bv(n, t), Cn = ch.Cv(n, t);
              const float gh = gy * Cn + carry[n];
              red[((0 * S + r) * N + n) * W + tid] = gy * hcur;      // dC
              red[((1 * S + r) * N + n) * W + tid] = gh * dtv * uv;  // dB
              du += gh * dtv * Bn;
              ddt += gh * (ch.A(n) * a * hprev + Bn * uv);
              dA[n] += gh * dtv * a * hprev;
              carry[n] = a * gh;
              y += Cn * hcur;
            }
            dD += gy * uv;
            float dx = ddt;
            if (p.softplus && x <= 20.f) dx *= sigmoid_f(x);
            dbias += dx;
            if (R > 0) {  // d(dts) is summed over the channels below; dW over the steps here
              dxs[r * W + tid] = dx;
              for (int q = 0; q < R; ++q) dwsm[q * nt + tid] += dx * ch.dts(q, t);
            } else {
              st<T>(p.ddelta, at4(p.sdd, b, k, d, t), dx);
            }
            if (p.seq_u) {
              st<T>(p.du, at4(p.sdu, b, k, d, t), du);
            } else if (pos >= 0 && p.merge == kMergeGroup) {
              st<T>(p.du, at4(p.sdu, b, k, d, pos), du);  // direction k owns channel group k
            } else if (pos >= 0) {
              const int64_t m = map_slot(p, b, pos, d);
              const float v = first_dir ? du : p.acc[m] + du;
              if (last_dir) st<T>(p.du, at4(p.sdu, b, 0, d, pos), v); else p.acc[m] = v;
            }
            if (p.has_z && pos >= 0) {
              if (p.merge == kMergeGroup) {
                st<T>(p.dz, at4(p.sdz, b, k, d, pos), ch.grad_out(pos) * y * dsilu_f(ch.zv(pos)));
              } else {
                // dz needs sum over directions of y (sum/mean) or of grad_out * y (none: one output per direction)
                const int64_t m = map_slot(p, b, pos, d);
                const float wy = p.merge == kMergeNone ? ch.grad_out(pos) * y : y;
                float v = first_dir ? wy : p.accy[m] + wy;
                if (last_dir) {
                  if (p.merge != kMergeNone) v *= ch.grad_out(pos) * p.scale;
                  st<T>(p.dz, at4(p.sdz, b, 0, d, pos), v * dsilu_f(ch.zv(pos)));
                } else {
                  p.accy[m] = v;
                }
              }
            }
          }
          c.sync();
          // sum the sub-chunk's dB/dC terms over this tile's threads in thread order (deterministic)
          for (int q = tid; q < 2 * rows * N; q += nt) {
            const int which = q / (rows * N), r = (q / N) % rows, n = q % N;
            const float* row = red + ((which * S + r) * N + n) * W;
            float s = 0.f;
            for (int i = 0; i < nt; ++i) s += row[i];
            accbc[(which * len + (s0 - t0 + r)) * N + n] += s;
          }
          // d(dts)[r, t] = Σ_d W[d, r] dΔ[d, t], over this tile's channels in thread order
          for (int q = tid; q < rows * R; q += nt) {
            const int r = q / R, rr = q % R;
            const float* wrow = wsm + rr * W;
            const float* xrow = dxs + r * W;
            float s = 0.f;
            for (int i = 0; i < nt; ++i) s += wrow[i] * xrow[i];
            accdts[(s0 - t0 + r) * R + rr] += s;
          }
          c.sync();
        }
        if (active) {
          const int64_t ps = part_slot(p, slot, k, jslot, d);
          const bool first = b == slot && j == jslot;
          VSSM_UNROLL
          for (int n = 0; n < kN; ++n)
            if (n < N) add_part(p.dA_part, ps * N + n, dA[n], first);
          if (p.has_D) add_part(p.dD_part, ps, dD, first);
          if (p.has_bias) add_part(p.dbias_part, ps, dbias, first);
          for (int q = 0; q < R; ++q) add_part(p.dW_part, ps * R + q, dwsm[q * nt + tid], first);
        }
      }
      // accbc/accdts were last written before the final barrier of the tile loop
      for (int q = tid; q < len * N; q += nt) {
        const int n = q / len, r = q % len;  // time fastest: coalesced rows of time-contiguous B/C
        st<T>(p.dC, at4(p.sdC, b, k, n, t0 + r), accbc[(0 * len + r) * N + n]);
        st<T>(p.dB, at4(p.sdB, b, k, n, t0 + r), accbc[(1 * len + r) * N + n]);
      }
      for (int q = tid; q < len * R; q += nt) {
        const int rr = q / len, r = q % len;
        st<T>(p.ddelta, at4(p.sdd, b, k, rr, t0 + r), accdts[r * R + rr]);
      }
      c.sync();  // the next (batch, chunk) clears accbc/accdts
    }
  }
};

// Pass B4 (only when the last direction does not cover the map): du = acc (map u), dz = silu'(z) *
// (grad_out * scale * accy | accy for 'none'). Flat grid over Bt*L*Dm.
template <typename T, int kN>
struct BackwardFinalizeBody {
  static constexpr const char* kName = "backward_finalize";
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int64_t i = static_cast<int64_t>(c.bx()) * c.nthreads() + c.tid();
    if (i >= static_cast<int64_t>(p.Bt) * p.L * p.Dm) return;
    const int d = static_cast<int>(i % p.Dm);
    const int64_t pos = (i / p.Dm) % p.L;
    const int b = static_cast<int>(i / (static_cast<int64_t>(p.Dm) * p.L));
    if (p.bwd_uses_acc()) st<T>(p.du, at4(p.sdu, b, 0, d, pos), p.acc[i]);
    if (p.bwd_uses_accy()) {
      const float zv = ld<T>(p.z, at4(p.sz, b, 0, d, pos));
      float g = p.accy[i];
      if (p.merge != kMergeNone) g *= ld<T>(p.gout, at4(p.sg, b, 0, d, pos)) * p.scale;
      st<T>(p.dz, at4(p.sdz, b, 0, d, pos), g * dsilu_f(zv));
    }
  }
};

}  // namespace vssm
