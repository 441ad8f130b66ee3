// Plain-C++ description of one plan-scan call: sizes, strides, pointers, the launch configuration and its
// cost model. Shared by the CUDA build, the torch binding and the CPU emulator; includes neither torch nor CUDA.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#if defined(__CUDACC__)
#define VSSM_HOST_DEVICE __host__ __device__
#else
#define VSSM_HOST_DEVICE
#endif

namespace vssm {

enum Merge : int { kMergeSum = 0, kMergeMean = 1, kMergeNone = 2, kMergeGroup = 3 };
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
constexpr int kMaxState = 16;        // d_state buckets 1, 2, 4, 8, 16
constexpr int kMaxRank = 128;        // low-rank Δ: R <= 128 (VMamba-B stage 4 has 64, Vim-B 48)
constexpr int kFlatThreads = 256;    // threads per block of the element-wise passes
constexpr int kMinChunk = 32;        // steps: a chunk shorter than this buys no useful parallelism
constexpr int64_t kTargetThreadsPerSM = 1024;  // launches aim at half an SM's 2048 resident threads
constexpr int64_t kMaxGridY = 65535;           // CUDA's limit on grid dimensions y and z
constexpr int64_t kMaxGridX = 2147483647;
constexpr int64_t kBackwardSmemBudget = 96 * 1024;  // bytes; fits sm_80 (163 KB) and sm_90 (227 KB) opt-in
constexpr double kWorkspaceRatio = 2.0;             // scratch <= this times the op's input bytes

// Every tensor the kernels touch. Per-token tensors (u, delta, B, C, z, grad_out and the gradients written
// in the input dtype) share one element type T; A, D, delta_bias, delta_weight and all scratch are float32.
// Strides are in elements, 4D as (b, k, channel, t|pos); a map shared by the directions has k stride 0, a
// grouped map (merge 'group') has k stride Dm * channel stride.
struct ScanParams {
  // sizes
  int Bt = 0, K = 0, Dm = 0, N = 0, Lk = 0, L = 0;
  int R = 0;  // 0: delta is the full Δ (Bt, K, Dm, Lk); R > 0: its rank-R factor (Bt, K, R, Lk) with weight W
  int merge = kMergeSum;
  bool softplus = true, seq_u = false, has_z = false, has_D = false, has_bias = false;
  float scale = 1.f;   // 1/K for merge 'mean'
  int elem_bytes = 4;  // size of T

  // index coverage (from the binding's index check): a direction visits every map position
  bool first_full = false, last_full = false, all_full = false;

  // launch configuration (see choose_*_config)
  int chunk = 0, nchunks = 1;  // steps per chunk along a direction; chunks scanned in parallel
  int tile = 32, ntiles = 1;   // channels per block (one thread each)
  int sub = 1;                 // backward: steps per recomputed sub-chunk (states kept in shared memory)
  int slots = 1;               // backward: batch slots; block slot i walks batches i, i + slots, ...
  int chunk_slots = 1;         // backward: chunk slots; block slot jx walks chunks jx, jx + chunk_slots, ...
  int k = -1;                  // direction of a per-direction launch; -1: one launch covers every direction
  bool store_first = false;    // direction 0 stores into the map accumulator (no zero fill) ...
  bool fuse_finalize = false;  // ... and direction K-1 writes the final map value (no finalize pass)
  bool finalize = false;       // forward: run the separate map finalize pass
  int64_t smem_bytes = 0;      // dynamic shared memory of the backward main pass
  int64_t smem_scan = 0;       // dynamic shared memory of the other scan passes (the Δ weights, low rank)

  // inputs
  const void* u = nullptr;      int64_t su[4] = {0, 0, 0, 0};
  const void* delta = nullptr;  int64_t sdelta[4] = {0, 0, 0, 0};  // (b, k, d | r, t)
  const float* A = nullptr;                                        // (K*Dm, N) contiguous
  const void* Bm = nullptr;     int64_t sB[4] = {0, 0, 0, 0};      // (b, k, n, t)
  const void* Cm = nullptr;     int64_t sC[4] = {0, 0, 0, 0};
  const float* D = nullptr;                                        // (K*Dm,)
  const float* bias = nullptr;                                     // (K*Dm,)
  const float* W = nullptr;                                        // (K, Dm, R) contiguous
  const void* z = nullptr;      int64_t sz[4] = {0, 0, 0, 0};      // (b, k, d, pos)
  const int64_t* index = nullptr;                                  // (K, Lk), -1 = padding
  const void* gout = nullptr;   int64_t sg[4] = {0, 0, 0, 0};      // (b, k, d, pos)

