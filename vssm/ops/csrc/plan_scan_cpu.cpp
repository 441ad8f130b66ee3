// Fused plan selective scan for the CPU (the 'cpu' backend of vssm.ops.plan_selective_scan), v2.
//
// One call reads the map along every direction of a plan through its index map, computes Δ per step
// (low-rank: Δ = W_k · dts_t + bias, never stored; or a full Δ read with its strides), runs the Mamba-1
// recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t · h_t + D u_t, and writes the merged
// output channel-last (sum / mean / none / group, gated by silu(z)). Backward returns every gradient,
// d(dts) and d(W) included, without materialising dΔ (B, K, D, L).
//
// Cost model (B batch, K directions, D channels per direction, L map positions, Lk steps per direction,
// N states, R = rank of Δ, P = R + 2N floats per step in the projection row [dts | B | C]; 16 channels
// form one lane vector, V = ceil(D / 16) vectors):
//
//   work split   tasks = (batch item, or batch group in backward) x channel group (K for 'group', else 1)
//                x channel block of whole vectors. The K directions are walked inside the task in a fixed
//                order (k = 0..K-1), so a task owns every output element of its block and no two tasks
//                write the same float. split_work() aims at TARGET_TASKS = 32 tasks from the shapes only,
//                never from the thread count: results are bitwise equal run to run and for any
//                torch.get_num_threads(). Batch 1 still gets min(V, 32) tasks (6 for VMamba-T stage 1),
//                spread over at::parallel_for's threads.
//   forward      per (vector, direction), in blocks of STEP_BLOCK = 32 steps: pass 1 computes Δ, softplus
//                and the decays exp(Δ A_n) for the block (no carried dependency, so it runs at ALU
//                throughput: R + ~45 + N x ~12 vector ops per step); pass 2 is the recurrence, a few FMAs
//                per state, reading u at the visited position (one 64 B line when u is channel-last) and
//                adding y into the output (the vector's output column, L x 64 B, stays in L2 while the
//                K directions add into it); then one gate/scale pass per column.
//                Memory per image: u and y D L floats each, K Lk P floats of rows; Δ is R FMAs per
//                channel-step instead of K D L floats of traffic (VMamba-T: 7.3 MB/image instead of 19.1
//                in fp16, DESIGN §2). Measured (docs/scan_kernel.md): about 25 ns per 16 channel-steps
//                on a shared AVX-512 core, ALU-bound.
//   backward     per (batch item, vector, direction): one forward pass keeping per step dt, softplus',
//                u, the upstream gradient, h[N] and exp(Δ A)[N] (16 lanes x (4 + 2N) floats, a per-task
//                store capped at STEP_STORE_BYTES = 8 MiB; longer directions are cut into chunks that
//                restart from checkpoint states: one extra forward pass), then the reverse walk.
//                Reads u, grad_out, z once per direction, writes du, dz, ddelta (full Δ only) once.
//                Channel sums per step (d(dts), dB, dC) are made 16 steps at a time: dB, dC by a
//                transpose-and-add tree (sum16), d(dts) as W . dv from one transposed dv block (R FMAs
//                per step); summed over the task's vectors in order into one row per channel block:
//                workspace B x K x blocks x P x Lk floats (blocks = 1 once batch >= 32), summed over
//                blocks in order by a final pass that writes the gradients in their tensors' strides.
//                Parameter gradients (dA, dD, d bias, dW) are accumulated per task over its batch items
//                and steps and stored per batch group (at most 32 copies of K x D x (N + 2 + R) floats),
//                summed over groups in order. No float atomics anywhere.
//
// Lanes are a GCC/Clang vector type, so the same code compiles for AVX-512, AVX2 or SSE (VSSM_CPU_NATIVE=0);
// exp2 uses AVX-512's roundscale/scalef where present. Built without -ffast-math: IEEE order, NaN kept.
// Inputs are float32 (the Python wrapper converts other dtypes; float64 never comes here). Shapes,
// dtypes, contiguity and index values are checked here too (TORCH_CHECK), so a direct call with a bad
// index raises instead of writing out of bounds.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>
#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

constexpr int64_t VL = 16;                   // channel lanes per vector (one AVX-512 register)
constexpr int64_t TARGET_TASKS = 32;         // tasks per call the split aims at (shape-only)
constexpr int64_t STEP_STORE_BYTES = 8 << 20;  // backward per-task step store before chunking

enum Merge : int64_t { kSum = 0, kMean = 1, kNone = 2, kGroup = 3 };

struct Problem {
  int64_t B = 0, K = 0, Dm = 0, L = 0, Lk = 0, N = 0, R = 0, P = 0;
  int64_t merge = kSum;
  bool softplus = true, seq_u = false, low_rank = false;
  float scale = 1.f;  // 1/K for 'mean'
  // u: map (B, Cmap, L) -> strides [b, ch, pos]; sequences (B, K, Dm, Lk) -> [b, k, c, t]
  const float* u = nullptr;
  int64_t u_sb = 0, u_sk = 0, u_sc = 0, u_sl = 0;
  // full Δ (B, K, Dm, Lk), any strides (low rank: unused)
  const float* delta = nullptr;
  int64_t d_sb = 0, d_sk = 0, d_sc = 0, d_st = 0;
  const float* W = nullptr;     // (K, Dm, R) contiguous, low rank only
  const float* A = nullptr;     // (K*Dm, N) contiguous
  const float* proj = nullptr;  // (B, K, Lk, P) contiguous: [dts (R) | B (N) | C (N)] per step
  const float* Dv = nullptr;    // (K*Dm,) or null
  const float* bias = nullptr;  // (K*Dm,) or null
  const float* z = nullptr;     // map (B, Cmap, L) or null
  int64_t z_sb = 0, z_sc = 0, z_sl = 0;
  const int64_t* index = nullptr;  // (K, Lk) contiguous

  bool grouped() const { return merge == kGroup; }
  int64_t groups() const { return grouped() ? K : 1; }
  int64_t map_channels() const { return grouped() ? K * Dm : Dm; }
};

// The work split: a function of the shapes only, so the arithmetic (and every reduction's order) is the
// same whatever the thread count.
struct Split {
  int64_t vectors = 0;   // 16-lane vectors per channel group
  int64_t blocks = 0;    // channel blocks per group
  int64_t per_block = 0; // vectors per block
  int64_t bgroups = 0;   // batch groups (backward)
  int64_t per_bgroup = 0;
};

Split split_work(const Problem& p) {
  Split s;
  s.vectors = (p.Dm + VL - 1) / VL;
  s.bgroups = std::min<int64_t>(p.B, TARGET_TASKS);
  s.per_bgroup = (p.B + s.bgroups - 1) / s.bgroups;
  s.bgroups = (p.B + s.per_bgroup - 1) / s.per_bgroup;
  const int64_t want = (TARGET_TASKS + s.bgroups * p.groups() - 1) / (s.bgroups * p.groups());
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(s.vectors, want));
  s.per_block = (s.vectors + blocks - 1) / blocks;
  s.blocks = (s.vectors + s.per_block - 1) / s.per_block;
  return s;
}

// ------------------------------------------------------------------------------- lane arithmetic
// 16 channel lanes are one value of a GCC/Clang vector type: one zmm register with AVX-512, two ymm with
// AVX2, four xmm with SSE: the compiler lowers it for the target, so the code is the same on every ISA.
// exp, log1p and softplus are inline and branch-free (no calls into a vector math library).

typedef float V __attribute__((vector_size(VL * sizeof(float))));
typedef int32_t VI __attribute__((vector_size(VL * sizeof(float))));

