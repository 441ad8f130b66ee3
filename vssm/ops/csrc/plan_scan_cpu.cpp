// Fused plan selective scan for the CPU (the 'cpu' backend of vssm.ops.plan_selective_scan), v2.
//
// One call reads the map along every direction of a plan through its index map, computes Δ per step
// (low-rank: Δ = W_k · dts_t + bias, never stored; or a full Δ read with its strides), runs the Mamba-1
// recurrence h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t, y_t = C_t · h_t + D u_t, and writes the merged
// output channel-last (sum / mean / none / group, gated by silu(z)). Backward returns every gradient,
// d(dts) and d(W) included, without materialising dΔ (B, K, D, L).
//
// Cost model (B batch, K directions, D channels per direction, L map positions, Lk steps per direction,
// N states, R = rank of Δ, P = R + 2N values per step in the packed projection row [dts | B | C]):
//
//   work split   tasks = (batch item or batch group) x channel group (K for 'group', else 1) x channel
//                block; a channel block is a whole number of 16-lane vectors; the K directions are walked
//                inside the task in a fixed order (k = 0..K-1), so the task owns every output element of
//                its block and no two tasks write the same float. The split aims at TARGET_TASKS (32)
//                tasks from the shapes only (split_work below), never from the thread count: results
//                are bitwise equal run to run and for any torch.get_num_threads(). Batch 1 still gets
//                ceil(D / 16) tasks (6 for VMamba-T stage 1), run on at::parallel_for's threads.
//   forward      one pass per (vector, direction): reads u at the visited positions (16 contiguous
//                channels = one cache line per step when u is channel-last; any strides work), one
//                packed row of P floats per step (shared by all vectors; L1/L2 resident), writes y into
//                the output (read-modify-write for sum/mean/group: the vector's output column,
//                L x 64 B, stays in L2 while the K directions add into it), then one gate/scale pass.
//                Bytes per image from memory: u (D L) + y (D L) + K Lk P for the rows, all float32;
//                Δ costs R FMAs per channel and step instead of K D L floats of traffic. Compute per
//                channel and step: R FMA + softplus (exp, log1p) + N x (exp + 3 FMA).
//   backward     per (batch item, vector, direction): one forward pass storing per step dt, softplus',
//                u, the upstream gradient and the N states (16 lanes x (4 + N) floats, a per-task buffer
//                capped at STEP_STORE_BYTES = 4 MiB; longer directions are cut into chunks that restart
//                from stored checkpoint states: one extra forward pass), then the reverse walk.
//                Reads u, grad_out, z once per direction, writes du, dz, ddelta (full Δ only) once.
//                Reductions over channels (d(dts), dB, dC per step) are summed over the task's vectors in
//                order and written as one row per channel block: workspace B x K x blocks x Lk x P floats
//                (blocks = 1 for batch >= 32), summed over blocks in order by a final pass that writes
//                the gradients in their tensors' strides. Parameter gradients (dA, dD, d bias, dW) are
//                accumulated per task over its batch items and steps, stored per batch group
//                (groups x K x D x (N + 2 + R) floats, at most 32 copies of the parameters), summed
//                over groups in order. No float atomics anywhere.
//
// Inputs are float32 (the Python wrapper converts other dtypes; float64 never comes here). Shapes,
// dtypes, contiguity and index values are checked here too (TORCH_CHECK), so a direct call with a bad
// index raises instead of writing out of bounds.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t VL = 16;                   // channel lanes per vector (one AVX-512 register)
constexpr int64_t TARGET_TASKS = 32;         // tasks per call the split aims at (shape-only)
constexpr int64_t STEP_STORE_BYTES = 4 << 20;  // backward per-task step store before chunking

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

inline float sigmoid(float x) { return 1.f / (1.f + std::exp(-x)); }

// Per (vector, direction) constants: A, W, bias, D for 16 channels (padded lanes zero).
struct VecConsts {
  std::vector<float> A, W;
  alignas(64) float bias[VL], D[VL];
  int64_t nl = 0;  // live lanes