  // outputs (any strides: each is written where its input's layout says)
  void* out = nullptr;          int64_t so[4] = {0, 0, 0, 0};      // (b, k, d, pos)
  void* du = nullptr;           int64_t sdu[4] = {0, 0, 0, 0};     // like u
  void* ddelta = nullptr;       int64_t sdd[4] = {0, 0, 0, 0};     // like delta (d(dts) when R > 0)
  void* dz = nullptr;           int64_t sdz[4] = {0, 0, 0, 0};     // like z
  void* dB = nullptr;           int64_t sdB[4] = {0, 0, 0, 0};     // like B, in T
  void* dC = nullptr;           int64_t sdC[4] = {0, 0, 0, 0};

  // float32 scratch
  float* acc = nullptr;        // (Bt, L, Dm): forward merged output / backward map gradient of u
  float* accy = nullptr;       // (Bt, L, Dm): backward sum over directions of (weight * y), for dz
  float* states = nullptr;     // (Bt, K, nchunks, Dm, N): state entering each chunk
  float* sdt = nullptr;        // (Bt, K, nchunks, Dm): sum of Δ over each chunk (its decay is exp(A*sum))
  float* carries = nullptr;    // (Bt, K, nchunks, Dm, N): backward adjoint carried into each chunk
  float* dA_part = nullptr;    // (slots, K, chunk_slots, Dm, N): per batch and chunk slot, summed by torch
  float* dD_part = nullptr;    // (slots, K, chunk_slots, Dm)
  float* dbias_part = nullptr; // (slots, K, chunk_slots, Dm)
  float* dW_part = nullptr;    // (slots, K, chunk_slots, Dm, R)

