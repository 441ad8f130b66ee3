// Fused plan scan for the CPU: reads the map along each direction through the index map, runs the
// selective scan (Mamba-1 semantics) and accumulates the merged output in one pass, no cross-scan
// copies. Channels are the inner loop so the compiler vectorises exp/log1p across them.
// Forward only: gradients come from the differentiable PyTorch path (vssm/ops/scan.py).
#include <torch/extension.h>
#include <cmath>
#include <vector>

namespace {

// inputs are float32, channel-last, contiguous:
//   u      (B, L, D) map or (B, K, Lk, D) sequences     delta (B, K, Lk, D)
//   A      (K, D, N)     Bm, Cm (B, K, Lk, N)     Dv, bias (K, D) (may be empty)
//   index  (K, Lk) int64, -1 = padding
// out: (B, L, D) for sum/mean, (B, K, L, D) for none (zero-initialised)
void scan_one(const float* u, bool u_is_seq, const float* delta, const float* A, const float* Bm,
              const float* Cm, const float* Dv, const float* bias, const int64_t* index, float* out,
              bool per_direction, bool softplus, int64_t b, int64_t K, int64_t Lk, int64_t L, int64_t D,
              int64_t N) {
  std::vector<float> h(D * N), dt(D), uv(D), y(D);
  for (int64_t k = 0; k < K; ++k) {
    std::fill(h.begin(), h.end(), 0.f);
    const float* Ak = A + k * D * N;
    const float* Dk = Dv ? Dv + k * D : nullptr;
    const float* bk = bias ? bias + k * D : nullptr;
    float* outk = out + (per_direction ? (b * K + k) * L * D : b * L * D);
    for (int64_t t = 0; t < Lk; ++t) {
      const int64_t pos = index[k * Lk + t];
      const float* dl = delta + ((b * K + k) * Lk + t) * D;
      const float* ul = u_is_seq ? u + ((b * K + k) * Lk + t) * D : (pos >= 0 ? u + (b * L + pos) * D : nullptr);
      const float* Bt = Bm + ((b * K + k) * Lk + t) * N;
      const float* Ct = Cm + ((b * K + k) * Lk + t) * N;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) {
        float v = dl[d] + (bk ? bk[d] : 0.f);
        if (softplus) v = v > 20.f ? v : std::log1p(std::exp(v));
        dt[d] = v;
        uv[d] = ul ? ul[d] : 0.f;
        y[d] = Dk ? Dk[d] * uv[d] : 0.f;
      }
      for (int64_t n = 0; n < N; ++n) {
        const float bn = Bt[n], cn = Ct[n];
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) {
          float hv = std::exp(dt[d] * Ak[d * N + n]) * h[d * N + n] + dt[d] * bn * uv[d];
          h[d * N + n] = hv;
          y[d] += hv * cn;
        }
      }
      if (pos >= 0) {
        float* o = outk + pos * D;
#pragma omp simd
        for (int64_t d = 0; d < D; ++d) o[d] += y[d];
      }
    }
  }
}

}  // namespace

torch::Tensor plan_scan_forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor Bm,
                                torch::Tensor Cm, torch::Tensor Dv, torch::Tensor bias, torch::Tensor index,
                                int64_t length, bool per_direction, bool softplus) {
  TORCH_CHECK(u.scalar_type() == torch::kFloat32 && delta.scalar_type() == torch::kFloat32,
              "plan_scan_cpu takes float32 (the Python wrapper converts)");
  TORCH_CHECK(u.is_contiguous() && delta.is_contiguous() && A.is_contiguous() && Bm.is_contiguous() &&
              Cm.is_contiguous() && index.is_contiguous(), "plan_scan_cpu needs contiguous inputs");
  const bool u_is_seq = u.dim() == 4;
  const int64_t B = delta.size(0), K = delta.size(1), Lk = delta.size(2), D = delta.size(3), N = A.size(2);
  auto out = per_direction ? torch::zeros({B, K, length, D}, u.options()) : torch::zeros({B, length, D}, u.options());
  const float* Dp = Dv.numel() ? Dv.data_ptr<float>() : nullptr;
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
#pragma omp parallel for
  for (int64_t b = 0; b < B; ++b) {
    scan_one(u.data_ptr<float>(), u_is_seq, delta.data_ptr<float>(), A.data_ptr<float>(), Bm.data_ptr<float>(),
             Cm.data_ptr<float>(), Dp, bp, index.data_ptr<int64_t>(), out.data_ptr<float>(), per_direction,
             softplus, b, K, Lk, length, D, N);
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("plan_scan_forward", &plan_scan_forward, "fused plan selective scan, CPU forward");
}