  void load(const Problem& p, int64_t k, int64_t c0) {
    nl = std::min<int64_t>(VL, p.Dm - c0);
    A.assign(p.N * VL, 0.f);
    W.assign(std::max<int64_t>(p.R, 1) * VL, 0.f);
    for (int64_t l = 0; l < VL; ++l) bias[l] = D[l] = 0.f;
    for (int64_t l = 0; l < nl; ++l) {
      const int64_t pc = k * p.Dm + c0 + l;
      for (int64_t n = 0; n < p.N; ++n) A[n * VL + l] = p.A[pc * p.N + n];
      if (p.low_rank)
        for (int64_t r = 0; r < p.R; ++r) W[r * VL + l] = p.W[pc * p.R + r];
      if (p.bias) bias[l] = p.bias[pc];
      if (p.Dv) D[l] = p.Dv[pc];
    }
  }
};

// Δ at one step for 16 lanes (after bias and softplus) and softplus' (sg, may be null).
inline void step_delta(const Problem& p, const VecConsts& vc, const float* row, int64_t b, int64_t k,
                       int64_t c0, int64_t t, float* dt, float* sg) {
  alignas(64) float v[VL];
  for (int64_t l = 0; l < VL; ++l) v[l] = vc.bias[l];
  if (p.low_rank) {
    const float* W = vc.W.data();
    for (int64_t r = 0; r < p.R; ++r) {
      const float s = row[r];
#pragma omp simd
      for (int64_t l = 0; l < VL; ++l) v[l] += W[r * VL + l] * s;
    }
  } else {
    const float* d = p.delta + b * p.d_sb + k * p.d_sk + c0 * p.d_sc + t * p.d_st;
    for (int64_t l = 0; l < vc.nl; ++l) v[l] += d[l * p.d_sc];
  }
  if (p.softplus) {
#pragma omp simd
    for (int64_t l = 0; l < VL; ++l) {
      const float x = v[l];
      const float ex = std::exp(std::min(x, 20.f));
      dt[l] = x > 20.f ? x : std::log1p(ex);
      if (sg) sg[l] = x > 20.f ? 1.f : ex / (1.f + ex);
    }
  } else {
    for (int64_t l = 0; l < VL; ++l) {
      dt[l] = v[l];
      if (sg) sg[l] = 1.f;
    }
  }
}

// u at one step (zero where the step is padding on a map).
inline void step_u(const Problem& p, int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t t, int64_t pos,
                   int64_t nl, float* uv) {
  for (int64_t l = 0; l < VL; ++l) uv[l] = 0.f;
  const float* up;
  if (p.seq_u) {
    up = p.u + b * p.u_sb + k * p.u_sk + c0 * p.u_sc + t * p.u_sl;
  } else {
    if (pos < 0) return;
    up = p.u + b * p.u_sb + mch0 * p.u_sc + pos * p.u_sl;
  }
  if (p.u_sc == 1) {
    for (int64_t l = 0; l < nl; ++l) uv[l] = up[l];
  } else {
    for (int64_t l = 0; l < nl; ++l) uv[l] = up[l * p.u_sc];
  }
}

inline float* out_at(float* out, const Problem& p, int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t pos) {
  // channel-last: (B, L, Cmap) memory, or (B, K, L, Dm) for 'none'
  if (p.merge == kNone) return out + ((b * p.K + k) * p.L + pos) * p.Dm + c0;
  return out + (b * p.L + pos) * p.map_channels() + mch0;
}

// ------------------------------------------------------------------------------------------ forward