  VSSM_HOST_DEVICE bool merged() const { return merge == kMergeSum || merge == kMergeMean; }
  // backward: the map gradient of u (map input shared by the directions) and dz's sum over directions
  VSSM_HOST_DEVICE bool bwd_uses_acc() const { return !seq_u && merge != kMergeGroup; }
  VSSM_HOST_DEVICE bool bwd_uses_accy() const { return has_z && merge != kMergeGroup; }
  VSSM_HOST_DEVICE int map_channels() const { return merge == kMergeGroup ? K * Dm : Dm; }
};

struct Dims {
  unsigned x = 1, y = 1, z = 1;
};

// Optional traits of a kernel body, C++17 (torch before 2.12 builds extensions as C++17):
// kMinBlocks (launch bounds: blocks per SM, default 2) and kUsesBarrier (the emulator runs it on fibers).
template <class Body, class = void>
struct MinBlocksOf { static constexpr int value = 2; };
template <class Body>
struct MinBlocksOf<Body, std::void_t<decltype(Body::kMinBlocks)>> { static constexpr int value = Body::kMinBlocks; };
template <class Body, class = void>
struct UsesBarrier { static constexpr bool value = false; };
template <class Body>
struct UsesBarrier<Body, std::void_t<decltype(Body::kUsesBarrier)>> {
  static constexpr bool value = Body::kUsesBarrier;
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline int state_bucket(int N) {
  if (N <= 1) return 1;
  if (N <= 2) return 2;
  if (N <= 4) return 4;
  if (N <= 8) return 8;
  return 16;
}

// Channels per block: at most max_tile, split evenly, rounded up to whole warps.
inline int pick_tile(int Dm, int max_tile) {
  const int64_t tiles = ceil_div(Dm, max_tile);
  const int64_t per = ceil_div(Dm, tiles);
  return static_cast<int>(std::min<int64_t>(max_tile, ceil_div(per, 32) * 32));
}

// ------------------------------------------------------------------------------------------- bytes

// Bytes of the op's inputs (what a fused kernel must read at least once); backward adds grad_out.
inline int64_t input_bytes(const ScanParams& p, bool backward) {
  const int64_t es = p.elem_bytes, BK = int64_t(p.Bt) * p.K;
  const int64_t u = p.seq_u ? BK * p.Dm * p.Lk : int64_t(p.Bt) * p.map_channels() * p.L;
  const int64_t delta = BK * (p.R > 0 ? p.R : p.Dm) * p.Lk;
  const int64_t bc = 2 * BK * p.N * p.Lk;
  const int64_t z = p.has_z ? int64_t(p.Bt) * p.map_channels() * p.L : 0;
  const int64_t KD = int64_t(p.K) * p.Dm;
  const int64_t params = KD * p.N + (p.has_D ? KD : 0) + (p.has_bias ? KD : 0) + KD * p.R;
  const int64_t out = p.merge == kMergeNone ? BK * p.Dm * p.L : int64_t(p.Bt) * p.map_channels() * p.L;
  return es * (u + delta + bc + z + (backward ? out : 0)) + 4 * params;
}

inline int64_t output_bytes(const ScanParams& p) {
  const int64_t n = p.merge == kMergeNone ? int64_t(p.Bt) * p.K * p.Dm * p.L : int64_t(p.Bt) * p.map_channels() * p.L;
  return n * p.elem_bytes;
}

// Scratch buffers, in floats. The binding allocates exactly these; the cost model adds them up.
struct Workspace {
  int64_t acc = 0, accy = 0, states = 0, sdt = 0, carries = 0, dA = 0, dD = 0, dbias = 0, dW = 0;
  int64_t floats() const { return acc + accy + states + sdt + carries + dA + dD + dbias + dW; }
  int64_t bytes() const { return 4 * floats(); }
};

// forward: does the merged output need a float32 accumulator, and can the output itself be it
inline bool fwd_needs_acc(const ScanParams& p) { return p.merged() && (p.K > 1 || !p.last_full); }
inline bool fwd_out_is_acc(const ScanParams& p) {
  return fwd_needs_acc(p) && p.elem_bytes == 4 && p.scale == 1.f && !p.has_z;
}

inline Workspace forward_workspace(const ScanParams& p) {
  Workspace w;
  const int64_t map = int64_t(p.Bt) * p.L * p.Dm;
  if (fwd_needs_acc(p) && !fwd_out_is_acc(p)) w.acc = map;
  if (p.nchunks > 1) {
    const int64_t slots = int64_t(p.Bt) * p.K * p.nchunks * p.Dm;
    w.states = slots * p.N;
    w.sdt = slots;
  }
  return w;
}

inline Workspace backward_workspace(const ScanParams& p) {
  Workspace w;
  const int64_t map = int64_t(p.Bt) * p.L * p.Dm;
  // with one direction covering the map the last direction writes du/dz itself: nothing to accumulate
  const bool single = p.K == 1 && p.last_full;
  if (p.bwd_uses_acc() && !single) w.acc = map;
  if (p.bwd_uses_accy() && !single) w.accy = map;
  if (p.nchunks > 1) {
    const int64_t slots = int64_t(p.Bt) * p.K * p.nchunks * p.Dm;
    w.states = w.carries = slots * p.N;
    w.sdt = slots;
  }
  const int64_t part = int64_t(p.slots) * p.K * p.chunk_slots * p.Dm;
  w.dA = part * p.N;
  w.dD = p.has_D ? part : 0;
  w.dbias = p.has_bias ? part : 0;
  w.dW = part * p.R;
  return w;
}

// ------------------------------------------------------------------------------------ configuration

// Shared memory of the backward main pass, in floats: checkpoints every `sub` steps, the states of one
// sub-chunk, the per-thread dB/dC terms of one sub-chunk (padded rows: no bank conflicts) and the chunk's
// dB/dC sums; with low-rank Δ also the tile's weights, its weight-gradient sums, the sub-chunk's dΔ and the
// chunk's d(dts) sums.
inline int64_t backward_smem_floats(int chunk, int sub, int N, int tile, int R) {
  const int64_t nsub = ceil_div(chunk, sub), Wp = tile + 1;
  int64_t f = nsub * N * tile + int64_t(sub) * N * tile + 2LL * sub * N * Wp + 2LL * chunk * N;
  if (R > 0) f += int64_t(R) * Wp + int64_t(R) * tile + int64_t(sub) * Wp + int64_t(chunk) * R;
  return f;
}

// The other scan passes keep each thread's row of the Δ weight in shared memory (its own column).
inline int64_t scan_smem_bytes(const ScanParams& p) { return int64_t(p.R) * p.tile * 4; }

inline void check_sizes(const ScanParams& p) {
  if (p.N < 1 || p.N > kMaxState)
    throw std::invalid_argument("vssm cuda scan: d_state N must be in 1.." + std::to_string(kMaxState) + ", got " +
                                std::to_string(p.N));
  if (p.R < 0 || p.R > kMaxRank)
    throw std::invalid_argument("vssm cuda scan: the rank R of delta_weight must be in 1.." +
                                std::to_string(kMaxRank) + ", got " + std::to_string(p.R));
  if (int64_t(p.Bt) * p.K > kMaxGridY)
    throw std::invalid_argument("vssm cuda scan: batch * directions must be at most 65535, got " +
                                std::to_string(int64_t(p.Bt) * p.K));
  if (p.Bt < 1 || p.K < 1 || p.Dm < 1 || p.Lk < 1 || p.L < 1)
    throw std::invalid_argument("vssm cuda scan: every size (batch, directions, channels, steps, length) must be >= 1");
}

// Chunk count n for a launch whose threads per chunk are `threads_per_chunk`: enough threads to fill the
// device, chunks of at least kMinChunk steps, at least n_min chunks and at most n_max (workspace).
inline int64_t parallel_chunks(int64_t Lk, int64_t threads_per_chunk, int num_sms, int64_t n_min, int64_t n_max) {
  const int64_t target = kTargetThreadsPerSM * std::max(1, num_sms);
  int64_t n = ceil_div(target, std::max<int64_t>(1, threads_per_chunk));
  n = std::min(n, std::max<int64_t>(1, Lk / kMinChunk));
  n = std::min(n, std::max<int64_t>(1, n_max));
  n = std::max(n, n_min);
  return std::max<int64_t>(1, std::min(n, Lk));
}

// Even chunks: n chunks of ceil(Lk / n) steps (the last may be shorter).
inline void set_chunks(ScanParams& p, int64_t n) {
  p.chunk = static_cast<int>(ceil_div(p.Lk, n));
  p.nchunks = static_cast<int>(ceil_div(p.Lk, p.chunk));
}

inline void set_merge_flags(ScanParams& p) {
  p.store_first = p.first_full;
  p.fuse_finalize = p.last_full;
}

// Forward: one output launch per direction for sum/mean (the accumulator is added in direction order, so
// without atomics), one launch for every direction otherwise. chunk/tile: 0 = automatic, else forced.
inline void choose_forward_config(ScanParams& p, int num_sms, int chunk, int tile) {
  check_sizes(p);
  p.tile = tile > 0 ? tile : pick_tile(p.Dm, 128);
  p.ntiles = static_cast<int>(ceil_div(p.Dm, p.tile));
  p.sub = 1;
  p.slots = 1;
  p.k = p.merged() ? 0 : -1;
  set_merge_flags(p);
  p.finalize = fwd_needs_acc(p) && !p.fuse_finalize && !fwd_out_is_acc(p);
  p.smem_scan = scan_smem_bytes(p);
  p.smem_bytes = 0;
  if (chunk > 0) {  // forced: exactly this length (tests exercise uneven last chunks)
    p.chunk = std::min(chunk, p.Lk);
    p.nchunks = static_cast<int>(ceil_div(p.Lk, p.chunk));
    return;
  }
  const int64_t kl = p.merged() ? 1 : p.K;
  const int64_t per_chunk = int64_t(p.Bt) * kl * p.ntiles * p.tile;
  // workspace: the accumulator is fixed; chunk states cost (N + 1) floats per (batch, direction, chunk, channel)
  p.nchunks = 1;
  const double budget = kWorkspaceRatio * input_bytes(p, false) - forward_workspace(p).bytes();
  const double per_state_chunk = 4.0 * p.Bt * p.K * p.Dm * (p.N + 1);
  const int64_t n_max = budget > 0 ? static_cast<int64_t>(budget / per_state_chunk) : 1;
  int64_t n = parallel_chunks(p.Lk, per_chunk, num_sms, 1, n_max);
  if (n < 2) n = 1;
  set_chunks(p, n);
}

// Longest backward chunk whose shared-memory buffers fit the budget (a whole number of sub-chunks).
inline int backward_chunk_cap(const ScanParams& p) {
  int cap = p.sub;
  while (cap < p.Lk && backward_smem_floats(cap + p.sub, p.sub, p.N, p.tile, p.R) * 4 <= kBackwardSmemBudget)
    cap += p.sub;
  return std::min(cap, p.Lk);
}

// Backward: grid (chunk slots, batch slots [x directions]). Block (jx, i) walks the chunks jx, jx + chunk_slots,
// ... of the batches i, i + slots, ...; for each (batch, chunk) it walks every channel tile, so dB/dC/d(dts)
// (shared by the channels of a direction) are summed inside the block in a fixed order, and dA/dD/dΔ-bias/dW
// are summed over the block's (batch, chunk) pairs before they go out as per-slot partials: the partials'
// workspace is set by the slots, not by the chunks that shared memory forces.
inline void choose_backward_config(ScanParams& p, int num_sms, int chunk, int tile, int sub, int slots,
                                   int chunk_slots = 0) {
  check_sizes(p);
  p.sub = sub > 0 ? sub : (p.N > 4 ? 8 : 16);
  if (tile > 0) {
    p.tile = tile;
  } else {  // widest tile (fewer tiles walked per block) whose buffers leave chunks of >= 64 steps
    p.tile = pick_tile(p.Dm, p.N > 4 ? 32 : (p.N > 1 ? 64 : 128));
    while (p.tile > 32 && backward_chunk_cap(p) < std::min(64, p.Lk)) p.tile = pick_tile(p.Dm, p.tile / 2);
  }
  p.ntiles = static_cast<int>(ceil_div(p.Dm, p.tile));
  p.k = (p.bwd_uses_acc() || p.bwd_uses_accy()) ? 0 : -1;
  set_merge_flags(p);
  p.finalize = (p.bwd_uses_acc() || p.bwd_uses_accy()) && !p.fuse_finalize;
  p.smem_scan = scan_smem_bytes(p);
  const int64_t kl = p.k < 0 ? p.K : 1;
  p.slots = slots > 0 ? std::min(slots, p.Bt) : p.Bt;
  if (chunk > 0) {
    p.chunk = std::min(chunk, p.Lk);
    p.nchunks = static_cast<int>(ceil_div(p.Lk, p.chunk));
    p.chunk_slots = chunk_slots > 0 ? std::min(chunk_slots, p.nchunks) : p.nchunks;
  } else {
    const int64_t n_min = ceil_div(p.Lk, backward_chunk_cap(p));
    int64_t n = parallel_chunks(p.Lk, int64_t(p.slots) * kl * p.tile, num_sms, n_min, p.Lk);
    set_chunks(p, n);
    p.chunk_slots = p.nchunks;
    // workspace: first fewer chunks (down to what shared memory allows) while the chunk states do not fit,
    // then fewer partial slots
    const double budget = kWorkspaceRatio * input_bytes(p, true);
    auto without_parts = [&]() {
      ScanParams q = p;
      q.slots = q.chunk_slots = 0;
      return static_cast<double>(backward_workspace(q).bytes());
    };
    while (without_parts() > budget && n > n_min) {
      n = std::max(n_min, n / 2);
      set_chunks(p, n);
      p.chunk_slots = p.nchunks;
    }
    // the most (batch slots x chunk slots) whose partials fit (each slot pair is one block's accumulator)
    const double per_slot = 4.0 * p.K * p.Dm * (p.N + (p.has_D ? 1 : 0) + (p.has_bias ? 1 : 0) + p.R);
    const int64_t fit = std::max<int64_t>(1, static_cast<int64_t>((budget - without_parts()) / per_slot));
    if (int64_t(p.slots) * p.chunk_slots > fit) {
      const int64_t c_lo = chunk_slots > 0 ? p.chunk_slots : 1, c_hi = p.chunk_slots;
      int64_t best_s = 1, best_c = c_lo;
      for (int64_t c = c_lo; c <= c_hi; ++c) {
        const int64_t s = slots > 0 ? p.slots : std::clamp<int64_t>(fit / c, 1, p.Bt);
        if (s * c <= fit && s * c > best_s * best_c) best_s = s, best_c = c;
      }
      p.slots = static_cast<int>(slots > 0 ? p.slots : best_s);
      p.chunk_slots = static_cast<int>(best_c);
    }
  }
  p.smem_bytes = backward_smem_floats(p.chunk, p.sub, p.N, p.tile, p.R) * 4;
  if (int64_t(p.slots) * kl > kMaxGridY)
    throw std::invalid_argument("vssm cuda scan: backward grid has more than 65535 batch slots x directions");
}

}  // namespace vssm
