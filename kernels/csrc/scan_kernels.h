// The plan-scan kernels as portable block bodies.
//
// Each body is a struct with `template <class Ctx> static void run(const Ctx&, const ScanParams&, float* smem)`:
// Ctx gives the thread and block indices and the block barrier. Under nvcc, Ctx reads threadIdx/blockIdx
// and syncs with __syncthreads (cuda_device.cuh); on the CPU, emulator.h runs every thread of a block as a
// fiber with a real barrier, so the same code is tested without a GPU.
//
// Notation: batch b, direction k, channel d (global channel c = k*Dm + d), state n, step t along the
// direction, pos = index[k, t] the map position (-1: padding). One thread scans one channel of one chunk.
#pragma once
#include <math.h>

#include <cmath>

#include "scan_params.h"

#if defined(__CUDACC__)
#define VSSM_DEVICE __device__ __forceinline__
#else
#define VSSM_DEVICE inline
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
VSSM_DEVICE int64_t map_slot(const ScanParams& p, int b, int64_t pos, int d) {
  return (static_cast<int64_t>(b) * p.L + pos) * p.Dm + d;  // channel-last (Bt, L, Dm) accumulators
}

// One channel's constants and the per-step loads through the index map.
template <typename T, int kN>
struct Channel {
  const ScanParams& p;
  int b, k, d;
  float A[kN];
  float Dv, bias;

  VSSM_DEVICE Channel(const ScanParams& p_, int b_, int k_, int d_) : p(p_), b(b_), k(k_), d(d_) {
    const int64_t c = static_cast<int64_t>(k) * p.Dm + d;
#pragma unroll
    for (int n = 0; n < kN; ++n) A[n] = n < p.N ? p.A[c * p.N + n] : 0.f;
    Dv = p.has_D ? p.D[c] : 0.f;
    bias = p.has_bias ? p.bias[c] : 0.f;
  }
  VSSM_DEVICE int64_t pos(int t) const { return p.index[static_cast<int64_t>(k) * p.Lk + t]; }
  VSSM_DEVICE float u(int t, int64_t pos_) const {
    if (p.seq_u) return ld<T>(p.u, b * p.su[0] + k * p.su[1] + d * p.su[2] + t * p.su[3]);
    return pos_ >= 0 ? ld<T>(p.u, b * p.su[0] + d * p.su[2] + pos_ * p.su[3]) : 0.f;  // padding reads zero
  }
  VSSM_DEVICE float delta_in(int t) const {  // delta + bias, before softplus
    return ld<T>(p.delta, b * p.sdelta[0] + k * p.sdelta[1] + d * p.sdelta[2] + t * p.sdelta[3]) + bias;
  }
  VSSM_DEVICE float dt(float x) const { return p.softplus ? softplus_f(x) : x; }
  VSSM_DEVICE float Bv(int n, int t) const { return ld<T>(p.Bm, b * p.sB[0] + k * p.sB[1] + n * p.sB[2] + t * p.sB[3]); }
  VSSM_DEVICE float Cv(int n, int t) const { return ld<T>(p.Cm, b * p.sC[0] + k * p.sC[1] + n * p.sC[2] + t * p.sC[3]); }
  VSSM_DEVICE float gate(int64_t pos_) const { return silu_f(ld<T>(p.z, b * p.sz[0] + d * p.sz[1] + pos_ * p.sz[2])); }
  VSSM_DEVICE float grad_out(int64_t pos_) const {
    return ld<T>(p.gout, b * p.sg[0] + k * p.sg[1] + d * p.sg[2] + pos_ * p.sg[3]);
  }
  // gradient reaching this direction's output y at step t: the merge scale and the z gate applied
  VSSM_DEVICE float grad_y(int64_t pos_) const {
    if (pos_ < 0) return 0.f;
    float g = grad_out(pos_) * p.scale;
    if (p.has_z) g *= gate(pos_);
    return g;
  }
  // h <- exp(dt*A) h + dt*B*u
  VSSM_DEVICE void step(float* h, int t, float dtv, float uv) const {
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < p.N) h[n] = expf(dtv * A[n]) * h[n] + dtv * Bv(n, t) * uv;
  }
  VSSM_DEVICE void load_state(float* h, const float* src) const {
#pragma unroll
    for (int n = 0; n < kN; ++n) h[n] = n < p.N ? src[n] : 0.f;
  }
};

// ------------------------------------------------------------------------------------------------ forward