void forward_task(const Problem& p, float* out, int64_t b, int64_t g, int64_t v_begin, int64_t v_end) {
  const int64_t k0 = p.grouped() ? g : 0, k1 = p.grouped() ? g + 1 : p.K;
  VecConsts vc;
  std::vector<float> h(p.N * VL);
  alignas(64) float dt[VL], uv[VL], y[VL], dtu[VL];
  for (int64_t vi = v_begin; vi < v_end; ++vi) {
    const int64_t c0 = vi * VL, nl = std::min<int64_t>(VL, p.Dm - c0);
    const int64_t mch0 = (p.grouped() ? g * p.Dm : 0) + c0;
    // zero this vector's output column: a direction may skip positions (atrous, padding)
    for (int64_t k = (p.merge == kNone ? k0 : 0); k < (p.merge == kNone ? k1 : 1); ++k)
      for (int64_t pos = 0; pos < p.L; ++pos) std::memset(out_at(out, p, b, k, mch0, c0, pos), 0, nl * 4);
    for (int64_t k = k0; k < k1; ++k) {
      vc.load(p, k, c0);
      std::fill(h.begin(), h.end(), 0.f);
      const int64_t* idx = p.index + k * p.Lk;
      const float* rows = p.proj + (b * p.K + k) * p.Lk * p.P;
      const float* A = vc.A.data();
      for (int64_t t = 0; t < p.Lk; ++t) {
        const int64_t pos = idx[t];
        const float* row = rows + t * p.P;
        step_delta(p, vc, row, b, k, c0, t, dt, nullptr);
        step_u(p, b, k, mch0, c0, t, pos, nl, uv);
#pragma omp simd
        for (int64_t l = 0; l < VL; ++l) {
          y[l] = vc.D[l] * uv[l];
          dtu[l] = dt[l] * uv[l];
        }
        for (int64_t n = 0; n < p.N; ++n) {
          const float bn = row[p.R + n], cn = row[p.R + p.N + n];
          float* hn = h.data() + n * VL;
          const float* An = A + n * VL;
#pragma omp simd
          for (int64_t l = 0; l < VL; ++l) {
            const float hv = std::exp(dt[l] * An[l]) * hn[l] + dtu[l] * bn;
            hn[l] = hv;
            y[l] += hv * cn;
          }
        }
        if (pos < 0) continue;
        float* o = out_at(out, p, b, k, mch0, c0, pos);
        if (p.merge == kNone) {
          if (p.z) {
            const float* zp = p.z + b * p.z_sb + mch0 * p.z_sc + pos * p.z_sl;
            for (int64_t l = 0; l < nl; ++l) {
              const float zv = zp[l * p.z_sc];
              o[l] = y[l] * zv * sigmoid(zv);
            }
          } else {
            for (int64_t l = 0; l < nl; ++l) o[l] = y[l];
          }
        } else {
          for (int64_t l = 0; l < nl; ++l) o[l] += y[l];
        }
      }
    }
    if (p.merge != kNone && (p.z || p.scale != 1.f)) {  // gate and mean after all directions are in
      for (int64_t pos = 0; pos < p.L; ++pos) {
        float* o = out_at(out, p, b, 0, mch0, c0, pos);
        if (p.z) {
          const float* zp = p.z + b * p.z_sb + mch0 * p.z_sc + pos * p.z_sl;
          for (int64_t l = 0; l < nl; ++l) {
            const float zv = zp[l * p.z_sc];
            o[l] = o[l] * p.scale * (zv * sigmoid(zv));
          }
        } else {
          for (int64_t l = 0; l < nl; ++l) o[l] *= p.scale;
        }
      }
    }
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
  float* red = nullptr;  // (B, K, blocks, Lk, P): per channel block sums over channels [dts | B | C]
  float* par = nullptr;  // (bgroups, K, Dm, Q): per batch group sums [dA (N) | dD | dbias | dW (R)]
  int64_t Q = 0;
};

// Per-step record of the forward pass kept for the reverse walk (16 lanes each).
struct StepStore {
  int64_t stride = 0;  // floats per step: dt, sg, u, gy, h[N]
  std::vector<float> buf;
  float* at(int64_t i) { return buf.data() + i * stride; }
};

class BackwardTask {
 public:
  BackwardTask(const Problem& p, const Grads& gr, const Split& s) : p_(p), gr_(gr), s_(s) {
    st_.stride = (4 + p.N) * VL;
    chunk_ = std::max<int64_t>(1, std::min<int64_t>(p.Lk, STEP_STORE_BYTES / (4 * st_.stride)));
    st_.buf.resize(chunk_ * st_.stride);
    nchunks_ = (p.Lk + chunk_ - 1) / chunk_;
    checkpoints_.resize(nchunks_ * p.N * VL);
    dh_.resize(p.N * VL);
    h_.resize(p.N * VL);
    accA_.resize(p.N * VL);
    accW_.resize(std::max<int64_t>(p.R, 1) * VL);
    lane_.resize(p.P * VL);
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
          direction(b, k, mch0, c0, nl, blk, /*first_vector=*/vi == v0, /*first_batch=*/b == b0);
        }
      }
    }
  }

 private:
  const Problem& p_;
  const Grads& gr_;
  const Split& s_;
  VecConsts vc_;
  StepStore st_;
  int64_t chunk_ = 0, nchunks_ = 0;
  std::vector<float> checkpoints_, dh_, h_, accA_, accW_, lane_;
  alignas(64) float accD_[VL], accBias_[VL];

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

  // Forward over steps [t0, t1) from state h_; stores each step's record when `store`, adds dz when
  // `add_dz`, saves the state before each chunk start when `checkpoint`.
  void forward_steps(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t nl, int64_t t0, int64_t t1, bool store,
                     bool add_dz, bool checkpoint) {
    const int64_t* idx = p_.index + k * p_.Lk;
    const float* rows = p_.proj + (b * p_.K + k) * p_.Lk * p_.P;
    const float* A = vc_.A.data();
    alignas(64) float dt[VL], sg[VL], uv[VL], y[VL], dtu[VL], gy[VL];
    for (int64_t t = t0; t < t1; ++t) {
      if (checkpoint && t % chunk_ == 0)
        std::copy(h_.begin(), h_.end(), checkpoints_.begin() + (t / chunk_) * p_.N * VL);
      const int64_t pos = idx[t];
      const float* row = rows + t * p_.P;
      step_delta(p_, vc_, row, b, k, c0, t, dt, sg);
      step_u(p_, b, k, mch0, c0, t, pos, nl, uv);
#pragma omp simd
      for (int64_t l = 0; l < VL; ++l) {
        y[l] = vc_.D[l] * uv[l];
        dtu[l] = dt[l] * uv[l];
      }
      float* rec = store ? st_.at(t - t0) : nullptr;
      for (int64_t n = 0; n < p_.N; ++n) {
        const float bn = row[p_.R + n], cn = row[p_.R + p_.N + n];
        float* hn = h_.data() + n * VL;
        const float* An = A + n * VL;
#pragma omp simd
        for (int64_t l = 0; l < VL; ++l) {
          const float hv = std::exp(dt[l] * An[l]) * hn[l] + dtu[l] * bn;
          hn[l] = hv;
          y[l] += hv * cn;
        }
        if (rec) std::memcpy(rec + (4 + n) * VL, hn, VL * 4);
      }
      // the gradient reaching y_k at this step (after the gate and the mean), and dz's share
      for (int64_t l = 0; l < VL; ++l) gy[l] = 0.f;
      if (pos >= 0) {
        const float* gp = p_.merge == kNone
                              ? gr_.g + b * gr_.g_sb + k * gr_.g_sk + c0 * gr_.g_sc + pos * gr_.g_sl
                              : gr_.g + b * gr_.g_sb + mch0 * gr_.g_sc + pos * gr_.g_sl;
        if (p_.z) {
          const float* zp = p_.z + b * p_.z_sb + mch0 * p_.z_sc + pos * p_.z_sl;
          float* dzp = gr_.dz + b * gr_.dz_sb + mch0 * gr_.dz_sc + pos * gr_.dz_sl;
          for (int64_t l = 0; l < nl; ++l) {
            const float zv = zp[l * p_.z_sc], sz = sigmoid(zv), gv = gp[l * gr_.g_sc] * p_.scale;
            gy[l] = gv * zv * sz;
            if (add_dz) dzp[l * gr_.dz_sc] += gv * y[l] * sz * (1.f + zv * (1.f - sz));
          }
        } else {
          for (int64_t l = 0; l < nl; ++l) gy[l] = gp[l * gr_.g_sc] * p_.scale;
        }
      }
      if (rec) {
        std::memcpy(rec, dt, VL * 4);
        std::memcpy(rec + VL, sg, VL * 4);
        std::memcpy(rec + 2 * VL, uv, VL * 4);
        std::memcpy(rec + 3 * VL, gy, VL * 4);
      }
    }
  }

  // Reverse walk over steps [t0, t1) whose records are in the store; h_prev0 = state before t0.
  void backward_steps(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t nl, int64_t t0, int64_t t1,
                      const float* h_prev0, float* red_rows, bool first_vector) {
    const int64_t* idx = p_.index + k * p_.Lk;
    const float* rows = p_.proj + (b * p_.K + k) * p_.Lk * p_.P;
    const float* A = vc_.A.data();
    const float* Wv = vc_.W.data();
    const int64_t N = p_.N, R = p_.R;
    float* lane = lane_.data();  // per-lane terms of this step's channel sums: [dts (R) | B (N) | C (N)]
    alignas(64) float dul[VL], ddt[VL], dv[VL];
    for (int64_t t = t1 - 1; t >= t0; --t) {
      float* rec = st_.at(t - t0);
      const float* dt = rec;
      const float* sg = rec + VL;
      const float* uv = rec + 2 * VL;
      const float* gy = rec + 3 * VL;
      const float* hprev = t > t0 ? st_.at(t - 1 - t0) + 4 * VL : h_prev0;
      const int64_t pos = idx[t];
      const float* row = rows + t * p_.P;
#pragma omp simd
      for (int64_t l = 0; l < VL; ++l) {
        dul[l] = vc_.D[l] * gy[l];
        ddt[l] = 0.f;
        accD_[l] += gy[l] * uv[l];
      }
      for (int64_t n = 0; n < N; ++n) {
        const float bn = row[R + n], cn = row[R + N + n];
        const float* An = A + n * VL;
        const float* hn = rec + (4 + n) * VL;
        const float* hp = hprev + n * VL;
        float* dhn = dh_.data() + n * VL;
        float* aA = accA_.data() + n * VL;
        float* lB = lane + (R + n) * VL;
        float* lC = lane + (R + N + n) * VL;
#pragma omp simd
        for (int64_t l = 0; l < VL; ++l) {
          const float e = std::exp(dt[l] * An[l]);
          const float dhv = dhn[l] + gy[l] * cn;  // total gradient reaching h_t
          const float q = dhv * e * hp[l];
          lC[l] = gy[l] * hn[l];
          lB[l] = dhv * dt[l] * uv[l];
          dul[l] += dhv * dt[l] * bn;
          ddt[l] += An[l] * q + dhv * bn * uv[l];
          aA[l] += q * dt[l];
          dhn[l] = dhv * e;  // carried to h_{t-1}
        }
      }
#pragma omp simd
      for (int64_t l = 0; l < VL; ++l) {
        dv[l] = ddt[l] * sg[l];
        accBias_[l] += dv[l];
      }
      if (p_.low_rank) {
        for (int64_t r = 0; r < R; ++r) {
          const float s = row[r];
          float* aW = accW_.data() + r * VL;
          float* lD = lane + r * VL;
#pragma omp simd
          for (int64_t l = 0; l < VL; ++l) {
            aW[l] += dv[l] * s;
            lD[l] = Wv[r * VL + l] * dv[l];
          }
        }
      } else {
        float* d = gr_.ddelta + b * gr_.dd_sb + k * gr_.dd_sk + c0 * gr_.dd_sc + t * gr_.dd_st;
        for (int64_t l = 0; l < nl; ++l) d[l * gr_.dd_sc] = dv[l];
      }
      // channel sums of this vector (padded lanes hold zeros), added to the block's row in vector order
      float* rr = red_rows + t * p_.P;
      for (int64_t q = (p_.low_rank ? 0 : R); q < p_.P; ++q) {
        const float* lq = lane + q * VL;
        float s = 0.f;
#pragma omp simd reduction(+ : s)
        for (int64_t l = 0; l < VL; ++l) s += lq[l];
        rr[q] = first_vector ? s : rr[q] + s;
      }
      if (p_.seq_u) {
        float* d = gr_.du + b * gr_.du_sb + k * gr_.du_sk + c0 * gr_.du_sc + t * gr_.du_sl;
        for (int64_t l = 0; l < nl; ++l) d[l * gr_.du_sc] = dul[l];
      } else if (pos >= 0) {
        float* d = gr_.du + b * gr_.du_sb + mch0 * gr_.du_sc + pos * gr_.du_sl;
        for (int64_t l = 0; l < nl; ++l) d[l * gr_.du_sc] += dul[l];
      }
    }
  }

  void direction(int64_t b, int64_t k, int64_t mch0, int64_t c0, int64_t nl, int64_t blk, bool first_vector,
                 bool first_batch) {
    const int64_t N = p_.N;
    std::fill(accA_.begin(), accA_.end(), 0.f);
    std::fill(accW_.begin(), accW_.end(), 0.f);
    std::fill(lane_.begin(), lane_.end(), 0.f);  // padded lanes stay zero in the channel sums
    for (int64_t l = 0; l < VL; ++l) accD_[l] = accBias_[l] = 0.f;
    std::fill(dh_.begin(), dh_.end(), 0.f);
    std::fill(h_.begin(), h_.end(), 0.f);
    float* red_rows = gr_.red + ((b * p_.K + k) * s_.blocks + blk) * p_.Lk * p_.P;
    const std::vector<float> zeros(N * VL, 0.f);
    if (nchunks_ == 1) {
      forward_steps(b, k, mch0, c0, nl, 0, p_.Lk, true, true, false);
      backward_steps(b, k, mch0, c0, nl, 0, p_.Lk, zeros.data(), red_rows, first_vector);
    } else {  // long direction: checkpoints every chunk_ steps, each chunk recomputed before its reverse walk
      forward_steps(b, k, mch0, c0, nl, 0, p_.Lk, false, true, true);
      std::vector<float> hprev(N * VL);
      for (int64_t c = nchunks_ - 1; c >= 0; --c) {
        const int64_t t0 = c * chunk_, t1 = std::min(p_.Lk, t0 + chunk_);
        std::copy(checkpoints_.begin() + c * N * VL, checkpoints_.begin() + (c + 1) * N * VL, h_.begin());
        hprev.assign(h_.begin(), h_.end());
        forward_steps(b, k, mch0, c0, nl, t0, t1, true, false, false);
        backward_steps(b, k, mch0, c0, nl, t0, t1, hprev.data(), red_rows, first_vector);
      }
    }
    // parameter sums of this (batch item, vector, direction), added to the batch group's slot in batch order
    const int64_t bg = b / s_.per_bgroup;
    for (int64_t l = 0; l < nl; ++l) {
      float* slot = gr_.par + ((bg * p_.K + k) * p_.Dm + c0 + l) * gr_.Q;
      for (int64_t n = 0; n < N; ++n) slot[n] = first_batch ? accA_[n * VL + l] : slot[n] + accA_[n * VL + l];
      slot[N] = first_batch ? accD_[l] : slot[N] + accD_[l];
      slot[N + 1] = first_batch ? accBias_[l] : slot[N + 1] + accBias_[l];
      for (int64_t r = 0; r < p_.R; ++r)
        slot[N + 2 + r] = first_batch ? accW_[r * VL + l] : slot[N + 2 + r] + accW_[r * VL + l];
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
  auto red = torch::empty({p.B, p.K, s.blocks, p.Lk, p.P}, u.options());
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
      const float* rb = gr.red + bk * s.blocks * p.Lk * p.P;
      for (int64_t t = 0; t < p.Lk; ++t) {
        for (int64_t q = (p.low_rank ? 0 : p.R); q < p.P; ++q) {
          float acc = rb[t * p.P + q];
          for (int64_t j = 1; j < s.blocks; ++j) acc += rb[(j * p.Lk + t) * p.P + q];
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
