// Plain-C++ description of one plan-scan call: sizes, strides, pointers and the launch configuration.
// Shared by the CUDA build, the torch binding and the CPU emulator; includes neither torch nor CUDA.
#pragma once
#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>

namespace vssm {

enum Merge : int { kMergeSum = 0, kMergeMean = 1, kMergeNone = 2 };
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };
constexpr int kMaxState = 16;       // d_state buckets 1, 2, 4, 8, 16
constexpr int kFlatThreads = 256;   // threads per block of the element-wise passes

// Every tensor the kernels touch. Per-token tensors (u, delta, B, C, z, grad_out and the gradients written
// in the input dtype) share one element type T; A, D, delta_bias and all scratch are float32.
// Strides are in elements; a map tensor (B, Dm, L) uses index 1 (direction) with stride 0.
struct ScanParams {
  // sizes
  int Bt = 0, K = 0, Dm = 0, N = 0, Lk = 0, L = 0;
  int merge = kMergeSum;
  bool softplus = true, seq_u = false, has_z = false, has_D = false, has_bias = false;
  float scale = 1.f;  // 1/K for merge 'mean'

  // launch configuration (see choose_*_config)
  int chunk = 0, nchunks = 1;  // steps per chunk along a direction; chunks scanned in parallel
  int tile = 32, ntiles = 1;   // channels per block (one thread each)
  int sub = 1;                 // backward: steps per recomputed sub-chunk (states kept in shared memory)
  int k = 0;                   // direction of the current per-direction launch
  bool finalize = true;        // forward: run the map finalize pass (scale, gate, cast)
  int64_t smem_bytes = 0;      // backward main pass

  // inputs
  const void* u = nullptr;      int64_t su[4] = {0, 0, 0, 0};      // (b, k, d, t|pos)
  const void* delta = nullptr;  int64_t sdelta[4] = {0, 0, 0, 0};  // (b, k, d, t)
  const float* A = nullptr;                                        // (K*Dm, N) contiguous
  const void* Bm = nullptr;     int64_t sB[4] = {0, 0, 0, 0};      // (b, k, n, t)
  const void* Cm = nullptr;     int64_t sC[4] = {0, 0, 0, 0};
  const float* D = nullptr;                                        // (K*Dm,)
  const float* bias = nullptr;                                     // (K*Dm,)
  const void* z = nullptr;      int64_t sz[3] = {0, 0, 0};         // (b, d, pos)
  const int64_t* index = nullptr;                                  // (K, Lk), -1 = padding
  const void* gout = nullptr;   int64_t sg[4] = {0, 0, 0, 0};      // (b, k, d, pos); k stride 0 if merged

  // outputs
  void* out = nullptr;          int64_t so[4] = {0, 0, 0, 0};      // (b, k, d, pos); k stride 0 if merged
  void* du = nullptr;           int64_t sdu[4] = {0, 0, 0, 0};     // like u
  void* ddelta = nullptr;       int64_t sdd[4] = {0, 0, 0, 0};     // like delta
  void* dz = nullptr;           int64_t sdz[3] = {0, 0, 0};        // like z
  float* dB = nullptr;                                             // (Bt, K, N, Lk) contiguous
  float* dC = nullptr;

  // float32 scratch
  float* acc = nullptr;       // (Bt, L, Dm): forward merged output / backward map gradient of u
  float* accy = nullptr;      // (Bt, L, Dm): backward sum over directions of (weight * y), for dz
  float* states = nullptr;    // (Bt, K, nchunks, Dm, N): chunk states; backward reuses it for dA partials
  float* sdt = nullptr;       // (Bt, K, nchunks, Dm): sum of delta over each chunk (its decay is exp(A*sum))
  float* carries = nullptr;   // (Bt, K, nchunks, Dm, N): backward adjoint carried into each chunk
  float* dD_part = nullptr;   // (Bt, K, nchunks, Dm)
  float* dbias_part = nullptr;
};