// Pass 1 (only with several chunks): each chunk scanned from a zero state; its end state and sum of delta.
// Grid (nchunks, Bt*K, ntiles), block `tile`.
template <typename T, int kN>
struct ChunkStateBody {
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int j = c.bx(), b = c.by() / p.K, k = c.by() % p.K;
    const int d = c.bz() * p.tile + c.tid();
    if (d >= p.Dm) return;  // no barrier in this body
    Channel<T, kN> ch(p, b, k, d);
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk);
    float h[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n) h[n] = 0.f;
    float sum_dt = 0.f;
    for (int t = t0; t < t1; ++t) {
      const int64_t pos = ch.pos(t);
      const float dtv = ch.dt(ch.delta_in(t));
      ch.step(h, t, dtv, ch.u(t, pos));
      sum_dt += dtv;
    }
    const int64_t s = state_slot(p, b, k, j, d);
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < p.N) p.states[s * p.N + n] = h[n];
    p.sdt[s] = sum_dt;
  }
};

// Pass 2: chain the chunks of each (b, k, d, n) in order; states[j] becomes the state entering chunk j.
// Flat grid over Bt*K*Dm*N.
template <typename T, int kN>
struct ChunkCombineBody {
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

// Pass 3, one launch per direction k (launches run in order, so the merge adds directions in a fixed order
// without atomics): scan each chunk from its entering state and write y through the index map.
// sum/mean: acc[b, pos, d] += y;  none: out[b, k, d, pos] = y * silu(z).  Grid (nchunks, Bt, ntiles).
template <typename T, int kN>
struct ChunkOutputBody {
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int j = c.bx(), b = c.by(), k = p.k;
    const int d = c.bz() * p.tile + c.tid();
    if (d >= p.Dm) return;
    Channel<T, kN> ch(p, b, k, d);
    float h[kN];
    if (p.nchunks > 1) {
      ch.load_state(h, p.states + state_slot(p, b, k, j, d) * p.N);
    } else {
#pragma unroll
      for (int n = 0; n < kN; ++n) h[n] = 0.f;
    }
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk);
    for (int t = t0; t < t1; ++t) {
      const int64_t pos = ch.pos(t);
      const float uv = ch.u(t, pos);
      ch.step(h, t, ch.dt(ch.delta_in(t)), uv);
      if (pos < 0) continue;  // padded steps advance the state but have no output
      float y = ch.Dv * uv;
#pragma unroll
      for (int n = 0; n < kN; ++n)
        if (n < p.N) y += ch.Cv(n, t) * h[n];
      if (p.merge == kMergeNone) {
        if (p.has_z) y *= ch.gate(pos);
        st<T>(p.out, b * p.so[0] + k * p.so[1] + d * p.so[2] + pos * p.so[3], y);
      } else {
        p.acc[map_slot(p, b, pos, d)] += y;
      }
    }
  }
};

// Pass 4 (sum/mean): out = acc * scale * silu(z), cast. Flat grid over Bt*L*Dm (d fastest).
template <typename T, int kN>
struct MapFinalizeBody {
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int64_t i = static_cast<int64_t>(c.bx()) * c.nthreads() + c.tid();
    if (i >= static_cast<int64_t>(p.Bt) * p.L * p.Dm) return;
    const int d = static_cast<int>(i % p.Dm);
    const int64_t pos = (i / p.Dm) % p.L;
    const int b = static_cast<int>(i / (static_cast<int64_t>(p.Dm) * p.L));
    float v = p.acc[i] * p.scale;
    if (p.has_z) v *= silu_f(ld<T>(p.z, b * p.sz[0] + d * p.sz[1] + pos * p.sz[2]));
    st<T>(p.out, b * p.so[0] + d * p.so[2] + pos * p.so[3], v);  // in place when out is the fp32 acc
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
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int j = c.bx(), b = c.by() / p.K, k = c.by() % p.K;
    const int d = c.bz() * p.tile + c.tid();
    if (d >= p.Dm) return;
    Channel<T, kN> ch(p, b, k, d);
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk);
    float carry[kN];
#pragma unroll
    for (int n = 0; n < kN; ++n) carry[n] = 0.f;
    for (int t = t1 - 1; t >= t0; --t) {
      const int64_t pos = ch.pos(t);
      const float gy = ch.grad_y(pos);
      const float dtv = ch.dt(ch.delta_in(t));
#pragma unroll
      for (int n = 0; n < kN; ++n)
        if (n < p.N) carry[n] = expf(dtv * ch.A[n]) * (gy * ch.Cv(n, t) + carry[n]);
    }
    const int64_t s = state_slot(p, b, k, j, d);