inline V vload(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, V v) { std::memcpy(p, &v, sizeof v); }
inline V splat(float x) { return V{} + x; }
inline V vmin(V a, V b) { return a < b ? a : b; }
inline V vmax(V a, V b) { return a > b ? a : b; }

// 16 lanes at a channel stride, zero past nl live lanes (the slow path: a partial vector or a channel-first
// tensor); the fast path loads in place.
inline V vgather(const float* p, int64_t stride, int64_t nl) {
  V v = V{};
  for (int64_t l = 0; l < nl; ++l) v[l] = p[l * stride];
  return v;
}
inline void vscatter(float* p, int64_t stride, int64_t nl, V v, bool add) {
  for (int64_t l = 0; l < nl; ++l) p[l * stride] = add ? p[l * stride] + v[l] : v[l];
}

constexpr float kLog2e = 1.44269504088896341f;

// 2^y for y <= 0: y = n + f with n = round(y) (the 1.5 * 2^23 trick, exact since this file is never built
// with -ffast-math), f in [-1/2, 1/2]; 2^f by a degree-6 minimax polynomial (relative error 1e-7);
// 2^n from n's bits. Clamped at -125 so results stay normal floats (no denormal slow paths).
inline V exp2_neg(V y) {
  y = y < -125.0f ? splat(-125.0f) : y;  // not vmax: a NaN must stay NaN (vmax(NaN, c) gives c)
#if defined(__AVX512F__)
  // AVX-512: round and scale by 2^n in one instruction each
  const V n = (V)_mm512_roundscale_ps((__m512)y, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const V f = y - n;
#else
  const V t = y + 12582912.0f;
  const V f = y - (t - 12582912.0f);
#endif
  // Estrin's scheme: a short dependency chain (the caller's loops have no carried dependency)
  const V f2 = f * f, f4 = f2 * f2;
  const V p01 = f * 6.931471824645996e-1f + 1.0f;
  const V p23 = f * 5.550328642129898e-2f + 2.4022646248340607e-1f;
  const V p45 = f * 1.3399930903688073e-3f + 9.618489071726799e-3f;
  const V p46 = f2 * 1.5345805149991065e-4f + p45;
  const V q = p46 * f4 + (p23 * f2 + p01);
#if defined(__AVX512F__)
  return (V)_mm512_scalef_ps((__m512)q, (__m512)n);
#else
  const VI bits = ((VI)t - 0x4B400000 + 127) << 23;  // 0x4B400000: the bits of 1.5 * 2^23
  return q * (V)bits;
#endif
}

// log1p(w) for w in [0, 1]: w * q(w), q a degree-8 minimax fit of log1p(w) / w (relative error 2e-7)
inline V log1p_unit(V w) {
  const V w2 = w * w, w4 = w2 * w2;
  const V a01 = w * -4.9999552965164185e-1f + 1.0f;
  const V a23 = w * -2.485293745994568e-1f + 3.3320343494415283e-1f;
  const V a45 = w * -1.3746555149555206e-1f + 1.9145084917545319e-1f;
  const V a67 = w * -3.011048585176468e-2f + 7.920995354652405e-2f;
  const V a07 = (a67 * w2 + a45) * w4 + (a23 * w2 + a01);
  return w * (w4 * w4 * 5.383943673223257e-3f + a07);
}

inline V vabs(V x) { return (V)((VI)x & 0x7fffffff); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), x itself above 20 as in mamba; *sg = its derivative
inline V softplus(V x, V* sg) {
  const V w = exp2_neg(vabs(x) * -kLog2e);
  const VI big = x > 20.0f;
  if (sg) *sg = big ? splat(1.0f) : (x >= 0.0f ? splat(1.0f) : w) / (w + 1.0f);
  return big ? x : vmax(x, V{}) + log1p_unit(w);
}

// sigmoid(x) = (x >= 0 ? 1 : e) / (1 + e), e = exp(-|x|)
inline V sigmoid(V x) {
  const V w = exp2_neg(vabs(x) * -kLog2e);
  return (x >= 0.0f ? splat(1.0f) : w) / (w + 1.0f);
}

// The sums of 16 lane vectors x[0..15] (overwritten), as one vector in t order: element i holds the sum of
// x[15 - i] (the reverse walk fills x[j] at step tstart - j). A fixed transpose-and-add tree: 15 folds
// of two shuffles and one add, against 4 shuffles and 4 adds per single horizontal sum.
#if defined(__clang__)
#define VSSM_SHUFFLE2(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#define VSSM_SHUFFLE1(a, ...) __builtin_shufflevector(a, a, __VA_ARGS__)
#else
#define VSSM_SHUFFLE2(a, b, ...) __builtin_shuffle(a, b, VI{__VA_ARGS__})
#define VSSM_SHUFFLE1(a, ...) __builtin_shuffle(a, VI{__VA_ARGS__})
#endif
inline V sum16(V* x) {
  for (int i = 0; i < 8; ++i)  // halves of 8 lanes: [x_2i | x_2i+1]
    x[i] = VSSM_SHUFFLE2(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           VSSM_SHUFFLE2(x[2 * i], x[2 * i + 1], 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  for (int i = 0; i < 4; ++i)  // quarters
    x[i] = VSSM_SHUFFLE2(x[2 * i], x[2 * i + 1], 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           VSSM_SHUFFLE2(x[2 * i], x[2 * i + 1], 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  for (int i = 0; i < 2; ++i)  // pairs
    x[i] = VSSM_SHUFFLE2(x[2 * i], x[2 * i + 1], 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           VSSM_SHUFFLE2(x[2 * i], x[2 * i + 1], 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  const V s = VSSM_SHUFFLE2(x[0], x[1], 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
              VSSM_SHUFFLE2(x[0], x[1], 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  // lane m holds the sum of x[bitreverse4(m)]; element i must hold x[15 - i]: m = bitreverse4(15 - i)
  return VSSM_SHUFFLE1(s, 15, 7, 11, 3, 13, 5, 9, 1, 14, 6, 10, 2, 12, 4, 8, 0);
}

// Transposes 16 lane vectors in place (x[i][l] <-> x[l][i]): four butterfly levels, each swapping bit s of
// the row and lane indices with two-input shuffles.
inline void transpose16(V* x) {
  for (int i = 0; i < 16; ++i) {
    if (i & 8) continue;
    const V a = x[i], b = x[i + 8];
    x[i] = VSSM_SHUFFLE2(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23);
    x[i + 8] = VSSM_SHUFFLE2(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
  }
  for (int i = 0; i < 16; ++i) {
    if (i & 4) continue;
    const V a = x[i], b = x[i + 4];
    x[i] = VSSM_SHUFFLE2(a, b, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27);
    x[i + 4] = VSSM_SHUFFLE2(a, b, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
  }
  for (int i = 0; i < 16; ++i) {
    if (i & 2) continue;
    const V a = x[i], b = x[i + 2];
    x[i] = VSSM_SHUFFLE2(a, b, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29);
    x[i + 2] = VSSM_SHUFFLE2(a, b, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
  }
  for (int i = 0; i < 16; i += 2) {
    const V a = x[i], b = x[i + 1];
    x[i] = VSSM_SHUFFLE2(a, b, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30);
    x[i + 1] = VSSM_SHUFFLE2(a, b, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
  }
}

inline V reversed(V v) { return VSSM_SHUFFLE1(v, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0); }

// Per (vector, direction) constants: A, W, bias, D for 16 channels (padded lanes zero, so they add
// exact zeros to every channel sum).
struct VecConsts {
  std::vector<V> A, A2, W;  // [n] (A2 = A log2 e, for exp2), [r]
  V bias{}, D{};
  int64_t nl = 0;  // live lanes

  void load(const Problem& p, int64_t k, int64_t c0) {
    nl = std::min<int64_t>(VL, p.Dm - c0);
    A.assign(p.N, V{});
    W.assign(std::max<int64_t>(p.R, 1), V{});
    bias = D = V{};
    for (int64_t l = 0; l < nl; ++l) {
      const int64_t pc = k * p.Dm + c0 + l;
      for (int64_t n = 0; n < p.N; ++n) A[n][l] = p.A[pc * p.N + n];
      if (p.low_rank)
        for (int64_t r = 0; r < p.R; ++r) W[r][l] = p.W[pc * p.R + r];
      if (p.bias) bias[l] = p.bias[pc];
      if (p.Dv) D[l] = p.Dv[pc];
    }
    A2.resize(p.N);
    for (int64_t n = 0; n < p.N; ++n) A2[n] = A[n] * kLog2e;
  }

  // Δ at one step (before softplus): bias + W . dts_t (low rank) or bias + the full Δ lanes
  V delta(const Problem& p, const float* row, V full) const {
    V v0 = bias + full, v1 = V{};
    int64_t r = 0;
    for (; r + 1 < p.R; r += 2) {  // two chains: half the dependency length
      v0 += W[r] * row[r];
      v1 += W[r + 1] * row[r + 1];
    }
    if (r < p.R) v0 += W[r] * row[r];
    return v0 + v1;
  }
};

// Low-rank Δ (before softplus) at n_steps steps from their projection rows, DELTA_STEPS steps at a time.
// Per step it is R FMAs; done one step at a time (delta()) they are two dependent chains, so they run at
// FMA latency and reload every W[r]. Here each W[r] is loaded once per DELTA_STEPS steps and the
// 2 x DELTA_STEPS chains are independent, so the FMAs run at throughput (R = 48 at VMamba-T stage 4, where
// this was most of the forward's time). Each step's sum keeps delta()'s order (even r in one chain, odd r
// in the other), so the result is bitwise the same as delta()'s.
constexpr int64_t DELTA_STEPS = 4;  // 8 accumulators + 2 weights: registers on AVX-512, close on AVX2

inline void low_rank_deltas(const Problem& p, const VecConsts& vc, const float* rows, int64_t n_steps, V* dt,
                            int64_t stride) {
  const int64_t R = p.R, P = p.P;
  int64_t i = 0;
  for (; i + DELTA_STEPS <= n_steps; i += DELTA_STEPS) {
    const float* row = rows + i * P;
    V even[DELTA_STEPS], odd[DELTA_STEPS];
    for (int64_t j = 0; j < DELTA_STEPS; ++j) {
      even[j] = vc.bias + V{};
      odd[j] = V{};
    }
    int64_t r = 0;
    for (; r + 1 < R; r += 2) {
      const V w0 = vc.W[r], w1 = vc.W[r + 1];
      for (int64_t j = 0; j < DELTA_STEPS; ++j) {
        even[j] += w0 * row[j * P + r];
        odd[j] += w1 * row[j * P + r + 1];
      }
    }
    if (r < R)
      for (int64_t j = 0; j < DELTA_STEPS; ++j) even[j] += vc.W[r] * row[j * P + r];
    for (int64_t j = 0; j < DELTA_STEPS; ++j) dt[(i + j) * stride] = even[j] + odd[j];
  }
  for (; i < n_steps; ++i) dt[i * stride] = vc.delta(p, rows + i * P, V{});
}

// The step-parallel part of steps [t0, t1): dt = softplus(Δ) (and softplus' into sg when given) and the
// decays exp(dt A_n), none of which depends on the state. Split into three loops with no carried
// dependency, so they run at throughput instead of waiting on one step's long exp/log chain; the
// recurrence that follows is a few FMAs per step. Element i goes to dt[i * stride], sg[i * stride],
// e[i * stride + n].
inline void step_decays(const Problem& p, const VecConsts& vc, int64_t b, int64_t k, int64_t c0, int64_t t0,
                        int64_t t1, V* dt, V* sg, V* e, int64_t stride) {
  const float* rows = p.proj + ((b * p.K + k) * p.Lk + t0) * p.P;
  const int64_t n_steps = t1 - t0, N = p.N;
  if (p.low_rank) {
    low_rank_deltas(p, vc, rows, n_steps, dt, stride);
  } else {
    for (int64_t i = 0; i < n_steps; ++i) {  // Δ before softplus
      const float* d = p.delta + b * p.d_sb + k * p.d_sk + c0 * p.d_sc + (t0 + i) * p.d_st;
      const V full = vc.nl == VL && p.d_sc == 1 ? vload(d) : vgather(d, p.d_sc, vc.nl);
      dt[i * stride] = vc.delta(p, rows + i * p.P, full);
    }
  }
  if (p.softplus) {
    for (int64_t i = 0; i < n_steps; ++i) dt[i * stride] = softplus(dt[i * stride], sg ? sg + i * stride : nullptr);
  } else if (sg) {
    for (int64_t i = 0; i < n_steps; ++i) sg[i * stride] = splat(1.0f);
  }
  for (int64_t i = 0; i < n_steps; ++i)
    for (int64_t n = 0; n < N; ++n) e[i * stride + n] = exp2_neg(dt[i * stride] * vc.A2[n]);
}

constexpr int64_t STEP_BLOCK = 32;  // steps whose decays the forward computes ahead of the recurrence

inline float* out_at(float* out, const Problem& p, int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t pos) {
  // channel-last: (B, L, Cmap) memory, or (B, K, L, Dm) for 'none'
  if (p.merge == kNone) return out + ((b * p.K + k) * p.L + pos) * p.Dm + c0;
  return out + (b * p.L + pos) * p.map_channels() + mch0;
}

// ------------------------------------------------------------------------------------------ forward

// u at one step: the map at the visited position (zero at padding) or the direction's own sequence.
inline V load_u(const Problem& p, int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t t, int64_t pos,
                int64_t nl) {
  const float* up;
  if (p.seq_u)
    up = p.u + b * p.u_sb + k * p.u_sk + c0 * p.u_sc + t * p.u_sl;
  else if (pos >= 0)
    up = p.u + b * p.u_sb + mch0 * p.u_sc + pos * p.u_sl;
  else
    return V{};
  return nl == VL && p.u_sc == 1 ? vload(up) : vgather(up, p.u_sc, nl);
}

// Where a direction's u, y (and gradients) live for one vector: base pointers and strides per map position
// (map) or per step (sequences), hoisted out of the step loops.
struct Lanes {
  const float* u_map = nullptr;  // + pos * u_pos (map u), or
  const float* u_seq = nullptr;  // + t * u_step (sequence u)
  int64_t u_pos = 0, u_step = 0;
  bool fast = false;  // 16 live lanes, channel stride 1: whole-vector loads and stores
};

inline Lanes lanes_of(const Problem& p, int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t nl) {
  Lanes w;
  if (p.seq_u) {
    w.u_seq = p.u + b * p.u_sb + k * p.u_sk + c0 * p.u_sc;
    w.u_step = p.u_sl;
  } else {
    w.u_map = p.u + b * p.u_sb + mch0 * p.u_sc;
    w.u_pos = p.u_sl;
  }
  w.fast = nl == VL && p.u_sc == 1;
  return w;
}

inline V load_u_fast(const Lanes& w, int64_t t, int64_t pos) {
  if (w.u_seq) return vload(w.u_seq + t * w.u_step);
  return pos >= 0 ? vload(w.u_map + pos * w.u_pos) : V{};
}

// The recurrence of one forward block with everything in registers (the state too when N = 1):
// h_n = e_n h_n + dt u B_n, y = C . h + D u, added to (ACC) or stored in the channel-last output.
template <bool ACC, bool N1>
inline void forward_recurrence(const Lanes& w, const int64_t* __restrict idx, int64_t t0, int64_t t1,
                               const float* __restrict rows, int64_t P, int64_t R, int64_t N,
                               const V* __restrict st, int64_t stride, V D, V* __restrict h, float* __restrict o_map,
                               int64_t o_pos) {
  V h0 = h[0];
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t pos = idx[t];
    const float* row = rows + t * P;
    const V* s = st + (t - t0) * stride;
    const V uv = load_u_fast(w, t, pos);
    const V dtu = s[0] * uv;
    V y = D * uv;
    if (N1) {
      h0 = s[1] * h0 + dtu * row[R];
      y += h0 * row[R + 1];
    } else {
      for (int64_t n = 0; n < N; ++n) {
        const V hv = s[1 + n] * h[n] + dtu * row[R + n];
        h[n] = hv;
        y += hv * row[R + N + n];
      }
    }
    if (pos >= 0) {
      float* o = o_map + pos * o_pos;
      vstore(o, ACC ? vload(o) + y : y);
    }
  }
  if (N1) h[0] = h0;
}

void forward_direction(const Problem& p, const VecConsts& vc, float* out, int64_t b, int64_t k, int64_t mch0,
                       int64_t c0, V* h, V* buf) {
  const int64_t nl = vc.nl, N = p.N, R = p.R, P = p.P, stride = 1 + N;
  const int64_t* idx = p.index + k * p.Lk;
  const float* rows = p.proj + (b * p.K + k) * p.Lk * P;
  const bool acc = p.merge != kNone;
  const Lanes w = lanes_of(p, b, k, mch0, c0, nl);
  float* o_map = out_at(out, p, b, k, mch0, c0, 0);
  const int64_t o_pos = p.merge == kNone ? p.Dm : p.map_channels();
  for (int64_t t0 = 0; t0 < p.Lk; t0 += STEP_BLOCK) {
    const int64_t t1 = std::min(p.Lk, t0 + STEP_BLOCK);
    step_decays(p, vc, b, k, c0, t0, t1, buf, nullptr, buf + 1, stride);
    if (w.fast) {
      if (acc && N == 1)
        forward_recurrence<true, true>(w, idx, t0, t1, rows, P, R, N, buf, stride, vc.D, h, o_map, o_pos);
      else if (acc)
        forward_recurrence<true, false>(w, idx, t0, t1, rows, P, R, N, buf, stride, vc.D, h, o_map, o_pos);
      else
        forward_recurrence<false, false>(w, idx, t0, t1, rows, P, R, N, buf, stride, vc.D, h, o_map, o_pos);
      continue;
    }
    for (int64_t t = t0; t < t1; ++t) {  // partial vector or strided u
      const int64_t pos = idx[t];
      const float* row = rows + t * P;
      const V* st = buf + (t - t0) * stride;
      const V uv = load_u(p, b, k, mch0, c0, t, pos, nl);
      const V dtu = st[0] * uv;
      V y = vc.D * uv;
      for (int64_t n = 0; n < N; ++n) {
        const V hv = st[1 + n] * h[n] + dtu * row[R + n];
        h[n] = hv;
        y += hv * row[R + N + n];
      }
      if (pos >= 0) vscatter(o_map + pos * o_pos, 1, nl, y, acc);
    }
  }
}

// Multiplies an output column by silu(z) and the merge's scale (after its directions are in).
void gate_column(const Problem& p, float* out, int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t nl) {
  for (int64_t pos = 0; pos < p.L; ++pos) {
    float* o = out_at(out, p, b, k, mch0, c0, pos);
    V gate = splat(p.scale);
    if (p.z) {
      const float* zp = p.z + b * p.z_sb + mch0 * p.z_sc + pos * p.z_sl;
      const V zv = nl == VL && p.z_sc == 1 ? vload(zp) : vgather(zp, p.z_sc, nl);
      gate = gate * zv * sigmoid(zv);
    }
    if (nl == VL)
      vstore(o, vload(o) * gate);
    else
      vscatter(o, 1, nl, vgather(o, 1, nl) * gate, false);
  }
}

void forward_task(const Problem& p, float* out, int64_t b, int64_t g, int64_t v_begin, int64_t v_end) {
  const int64_t k0 = p.grouped() ? g : 0, k1 = p.grouped() ? g + 1 : p.K;
  VecConsts vc;
  std::vector<V> h(p.N), buf(STEP_BLOCK * (1 + p.N));
  for (int64_t vi = v_begin; vi < v_end; ++vi) {
    const int64_t c0 = vi * VL, nl = std::min<int64_t>(VL, p.Dm - c0);
    const int64_t mch0 = (p.grouped() ? g * p.Dm : 0) + c0;
    // zero this vector's output column: a direction may skip positions (atrous, padding)
    for (int64_t k = (p.merge == kNone ? k0 : 0); k < (p.merge == kNone ? k1 : 1); ++k)
      for (int64_t pos = 0; pos < p.L; ++pos) std::memset(out_at(out, p, b, k, mch0, c0, pos), 0, nl * 4);
    for (int64_t k = k0; k < k1; ++k) {
      vc.load(p, k, c0);
      std::fill(h.begin(), h.end(), V{});
      forward_direction(p, vc, out, b, k, mch0, c0, h.data(), buf.data());
      if (p.merge == kNone && p.z) gate_column(p, out, b, k, mch0, c0, nl);
    }
    if (p.merge != kNone && (p.z || p.scale != 1.f)) gate_column(p, out, b, 0, mch0, c0, nl);
  }
}

// ----------------------------------------------------------------------------------------- checks

void check_f32(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), "plan_scan_cpu: ", name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat32, "plan_scan_cpu: ", name, " must be float32, got ",
              t.scalar_type());
}

bool present(const torch::Tensor& t) { return t.defined() && t.numel() > 0; }

// Fills a Problem from the inputs, checking everything the kernels rely on.
Problem make_problem(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& W,
                     const torch::Tensor& A, const torch::Tensor& proj, const torch::Tensor& Dv,
                     const torch::Tensor& bias, const torch::Tensor& z, const torch::Tensor& index, int64_t length,
                     int64_t merge, bool softplus) {
  Problem p;
  TORCH_CHECK(merge >= kSum && merge <= kGroup, "plan_scan_cpu: merge code must be 0..3 (sum, mean, none, group)");
  p.merge = merge;
  p.softplus = softplus;
  TORCH_CHECK(index.defined() && index.dim() == 2 && index.scalar_type() == torch::kLong && index.is_contiguous() &&
                  index.device().is_cpu(),
              "plan_scan_cpu: index must be a contiguous (K, Lk) int64 CPU tensor");
  p.K = index.size(0);
  p.Lk = index.size(1);
  p.L = length;
  TORCH_CHECK(p.K >= 1 && p.Lk >= 1 && p.L >= 1, "plan_scan_cpu: empty index or map");
  check_f32(A, "A");
  TORCH_CHECK(A.dim() == 2 && A.is_contiguous() && A.size(0) % p.K == 0 && A.size(1) >= 1,
              "plan_scan_cpu: A must be a contiguous (K*D, N) tensor");
  p.Dm = A.size(0) / p.K;
  p.N = A.size(1);
  TORCH_CHECK(p.Dm >= 1, "plan_scan_cpu: no channels");
  check_f32(proj, "proj");
  TORCH_CHECK(proj.dim() == 4 && proj.is_contiguous() && proj.size(1) == p.K && proj.size(2) == p.Lk &&
                  proj.size(3) >= 2 * p.N,
              "plan_scan_cpu: proj must be a contiguous (B, K, Lk, R + 2N) tensor");
  p.B = proj.size(0);
  TORCH_CHECK(p.B >= 1, "plan_scan_cpu: empty batch");
  p.P = proj.size(3);
  p.R = p.P - 2 * p.N;
  p.low_rank = present(W);
  if (p.low_rank) {
    check_f32(W, "delta_weight");
    TORCH_CHECK(W.dim() == 3 && W.is_contiguous() && W.size(0) == p.K && W.size(1) == p.Dm && W.size(2) == p.R &&
                    p.R >= 1,
                "plan_scan_cpu: delta_weight must be a contiguous (K, D, R) tensor matching proj's R");
  } else {
    TORCH_CHECK(p.R == 0, "plan_scan_cpu: proj carries dts but no delta_weight was given");
    check_f32(delta, "delta");
    TORCH_CHECK(delta.dim() == 4 && delta.size(0) == p.B && delta.size(1) == p.K && delta.size(2) == p.Dm &&
                    delta.size(3) == p.Lk,
                "plan_scan_cpu: delta must be (B, K, D, Lk)");
    p.delta = delta.data_ptr<float>();
    p.d_sb = delta.stride(0);
    p.d_sk = delta.stride(1);
    p.d_sc = delta.stride(2);
    p.d_st = delta.stride(3);
  }
  check_f32(u, "u");
  p.seq_u = u.dim() == 4;
  if (p.seq_u) {
    TORCH_CHECK(merge != kGroup, "plan_scan_cpu: merge 'group' needs a map u");
    TORCH_CHECK(u.size(0) == p.B && u.size(1) == p.K && u.size(2) == p.Dm && u.size(3) == p.Lk,
                "plan_scan_cpu: sequence u must be (B, K, D, Lk)");
    p.u_sb = u.stride(0);
    p.u_sk = u.stride(1);
    p.u_sc = u.stride(2);
    p.u_sl = u.stride(3);
  } else {
    TORCH_CHECK(u.dim() == 3 && u.size(0) == p.B && u.size(1) == p.map_channels() && u.size(2) == p.L,
                "plan_scan_cpu: map u must be (B, D, L) (B, K*D, L with merge 'group')");
    p.u_sb = u.stride(0);
    p.u_sc = u.stride(1);
    p.u_sl = u.stride(2);
  }
  p.u = u.data_ptr<float>();
  p.A = A.data_ptr<float>();
  p.W = p.low_rank ? W.data_ptr<float>() : nullptr;
  p.proj = proj.data_ptr<float>();
  for (auto* pr : {&Dv, &bias}) {
    if (present(*pr)) {
      check_f32(*pr, "D / delta_bias");
      TORCH_CHECK(pr->dim() == 1 && pr->is_contiguous() && pr->size(0) == p.K * p.Dm,
                  "plan_scan_cpu: D and delta_bias must be contiguous (K*D,)");
    }
  }
  p.Dv = present(Dv) ? Dv.data_ptr<float>() : nullptr;
  p.bias = present(bias) ? bias.data_ptr<float>() : nullptr;
  if (present(z)) {
    check_f32(z, "z");
    TORCH_CHECK(z.dim() == 3 && z.size(0) == p.B && z.size(1) == p.map_channels() && z.size(2) == p.L,
                "plan_scan_cpu: z must be a map (B, D, L) (B, K*D, L with merge 'group')");
    p.z = z.data_ptr<float>();
    p.z_sb = z.stride(0);
    p.z_sc = z.stride(1);
    p.z_sl = z.stride(2);
  }
  p.scale = merge == kMean ? 1.f / static_cast<float>(p.K) : 1.f;
  p.index = index.data_ptr<int64_t>();
  // every read and write goes through the index: positions must lie in [0, L) or be -1 (padding)
  const int64_t* ix = p.index;
  int64_t bad = 0;
  for (int64_t i = 0; i < p.K * p.Lk; ++i) bad += (ix[i] < -1) | (ix[i] >= p.L);
  TORCH_CHECK(bad == 0, "plan_scan_cpu: index holds ", bad, " value(s) outside [-1, ", p.L,
              "): entries must be map positions in [0, L) or -1 for padding");
  return p;
}

}  // namespace

torch::Tensor plan_scan_forward(torch::Tensor u, torch::Tensor delta, torch::Tensor W, torch::Tensor A,
                                torch::Tensor proj, torch::Tensor Dv, torch::Tensor bias, torch::Tensor z,
                                torch::Tensor index, int64_t length, int64_t merge, bool softplus) {
  const Problem p = make_problem(u, delta, W, A, proj, Dv, bias, z, index, length, merge, softplus);
  // channel-last output, the layout the LayerNorm after the scan reads without a copy
  torch::Tensor out;
  if (merge == kNone)
    out = torch::empty({p.B, p.K, p.L, p.Dm}, u.options()).transpose(2, 3);
  else
    out = torch::empty({p.B, p.L, p.map_channels()}, u.options()).transpose(1, 2);
  const Split s = split_work(p);
  float* o = out.data_ptr<float>();
  const int64_t G = p.groups(), per_b = G * s.blocks;
  // forward tasks: (batch item, channel group, block); no reductions cross tasks
  at::parallel_for(0, p.B * per_b, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_b, g = (task / s.blocks) % G, blk = task % s.blocks;
      const int64_t v0 = blk * s.per_block, v1 = std::min(s.vectors, v0 + s.per_block);
      forward_task(p, o, b, g, v0, v1);
    }
  });
  return out;
}

// ----------------------------------------------------------------------------------------- backward

namespace {

struct Grads {
  const float* g = nullptr;  // grad_out: map (B, Cmap, L) or (B, K, Dm, L) for 'none', any strides
  int64_t g_sb = 0, g_sk = 0, g_sc = 0, g_sl = 0;
  float* du = nullptr;  // u's layout (map or sequences)
  int64_t du_sb = 0, du_sk = 0, du_sc = 0, du_sl = 0;
  float* dz = nullptr;  // z's layout
  int64_t dz_sb = 0, dz_sc = 0, dz_sl = 0;
  float* ddelta = nullptr;  // full Δ only, Δ's layout
  int64_t dd_sb = 0, dd_sk = 0, dd_sc = 0, dd_st = 0;
  float* red = nullptr;  // (B, K, blocks, P, Lk): per channel block sums over channels, rows [dts | B | C]
  float* par = nullptr;  // (bgroups, K, Dm, Q): per batch group sums [dA (N) | dD | dbias | dW (R)]
  int64_t Q = 0;
};

class BackwardTask {
 public:
  BackwardTask(const Problem& p, const Grads& gr, const Split& s) : p_(p), gr_(gr), s_(s) {
    stride_ = 4 + 2 * p.N;  // per step: dt, softplus', u, gy, h[N], exp(dt A)[N]
    chunk_ = std::max<int64_t>(1, std::min<int64_t>(p.Lk, STEP_STORE_BYTES / (stride_ * int64_t(sizeof(V)))));
    store_.resize(chunk_ * stride_);
    nchunks_ = (p.Lk + chunk_ - 1) / chunk_;
    if (nchunks_ > 1) {
      checkpoints_.resize(nchunks_ * p.N);
      buf_.resize(STEP_BLOCK * stride_);
    }
    dh_.resize(p.N);
    h_.resize(p.N);
    hprev_.resize(p.N);
    accA_.resize(p.N);
    accW_.resize(std::max<int64_t>(p.R, 1));
    lane_.resize((1 + 2 * p.N) * VL);  // [dv | B (N) | C (N)] x 16 steps
  }

  void run(int64_t bg, int64_t g, int64_t blk) {
    const int64_t b0 = bg * s_.per_bgroup, b1 = std::min(p_.B, b0 + s_.per_bgroup);
    const int64_t v0 = blk * s_.per_block, v1 = std::min(s_.vectors, v0 + s_.per_block);
    const int64_t k0 = p_.grouped() ? g : 0, k1 = p_.grouped() ? g + 1 : p_.K;
    for (int64_t b = b0; b < b1; ++b) {
      for (int64_t vi = v0; vi < v1; ++vi) {
        const int64_t c0 = vi * VL, nl = std::min<int64_t>(VL, p_.Dm - c0);
        const int64_t mch0 = (p_.grouped() ? g * p_.Dm : 0) + c0;
        zero_map_grads(b, mch0, nl);
        for (int64_t k = k0; k < k1; ++k) {
          vc_.load(p_, k, c0);
          direction(b, k, mch0, c0, blk, /*first_vector=*/vi == v0, /*first_batch=*/b == b0);
        }
      }
    }
  }

 private:
  const Problem& p_;
  const Grads& gr_;
  const Split& s_;
  VecConsts vc_;
  int64_t stride_ = 0, chunk_ = 0, nchunks_ = 0;
  std::vector<V> store_, buf_, checkpoints_, dh_, h_, hprev_, accA_, accW_, lane_;
  V accD_{}, accBias_{};

  V* rec(int64_t i) { return store_.data() + i * stride_; }

  void zero_map_grads(int64_t b, int64_t mch0, int64_t nl) {
    for (int64_t pos = 0; pos < p_.L; ++pos) {
      if (!p_.seq_u) {
        float* d = gr_.du + b * gr_.du_sb + mch0 * gr_.du_sc + pos * gr_.du_sl;
        for (int64_t l = 0; l < nl; ++l) d[l * gr_.du_sc] = 0.f;
      }
      if (gr_.dz) {
        float* d = gr_.dz + b * gr_.dz_sb + mch0 * gr_.dz_sc + pos * gr_.dz_sl;
        for (int64_t l = 0; l < nl; ++l) d[l * gr_.dz_sc] = 0.f;
      }
    }
  }

  // y -> the gradient reaching y_k (after the gate and the mean) for steps [s0, s1) of records whose
  // slot 3 holds y; adds dz's share when `add_dz`. A pass of its own: the gate's sigmoid stays out of the
  // recurrence.
  void upstream(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t s0, int64_t s1, V* base, bool add_dz) {
    const int64_t nl = vc_.nl, stride = stride_;
    const int64_t* idx = p_.index + k * p_.Lk;
    const float* g_map = p_.merge == kNone ? gr_.g + b * gr_.g_sb + k * gr_.g_sk + c0 * gr_.g_sc
                                           : gr_.g + b * gr_.g_sb + mch0 * gr_.g_sc;
    const int64_t g_sl = gr_.g_sl, g_sc = gr_.g_sc;
    const float scale = p_.scale;
    const float* z_map = p_.z ? p_.z + b * p_.z_sb + mch0 * p_.z_sc : nullptr;
    float* dz_map = gr_.dz ? gr_.dz + b * gr_.dz_sb + mch0 * gr_.dz_sc : nullptr;
    const bool fast = nl == VL && g_sc == 1 && (!z_map || (p_.z_sc == 1 && gr_.dz_sc == 1));
    for (int64_t t = s0; t < s1; ++t) {
      V* r = base + (t - s0) * stride;
      const int64_t pos = idx[t];
      if (pos < 0) {
        r[3] = V{};
        continue;
      }
      const V gv = (fast ? vload(g_map + pos * g_sl) : vgather(g_map + pos * g_sl, g_sc, nl)) * scale;
      if (!z_map) {
        r[3] = gv;
        continue;
      }
      const float* zp = z_map + pos * p_.z_sl;
      const V zv = fast ? vload(zp) : vgather(zp, p_.z_sc, nl);
      const V sz = sigmoid(zv);
      if (add_dz) {
        float* dzp = dz_map + pos * gr_.dz_sl;
        const V dz = gv * r[3] * sz * (zv * (1.f - sz) + 1.f);
        if (fast)
          vstore(dzp, vload(dzp) + dz);
        else
          vscatter(dzp, gr_.dz_sc, nl, dz, true);
      }
      r[3] = gv * zv * sz;
    }
  }

  // Forward over steps [t0, t1) from state h_; keeps each step's record when STORE (the decays computed
  // ahead straight into the records), adds dz when `add_dz`, saves the state before each chunk start when
  // `checkpoint` (then through a small block buffer).
  template <bool STORE>
  void forward_steps(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t t0, int64_t t1, bool add_dz,
                     bool checkpoint) {
    const int64_t nl = vc_.nl, N = p_.N, R = p_.R, P = p_.P, stride = stride_;
    const int64_t* idx = p_.index + k * p_.Lk;
    const float* rows = p_.proj + (b * p_.K + k) * p_.Lk * P;
    const Lanes w = lanes_of(p_, b, k, mch0, c0, nl);
    const V D = vc_.D;
    V* h = h_.data();
    const int64_t block = STORE ? t1 - t0 : STEP_BLOCK;
    for (int64_t s0 = t0; s0 < t1; s0 += block) {
      const int64_t s1 = std::min(t1, s0 + block);
      V* base = STORE ? rec(s0 - t0) : buf_.data();
      step_decays(p_, vc_, b, k, c0, s0, s1, base, base + 1, base + 4 + N, stride);
      for (int64_t t = s0; t < s1; ++t) {
        if (checkpoint && t % chunk_ == 0) std::copy(h_.begin(), h_.end(), checkpoints_.begin() + (t / chunk_) * N);
        const int64_t pos = idx[t];
        const float* row = rows + t * P;
        V* r = base + (t - s0) * stride;
        const V uv = w.fast ? load_u_fast(w, t, pos) : load_u(p_, b, k, mch0, c0, t, pos, nl);
        const V dtu = r[0] * uv;
        V y = D * uv;
        for (int64_t n = 0; n < N; ++n) {
          const V hv = r[4 + N + n] * h[n] + dtu * row[R + n];
          h[n] = hv;
          y += hv * row[R + N + n];
          if (STORE) r[4 + n] = hv;
        }
        r[2] = uv;
        r[3] = y;
      }
      if (STORE || add_dz) upstream(b, k, mch0, c0, s0, s1, base, add_dz);
    }
  }

  // Reverse walk over steps [t0, t1) whose records are in the store; hprev_ = state before t0.
  // Channel sums: each step's per-lane terms go to slot j of a 16-step block (lane_[q][j]); a full block
  // (or the walk's last, partial one) is reduced into 16 consecutive steps of each row: dB and dC by
  // sum16, d(dts) as W . dv from the transposed dv block (R FMAs per step instead of R reductions).
  template <bool LOW_RANK, bool N1>
  void backward_steps(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t t0, int64_t t1, float* red_rows,
                      bool first_vector) {
    const int64_t nl = vc_.nl, N = p_.N, R = p_.R, Lk = p_.Lk, P = p_.P, stride = stride_;
    const int64_t* idx = p_.index + k * Lk;
    const float* rows = p_.proj + (b * p_.K + k) * Lk * P;
    const bool fast_du = nl == VL && gr_.du_sc == 1;
    const bool seq = p_.seq_u;
    float* du_base = seq ? gr_.du + b * gr_.du_sb + k * gr_.du_sk + c0 * gr_.du_sc
                         : gr_.du + b * gr_.du_sb + mch0 * gr_.du_sc;
    const int64_t du_step = gr_.du_sl, du_sc = gr_.du_sc;
    float* dd_base = LOW_RANK ? nullptr : gr_.ddelta + b * gr_.dd_sb + k * gr_.dd_sk + c0 * gr_.dd_sc;
    const V D = vc_.D;
    const V* A = vc_.A.data();
    const V* W = vc_.W.data();
    V* dh = dh_.data();
    V* accA = accA_.data();
    V* accW = accW_.data();
    V* lane = lane_.data();  // [q][slot]: q over [dv | B (N) | C (N)]
    const V* store = store_.data();
    V dh0 = dh[0], accA0 = accA[0], accD = accD_, accBias = accBias_;
    for (int64_t t = t1 - 1; t >= t0; --t) {
      const int64_t slot = (t1 - 1 - t) % VL;
      const V* r = store + (t - t0) * stride;
      const V* hp = t > t0 ? r - stride + 4 : hprev_.data();
      const int64_t pos = idx[t];
      const float* row = rows + t * P;
      const V dt = r[0], sg = r[1], uv = r[2], gy = r[3];
      V du = D * gy, ddt;
      if (N1) {
        const float bn = row[R], cn = row[R + 1];
        const V e = r[5];
        const V dhv = dh0 + gy * cn;  // total gradient reaching h_t
        const V q = dhv * e * hp[0];
        lane[2 * VL + slot] = gy * r[4];
        lane[VL + slot] = dhv * dt * uv;
        du += dhv * dt * bn;
        ddt = A[0] * q + dhv * bn * uv;
        accA0 += q * dt;
        dh0 = dhv * e;
      } else {
        ddt = V{};
        for (int64_t n = 0; n < N; ++n) {
          const float bn = row[R + n], cn = row[R + N + n];
          const V e = r[4 + N + n];
          const V dhv = dh[n] + gy * cn;
          const V q = dhv * e * hp[n];
          lane[(1 + N + n) * VL + slot] = gy * r[4 + n];
          lane[(1 + n) * VL + slot] = dhv * dt * uv;
          du += dhv * dt * bn;
          ddt += A[n] * q + dhv * bn * uv;
          accA[n] += q * dt;
          dh[n] = dhv * e;  // carried to h_{t-1}
        }
      }
      accD += gy * uv;
      const V dv = ddt * sg;
      accBias += dv;
      if (LOW_RANK) {
        for (int64_t j = 0; j < R; ++j) accW[j] += dv * row[j];
        lane[slot] = dv;
      } else {
        float* d = dd_base + t * gr_.dd_st;
        if (nl == VL && gr_.dd_sc == 1)
          vstore(d, dv);
        else
          vscatter(d, gr_.dd_sc, nl, dv, false);
      }
      if (slot == VL - 1 || t == t0) {  // reduce the block: steps t .. t + slot
        const int64_t filled = slot + 1, first_t = t + slot - (VL - 1);
        auto put = [&](int64_t q, V sums) {  // sums in t order: element i is step first_t + i
          float* rq = red_rows + q * Lk + first_t;
          if (filled == VL) {
            vstore(rq, first_vector ? sums : vload(rq) + sums);
          } else {
            for (int64_t i = VL - filled; i < VL; ++i) rq[i] = first_vector ? sums[i] : rq[i] + sums[i];
          }
        };
        for (int64_t q = LOW_RANK ? 0 : 1; q < 1 + 2 * N; ++q)
          for (int64_t j = filled; j < VL; ++j) lane[q * VL + j] = V{};
        for (int64_t q = 1; q < 1 + 2 * N; ++q) put(R + q - 1, sum16(lane + q * VL));  // dB, dC
        if (LOW_RANK) {  // d(dts)_r = W_r . dv: dv transposed to (lane, step), then R FMAs per lane
          transpose16(lane);
          for (int64_t j = 0; j < R; ++j) {
            V acc = V{};
            for (int64_t l = 0; l < VL; ++l) acc += lane[l] * W[j][l];
            put(j, reversed(acc));  // slot order is reverse t order
          }
        }
      }
      if (!seq && pos < 0) continue;
      float* d = du_base + (seq ? t : pos) * du_step;
      if (fast_du)
        vstore(d, seq ? du : vload(d) + du);
      else
        vscatter(d, du_sc, nl, du, !seq);
    }
    if (N1) {
      dh[0] = dh0;
      accA[0] = accA0;
    }
    accD_ = accD;
    accBias_ = accBias;
  }

  void walk(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t t0, int64_t t1, float* red_rows, bool first) {
    if (p_.low_rank && p_.N == 1)
      backward_steps<true, true>(b, k, mch0, c0, t0, t1, red_rows, first);
    else if (p_.low_rank)
      backward_steps<true, false>(b, k, mch0, c0, t0, t1, red_rows, first);
    else
      backward_steps<false, false>(b, k, mch0, c0, t0, t1, red_rows, first);
  }

  void direction(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t blk, bool first_vector, bool first_batch) {
    const int64_t N = p_.N, nl = vc_.nl;
    std::fill(accA_.begin(), accA_.end(), V{});
    std::fill(accW_.begin(), accW_.end(), V{});
    accD_ = accBias_ = V{};
    std::fill(dh_.begin(), dh_.end(), V{});
    std::fill(h_.begin(), h_.end(), V{});
    float* red_rows = gr_.red + ((b * p_.K + k) * s_.blocks + blk) * p_.P * p_.Lk;  // [q][t]
    if (nchunks_ == 1) {
      std::fill(hprev_.begin(), hprev_.end(), V{});
      forward_steps<true>(b, k, mch0, c0, 0, p_.Lk, true, false);
      walk(b, k, mch0, c0, 0, p_.Lk, red_rows, first_vector);
    } else {  // long direction: checkpoints every chunk_ steps, each chunk recomputed before its reverse walk
      forward_steps<false>(b, k, mch0, c0, 0, p_.Lk, true, true);
      for (int64_t c = nchunks_ - 1; c >= 0; --c) {
        const int64_t t0 = c * chunk_, t1 = std::min(p_.Lk, t0 + chunk_);
        std::copy(checkpoints_.begin() + c * N, checkpoints_.begin() + (c + 1) * N, h_.begin());
        hprev_ = h_;
        forward_steps<true>(b, k, mch0, c0, t0, t1, false, false);
        walk(b, k, mch0, c0, t0, t1, red_rows, first_vector);
      }
    }
    // parameter sums of this (batch item, vector, direction), added to the batch group's slot in batch order
    const int64_t bg = b / s_.per_bgroup;
    for (int64_t l = 0; l < nl; ++l) {
      float* slot = gr_.par + ((bg * p_.K + k) * p_.Dm + c0 + l) * gr_.Q;
      for (int64_t n = 0; n < N; ++n) slot[n] = first_batch ? accA_[n][l] : slot[n] + accA_[n][l];
      slot[N] = first_batch ? accD_[l] : slot[N] + accD_[l];
      slot[N + 1] = first_batch ? accBias_[l] : slot[N + 1] + accBias_[l];
      for (int64_t j = 0; j < p_.R; ++j) slot[N + 2 + j] = first_batch ? accW_[j][l] : slot[N + 2 + j] + accW_[j][l];
    }
  }
};

void check_grad_out(const torch::Tensor& t, const Problem& p, const char* name, std::vector<int64_t> shape) {
  check_f32(t, name);
  TORCH_CHECK(t.sizes() == at::IntArrayRef(shape), "plan_scan_cpu: ", name, " must have shape ", shape, ", got ",
              t.sizes());
}

}  // namespace

// Returns {du, ddelta (full Δ; else empty), dA, dD, dz, dbias, dW} (absent ones empty) and fills
// g_dts (low rank), g_B, g_C in place, in whatever strides they were allocated with.
std::vector<torch::Tensor> plan_scan_backward(torch::Tensor grad, torch::Tensor u, torch::Tensor delta,
                                              torch::Tensor W, torch::Tensor A, torch::Tensor proj,
                                              torch::Tensor Dv, torch::Tensor bias, torch::Tensor z,
                                              torch::Tensor index, int64_t length, int64_t merge, bool softplus,
                                              torch::Tensor g_dts, torch::Tensor g_B, torch::Tensor g_C) {
  const Problem p = make_problem(u, delta, W, A, proj, Dv, bias, z, index, length, merge, softplus);
  const Split s = split_work(p);
  Grads gr;
  if (merge == kNone)
    check_grad_out(grad, p, "grad_out", {p.B, p.K, p.Dm, p.L});
  else
    check_grad_out(grad, p, "grad_out", {p.B, p.map_channels(), p.L});
  gr.g = grad.data_ptr<float>();
  gr.g_sb = grad.stride(0);
  if (merge == kNone) {
    gr.g_sk = grad.stride(1);
    gr.g_sc = grad.stride(2);
    gr.g_sl = grad.stride(3);
  } else {
    gr.g_sc = grad.stride(1);
    gr.g_sl = grad.stride(2);
  }
  // gradients in their inputs' layouts (the strides torch.empty_like gives)
  auto du = torch::empty_like(u);
  gr.du = du.data_ptr<float>();
  gr.du_sb = du.stride(0);
  if (p.seq_u) {
    gr.du_sk = du.stride(1);
    gr.du_sc = du.stride(2);
    gr.du_sl = du.stride(3);
  } else {
    gr.du_sc = du.stride(1);
    gr.du_sl = du.stride(2);
  }
  torch::Tensor dz, ddelta;
  if (p.z) {
    dz = torch::empty_like(z);
    gr.dz = dz.data_ptr<float>();
    gr.dz_sb = dz.stride(0);
    gr.dz_sc = dz.stride(1);
    gr.dz_sl = dz.stride(2);
  }
  if (!p.low_rank) {
    ddelta = torch::empty_like(delta);
    gr.ddelta = ddelta.data_ptr<float>();
    gr.dd_sb = ddelta.stride(0);
    gr.dd_sk = ddelta.stride(1);
    gr.dd_sc = ddelta.stride(2);
    gr.dd_st = ddelta.stride(3);
  } else {
    check_grad_out(g_dts, p, "g_dts", {p.B, p.K, p.R, p.Lk});
  }
  check_grad_out(g_B, p, "g_B", {p.B, p.K, p.N, p.Lk});
  check_grad_out(g_C, p, "g_C", {p.B, p.K, p.N, p.Lk});
  auto red = torch::empty({p.B, p.K, s.blocks, p.P, p.Lk}, u.options());
  gr.red = red.data_ptr<float>();
  gr.Q = p.N + 2 + p.R;
  auto par = torch::empty({s.bgroups, p.K, p.Dm, gr.Q}, u.options());
  gr.par = par.data_ptr<float>();

  const int64_t G = p.groups(), per_bg = G * s.blocks;
  at::parallel_for(0, s.bgroups * per_bg, 1, [&](int64_t begin, int64_t end) {
    BackwardTask task(p, gr, s);
    for (int64_t i = begin; i < end; ++i) task.run(i / per_bg, (i / s.blocks) % G, i % s.blocks);
  });

  // channel sums per step: blocks summed in order, written in the gradients' own strides
  float* gd = p.low_rank ? g_dts.data_ptr<float>() : nullptr;
  float* gb = g_B.data_ptr<float>();
  float* gc = g_C.data_ptr<float>();
  at::parallel_for(0, p.B * p.K, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bk = begin; bk < end; ++bk) {
      const int64_t b = bk / p.K, k = bk % p.K;
      const float* rb = gr.red + bk * s.blocks * p.P * p.Lk;  // [block][q][t]
      for (int64_t q = (p.low_rank ? 0 : p.R); q < p.P; ++q) {
        for (int64_t t = 0; t < p.Lk; ++t) {
          float acc = rb[q * p.Lk + t];
          for (int64_t j = 1; j < s.blocks; ++j) acc += rb[(j * p.P + q) * p.Lk + t];
          if (q < p.R)
            gd[b * g_dts.stride(0) + k * g_dts.stride(1) + q * g_dts.stride(2) + t * g_dts.stride(3)] = acc;
          else if (q < p.R + p.N)
            gb[b * g_B.stride(0) + k * g_B.stride(1) + (q - p.R) * g_B.stride(2) + t * g_B.stride(3)] = acc;
          else
            gc[b * g_C.stride(0) + k * g_C.stride(1) + (q - p.R - p.N) * g_C.stride(2) + t * g_C.stride(3)] = acc;
        }
      }
    }
  });

  // parameter sums: batch groups summed in order
  auto dA = torch::empty({p.K * p.Dm, p.N}, u.options());
  auto dD = torch::empty({p.Dv ? p.K * p.Dm : 0}, u.options());
  auto dbias = torch::empty({p.bias ? p.K * p.Dm : 0}, u.options());
  auto dW = torch::empty({p.low_rank ? p.K : 0, p.Dm, p.R}, u.options());
  float *pA = dA.data_ptr<float>(), *pD = dD.data_ptr<float>(), *pb = dbias.data_ptr<float>(),
        *pW = dW.data_ptr<float>();
  const int64_t Q = gr.Q;
  at::parallel_for(0, p.K * p.Dm, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(Q);
    for (int64_t kc = begin; kc < end; ++kc) {
      for (int64_t q = 0; q < Q; ++q) acc[q] = gr.par[kc * Q + q];
      for (int64_t bg = 1; bg < s.bgroups; ++bg)
        for (int64_t q = 0; q < Q; ++q) acc[q] += gr.par[(bg * p.K * p.Dm + kc) * Q + q];
      for (int64_t n = 0; n < p.N; ++n) pA[kc * p.N + n] = acc[n];
      if (p.Dv) pD[kc] = acc[p.N];
      if (p.bias) pb[kc] = acc[p.N + 1];
      if (p.low_rank)
        for (int64_t r = 0; r < p.R; ++r) pW[kc * p.R + r] = acc[p.N + 2 + r];
    }
  });
  return {du, ddelta.defined() ? ddelta : torch::Tensor(), dA, dD, dz.defined() ? dz : torch::Tensor(), dbias, dW};
}

// The work split the kernels use for these sizes (for tests and the benchmark's cost print-out).
std::vector<int64_t> plan_scan_split(int64_t B, int64_t K, int64_t Dm, int64_t grouped) {
  Problem p;
  p.B = B;
  p.K = K;
  p.Dm = Dm;
  p.merge = grouped ? kGroup : kSum;
  const Split s = split_work(p);
  return {s.vectors, s.blocks, s.per_block, s.bgroups, s.per_bgroup};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("plan_scan_forward", &plan_scan_forward, "fused plan selective scan, CPU forward");
  m.def("plan_scan_backward", &plan_scan_backward, "fused plan selective scan, CPU backward");
  m.def("plan_scan_split", &plan_scan_split, "work split (vectors, blocks, vectors/block, batch groups, per group)");
}