struct Dims {
  unsigned x = 1, y = 1, z = 1;
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

// Halve the chunk until a launch has enough blocks to fill the device (2 per SM), keeping chunks >= 32 steps.
inline int parallel_chunk(int Lk, int64_t blocks_per_chunk, int num_sms) {
  const int64_t target = 2 * static_cast<int64_t>(std::max(1, num_sms));
  int chunk = std::max(1, Lk);
  while (chunk > 32 && ceil_div(Lk, chunk) * blocks_per_chunk < target) chunk = static_cast<int>(ceil_div(chunk, 2));
  return chunk;
}

// Shared memory of the backward main pass, in floats: checkpoints every `sub` steps, the states of one
// sub-chunk, the per-thread dB/dC contributions of one sub-chunk (padded rows: no bank conflicts), and the
// chunk's dB/dC sums.
inline int64_t backward_smem_floats(int chunk, int sub, int N, int tile) {
  const int64_t nsub = ceil_div(chunk, sub);
  return nsub * N * tile + static_cast<int64_t>(sub) * N * tile + 2LL * sub * N * (tile + 1) + 2LL * chunk * N;
}

constexpr int64_t kBackwardSmemBudget = 96 * 1024;  // bytes; fits sm_80 (163 KB) and sm_90 (227 KB) opt-in

inline void check_sizes(const ScanParams& p) {
  if (p.N < 1 || p.N > kMaxState)
    throw std::invalid_argument("vssm cuda scan: d_state N must be in 1.." + std::to_string(kMaxState) + ", got " +
                                std::to_string(p.N));
  if (static_cast<int64_t>(p.Bt) * p.K > 65535 || p.Bt > 65535)
    throw std::invalid_argument("vssm cuda scan: batch * directions must be at most 65535");
}

// chunk/tile: 0 = automatic; otherwise forced (tests force small values to exercise every code path).
inline void choose_forward_config(ScanParams& p, int num_sms, int chunk, int tile) {
  check_sizes(p);
  p.tile = tile > 0 ? tile : pick_tile(p.Dm, 128);
  p.ntiles = static_cast<int>(ceil_div(p.Dm, p.tile));
  p.chunk = chunk > 0 ? std::min(chunk, std::max(1, p.Lk))
                      : parallel_chunk(p.Lk, static_cast<int64_t>(p.Bt) * p.ntiles, num_sms);
  p.nchunks = static_cast<int>(ceil_div(std::max(1, p.Lk), p.chunk));
  p.sub = 1;
  p.smem_bytes = 0;
}

inline void choose_backward_config(ScanParams& p, int num_sms, int chunk, int tile, int sub) {
  check_sizes(p);
  p.tile = tile > 0 ? tile : pick_tile(p.Dm, p.N > 4 ? 32 : (p.N > 1 ? 64 : 128));
  p.ntiles = static_cast<int>(ceil_div(p.Dm, p.tile));
  p.sub = sub > 0 ? sub : (p.N > 4 ? 8 : 16);
  const int Lk = std::max(1, p.Lk);
  if (chunk > 0) {
    p.chunk = std::min(chunk, Lk);
  } else {
    // largest whole number of sub-chunks that fits the shared-memory budget, then shorter for parallelism
    int cap = p.sub;
    while (backward_smem_floats(cap + p.sub, p.sub, p.N, p.tile) * 4 <= kBackwardSmemBudget) cap += p.sub;
    const int par = parallel_chunk(Lk, p.Bt, num_sms);  // blocks loop over channel tiles
    p.chunk = static_cast<int>(std::min<int64_t>(cap, ceil_div(par, p.sub) * p.sub));
    p.chunk = std::min(p.chunk, Lk);
  }
  p.nchunks = static_cast<int>(ceil_div(Lk, p.chunk));
  p.smem_bytes = backward_smem_floats(p.chunk, p.sub, p.N, p.tile) * 4;
}

}  // namespace vssm