#pragma unroll
    for (int n = 0; n < kN; ++n)
      if (n < p.N) p.carries[s * p.N + n] = carry[n];
  }
};

// Pass B2: chain carries backwards: carries[j] becomes the carry entering chunk j from chunk j+1.
// carry_in(j) = out(j+1) + exp(A * sdt[j+1]) * carry_in(j+1). Flat grid over Bt*K*Dm*N.
template <typename T, int kN>
struct CarryCombineBody {
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

// Pass B3, one launch per direction k: grid (nchunks, Bt), block `tile`; the block walks every channel tile
// of its chunk so that dB/dC (shared by all channels of a direction) are summed inside the block in a fixed
// order. Per tile, each thread (one channel) scans its chunk forward keeping a checkpoint every `sub` steps,
// then goes backward one sub-chunk at a time, recomputing that sub-chunk's states into shared memory.
// Writes ddelta, du (sequences) or acc (map du, += in direction order), accy (for dz), dB, dC, and per-chunk
// partials of dA (into `states`, whose entering state it has consumed), dD and delta_bias.
template <typename T, int kN>
struct BackwardMainBody {
  static constexpr bool kUsesBarrier = true;
  static constexpr int kMinBlocks = 1;  // up to 255 registers: d_state 16 keeps h, carry, dA and A in registers
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float* smem) {
    const int j = c.bx(), b = c.by(), k = p.k, tid = c.tid(), nt = c.nthreads();
    const int N = p.N, S = p.sub, W = nt + 1;  // W: padded row of the reduction buffer
    const int t0 = j * p.chunk, t1 = imin(p.Lk, t0 + p.chunk), len = t1 - t0;
    const int nsub = (len + S - 1) / S;
    const int max_nsub = (p.chunk + S - 1) / S;
    float* ckpt = smem;                             // [max_nsub][N][nt]: state before each sub-chunk
    float* hs = ckpt + max_nsub * N * nt;           // [S][N][nt]: state after each step of the sub-chunk
    float* red = hs + S * N * nt;                   // [2][S][N][W]: per-thread dC (0) / dB (1) terms
    float* accbc = red + 2 * S * N * W;             // [2][len][N]: this chunk's dC / dB

    for (int i = tid; i < 2 * len * N; i += nt) accbc[i] = 0.f;
    c.sync();

    for (int tile = 0; tile < p.ntiles; ++tile) {
      const int d = tile * nt + tid;
      const bool active = d < p.Dm;
      Channel<T, kN> ch(p, b, k, active ? d : 0);
      const int64_t slot = state_slot(p, b, k, j, active ? d : 0);
      float h[kN], carry[kN], dA[kN];
#pragma unroll
      for (int n = 0; n < kN; ++n) h[n] = carry[n] = dA[n] = 0.f;
      if (active && p.nchunks > 1) {
        ch.load_state(h, p.states + slot * N);
        ch.load_state(carry, p.carries + slot * N);
      }
      float dD = 0.f, dbias = 0.f;

      // forward over the chunk, checkpointing the state before each sub-chunk
      for (int sb = 0; sb < nsub; ++sb) {
#pragma unroll
        for (int n = 0; n < kN; ++n)
          if (n < N) ckpt[(sb * N + n) * nt + tid] = h[n];
        if (!active) continue;
        const int s1 = imin(t1, t0 + (sb + 1) * S);
        for (int t = t0 + sb * S; t < s1; ++t) ch.step(h, t, ch.dt(ch.delta_in(t)), ch.u(t, ch.pos(t)));
      }

      for (int sb = nsub - 1; sb >= 0; --sb) {
        const int s0 = t0 + sb * S, s1 = imin(t1, s0 + S), rows = s1 - s0;
        if (active) {
#pragma unroll
          for (int n = 0; n < kN; ++n) h[n] = n < N ? ckpt[(sb * N + n) * nt + tid] : 0.f;
          for (int t = s0; t < s1; ++t) {
            ch.step(h, t, ch.dt(ch.delta_in(t)), ch.u(t, ch.pos(t)));
#pragma unroll
            for (int n = 0; n < kN; ++n)
              if (n < N) hs[((t - s0) * N + n) * nt + tid] = h[n];
          }
        }
        for (int t = s1 - 1; t >= s0; --t) {
          const int r = t - s0;
          if (!active) {
            for (int n = 0; n < N; ++n) red[((0 * S + r) * N + n) * W + tid] = red[((1 * S + r) * N + n) * W + tid] = 0.f;
            continue;
          }
          const int64_t pos = ch.pos(t);
          const float uv = ch.u(t, pos);
          const float x = ch.delta_in(t);
          const float dtv = ch.dt(x);
          const float gy = ch.grad_y(pos);
          float du = ch.Dv * gy, ddt = 0.f, y = ch.Dv * uv;
#pragma unroll
          for (int n = 0; n < kN; ++n) {
            if (n >= N) continue;
            const float hprev = r > 0 ? hs[((r - 1) * N + n) * nt + tid] : ckpt[(sb * N + n) * nt + tid];
            const float hcur = hs[(r * N + n) * nt + tid];
            const float a = expf(dtv * ch.A[n]);
            const float Bn = ch.Bv(n, t), Cn = ch.Cv(n, t);
            const float gh = gy * Cn + carry[n];
            red[((0 * S + r) * N + n) * W + tid] = gy * hcur;      // dC
            red[((1 * S + r) * N + n) * W + tid] = gh * dtv * uv;  // dB
            du += gh * dtv * Bn;
            ddt += gh * (ch.A[n] * a * hprev + Bn * uv);
            dA[n] += gh * dtv * a * hprev;
            carry[n] = a * gh;
            y += Cn * hcur;
          }
          dD += gy * uv;
          float dx = ddt;
          if (p.softplus && x <= 20.f) dx *= sigmoid_f(x);
          dbias += dx;
          st<T>(p.ddelta, b * p.sdd[0] + k * p.sdd[1] + d * p.sdd[2] + t * p.sdd[3], dx);
          if (p.seq_u) {
            st<T>(p.du, b * p.sdu[0] + k * p.sdu[1] + d * p.sdu[2] + t * p.sdu[3], du);
          } else if (pos >= 0) {
            p.acc[map_slot(p, b, pos, d)] += du;
          }
          if (p.has_z && pos >= 0) {
            // dz needs sum over directions of y (sum/mean) or of grad_out * y (none: one output per direction)
            const float w = p.merge == kMergeNone ? ch.grad_out(pos) : 1.f;
            p.accy[map_slot(p, b, pos, d)] += w * y;
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
        c.sync();
      }
      if (active) {
#pragma unroll
        for (int n = 0; n < kN; ++n)
          if (n < N) p.states[slot * N + n] = dA[n];
        p.dD_part[slot] = dD;
        p.dbias_part[slot] = dbias;
      }
    }
    // accbc was last written before the final barrier of the tile loop
    for (int q = tid; q < len * N; q += nt) {
      const int n = q / len, r = q % len;  // time fastest: coalesced (Bt, K, N, Lk) rows
      const int64_t o = ((static_cast<int64_t>(b) * p.K + k) * N + n) * p.Lk + t0 + r;
      p.dC[o] = accbc[(0 * len + r) * N + n];
      p.dB[o] = accbc[(1 * len + r) * N + n];
    }
  }
};

// Pass B4: map gradients. du = acc (map u), dz = silu'(z) * (grad_out * scale * accy | accy for 'none').
// Flat grid over Bt*L*Dm.
template <typename T, int kN>
struct BackwardFinalizeBody {
  template <class Ctx>
  VSSM_DEVICE static void run(const Ctx& c, const ScanParams& p, float*) {
    const int64_t i = static_cast<int64_t>(c.bx()) * c.nthreads() + c.tid();
    if (i >= static_cast<int64_t>(p.Bt) * p.L * p.Dm) return;
    const int d = static_cast<int>(i % p.Dm);
    const int64_t pos = (i / p.Dm) % p.L;
    const int b = static_cast<int>(i / (static_cast<int64_t>(p.Dm) * p.L));
    if (!p.seq_u) st<T>(p.du, b * p.sdu[0] + d * p.sdu[2] + pos * p.sdu[3], p.acc[i]);
    if (p.has_z) {
      const float zv = ld<T>(p.z, b * p.sz[0] + d * p.sz[1] + pos * p.sz[2]);
      float g = p.accy[i];
      if (p.merge != kMergeNone) g *= ld<T>(p.gout, b * p.sg[0] + d * p.sg[2] + pos * p.sg[3]) * p.scale;
      st<T>(p.dz, b * p.sdz[0] + d * p.sdz[1] + pos * p.sdz[2], g * dsilu_f(zv));
    }
  }
};

}  // namespace vssm
