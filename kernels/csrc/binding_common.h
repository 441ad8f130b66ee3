// Torch side of the extension: checks the tensors, fills ScanParams, allocates outputs and scratch, runs
// the launches through a Runner, and reduces the per-chunk partials. Shared by the CUDA module
// (binding_cuda.cpp) and the CPU emulator module (binding_emulator.cpp).
//
// Runner provides: void check_device(const at::Tensor&, const char* name); int num_sms(const at::Tensor&);
// void forward(const ScanParams&, DType); void backward(const ScanParams&, DType); bool poison_scratch.
#pragma once
// ATen and torch's pybind casters only: torch/extension.h would also compile the whole C++ frontend
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <vector>

#include "scan_params.h"

namespace vssm {

using OptTensor = std::optional<at::Tensor>;

inline DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kFloat32;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default: TORCH_CHECK(false, "vssm cuda scan: u must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return kFloat32;
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  TORCH_CHECK(t.sizes() == shape, "vssm cuda scan: ", name, " must have shape ", shape, ", got ", t.sizes());
}

template <class Runner>
void check_like(Runner& r, const at::Tensor& t, const at::Tensor& u, const char* name) {
  r.check_device(t, name);
  TORCH_CHECK(t.scalar_type() == u.scalar_type(), "vssm cuda scan: ", name, " must have u's dtype ", u.scalar_type(),
              ", got ", t.scalar_type(), " (the Python wrapper casts mixed inputs)");
}

template <class Runner>
void check_f32(Runner& r, const at::Tensor& t, const char* name) {
  r.check_device(t, name);
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.is_contiguous(), "vssm cuda scan: ", name,
              " must be a contiguous float32 tensor");
}

inline void strides4(const at::Tensor& t, int64_t* s) {
  for (int i = 0; i < 4; ++i) s[i] = t.stride(i);
}
inline void strides_map(const at::Tensor& t, int64_t* s) {  // (B, D, L) as (b, k=0, d, pos)
  s[0] = t.stride(0);
  s[1] = 0;
  s[2] = t.stride(1);
  s[3] = t.stride(2);
}

inline at::Tensor scratch(const at::Tensor& like, at::IntArrayRef shape, bool poison) {
  // poisoned (NaN) in the emulator so that a read before write shows up in the results
  auto opts = like.options().dtype(at::kFloat);
  return poison ? at::full(shape, std::numeric_limits<float>::quiet_NaN(), opts) : at::empty(shape, opts);
}

// Common checks and fields of forward and backward.
template <class Runner>
ScanParams make_params(Runner& r, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                       const at::Tensor& Bm, const at::Tensor& Cm, const OptTensor& D, const OptTensor& z,
                       const OptTensor& bias, const at::Tensor& index, int64_t length, int64_t merge, bool softplus) {
  r.check_device(u, "u");
  dtype_code(u);
  TORCH_CHECK(merge >= 0 && merge <= 2, "vssm cuda scan: merge code must be 0 (sum), 1 (mean) or 2 (none)");
  r.check_device(index, "index");
  TORCH_CHECK(index.dim() == 2 && index.scalar_type() == at::kLong && index.is_contiguous(),
              "vssm cuda scan: index must be a contiguous (K, Lk) int64 tensor");
  ScanParams p;
  p.K = static_cast<int>(index.size(0));
  p.Lk = static_cast<int>(index.size(1));
  p.L = static_cast<int>(length);
  TORCH_CHECK(delta.dim() == 4, "vssm cuda scan: delta must be (B, K, D, Lk)");
  p.Bt = static_cast<int>(delta.size(0));
  p.Dm = static_cast<int>(delta.size(2));
  check_like(r, delta, u, "delta");
  check_shape(delta, {p.Bt, p.K, p.Dm, p.Lk}, "delta");
  check_f32(r, A, "A");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == int64_t(p.K) * p.Dm, "vssm cuda scan: A must be (K*D, N)");
  p.N = static_cast<int>(A.size(1));
  check_like(r, Bm, u, "B");
  check_shape(Bm, {p.Bt, p.K, p.N, p.Lk}, "B");
  check_like(r, Cm, u, "C");
  check_shape(Cm, {p.Bt, p.K, p.N, p.Lk}, "C");
  p.seq_u = u.dim() == 4;
  if (p.seq_u) {
    check_shape(u, {p.Bt, p.K, p.Dm, p.Lk}, "u (sequences)");
    strides4(u, p.su);
  } else {
    check_shape(u, {p.Bt, p.Dm, p.L}, "u (map)");
    strides_map(u, p.su);
  }
  p.merge = static_cast<int>(merge);
  p.scale = merge == kMergeMean ? 1.f / p.K : 1.f;
  p.softplus = softplus;
  p.delta = delta.data_ptr();
  strides4(delta, p.sdelta);
  p.A = A.data_ptr<float>();
  p.Bm = Bm.data_ptr();
  strides4(Bm, p.sB);
  p.Cm = Cm.data_ptr();
  strides4(Cm, p.sC);
  if (D) {
    check_f32(r, *D, "D");
    check_shape(*D, {int64_t(p.K) * p.Dm}, "D");
    p.has_D = true;
    p.D = D->data_ptr<float>();
  }
  if (bias) {
    check_f32(r, *bias, "delta_bias");
    check_shape(*bias, {int64_t(p.K) * p.Dm}, "delta_bias");
    p.has_bias = true;
    p.bias = bias->data_ptr<float>();
  }
  if (z) {
    check_like(r, *z, u, "z");
    check_shape(*z, {p.Bt, p.Dm, p.L}, "z");
    p.has_z = true;
    p.z = z->data_ptr();
    p.sz[0] = z->stride(0);
    p.sz[1] = z->stride(1);
    p.sz[2] = z->stride(2);
  }
  p.u = u.data_ptr();
  p.index = index.data_ptr<int64_t>();
  return p;
}

// Output: sum/mean -> (B, D, L) laid out channel-last; none -> (B, K, D, L) laid out (B, K, L, D).
template <class Runner>
at::Tensor scan_forward(Runner& r, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                        const at::Tensor& Bm, const at::Tensor& Cm, const OptTensor& D, const OptTensor& z,
                        const OptTensor& bias, const at::Tensor& index, int64_t length, int64_t merge, bool softplus,
                        int64_t chunk, int64_t tile, int64_t num_sms) {
  ScanParams p = make_params(r, u, delta, A, Bm, Cm, D, z, bias, index, length, merge, softplus);
  choose_forward_config(p, num_sms > 0 ? static_cast<int>(num_sms) : r.num_sms(u), static_cast<int>(chunk),
                        static_cast<int>(tile));
  const bool fp32 = u.scalar_type() == at::kFloat;
  at::Tensor out, acc, states, sdt;
  if (p.merge == kMergeNone) {
    out = at::zeros({p.Bt, p.K, p.L, p.Dm}, u.options()).transpose(2, 3);  // unvisited positions stay 0
    strides4(out, p.so);
  } else {
    acc = at::zeros({p.Bt, p.L, p.Dm}, u.options().dtype(at::kFloat));
    out = fp32 ? acc : at::empty({p.Bt, p.L, p.Dm}, u.options());
    out = out.transpose(1, 2);
    strides_map(out, p.so);
    p.acc = acc.data_ptr<float>();
    p.finalize = !(fp32 && p.scale == 1.f && !p.has_z);  // fp32 sum without gate: acc is already the output
  }
  p.out = out.data_ptr();
  if (p.nchunks > 1) {
    states = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm, p.N}, r.poison_scratch);
    sdt = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm}, r.poison_scratch);
    p.states = states.data_ptr<float>();
    p.sdt = sdt.data_ptr<float>();
  }
  r.forward(p, dtype_code(u));
  return out;
}

// Returns [du, ddelta, dA, dB, dC, dD, dz, dbias]; absent optional inputs get an empty tensor.
// du, ddelta, dz are in u's dtype; dA, dB, dC, dD, dbias are float32.
template <class Runner>
std::vector<at::Tensor> scan_backward(Runner& r, const at::Tensor& gout, const at::Tensor& u, const at::Tensor& delta,
                                      const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                      const OptTensor& D, const OptTensor& z, const OptTensor& bias,
                                      const at::Tensor& index, int64_t length, int64_t merge, bool softplus,
                                      int64_t chunk, int64_t tile, int64_t sub, int64_t num_sms) {
  ScanParams p = make_params(r, u, delta, A, Bm, Cm, D, z, bias, index, length, merge, softplus);
  choose_backward_config(p, num_sms > 0 ? static_cast<int>(num_sms) : r.num_sms(u), static_cast<int>(chunk),
                         static_cast<int>(tile), static_cast<int>(sub));
  check_like(r, gout, u, "grad_out");
  if (p.merge == kMergeNone) {
    check_shape(gout, {p.Bt, p.K, p.Dm, p.L}, "grad_out");
    strides4(gout, p.sg);
  } else {
    check_shape(gout, {p.Bt, p.Dm, p.L}, "grad_out");
    strides_map(gout, p.sg);
  }
  p.gout = gout.data_ptr();
  const bool poison = r.poison_scratch;
  auto f32 = u.options().dtype(at::kFloat);

  at::Tensor du = at::empty_like(u, at::MemoryFormat::Contiguous);
  p.du = du.data_ptr();
  if (p.seq_u) strides4(du, p.sdu); else strides_map(du, p.sdu);
  at::Tensor ddelta = at::empty(delta.sizes(), delta.options());
  p.ddelta = ddelta.data_ptr();
  strides4(ddelta, p.sdd);
  at::Tensor dz, acc, accy;
  if (p.has_z) {
    dz = at::empty(z->sizes(), z->options());
    p.dz = dz.data_ptr();
    for (int i = 0; i < 3; ++i) p.sdz[i] = dz.stride(i);
    accy = at::zeros({p.Bt, p.L, p.Dm}, f32);
    p.accy = accy.data_ptr<float>();
  }
  if (!p.seq_u) {
    acc = at::zeros({p.Bt, p.L, p.Dm}, f32);
    p.acc = acc.data_ptr<float>();
  }
  at::Tensor dB = scratch(u, {p.Bt, p.K, p.N, p.Lk}, poison), dC = scratch(u, {p.Bt, p.K, p.N, p.Lk}, poison);
  p.dB = dB.data_ptr<float>();
  p.dC = dC.data_ptr<float>();
  at::Tensor states = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm, p.N}, poison);  // chunk states, then dA partials
  at::Tensor dD_part = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm}, poison);
  at::Tensor dbias_part = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm}, poison);
  p.states = states.data_ptr<float>();
  p.dD_part = dD_part.data_ptr<float>();
  p.dbias_part = dbias_part.data_ptr<float>();
  at::Tensor sdt, carries;
  if (p.nchunks > 1) {
    sdt = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm}, poison);
    carries = scratch(u, {p.Bt, p.K, p.nchunks, p.Dm, p.N}, poison);
    p.sdt = sdt.data_ptr<float>();
    p.carries = carries.data_ptr<float>();
  }
  r.backward(p, dtype_code(u));

  // partials summed over batch and chunks by torch's (deterministic) reductions
  at::Tensor dA = states.sum({0, 2}).reshape({int64_t(p.K) * p.Dm, p.N});
  at::Tensor empty = u.new_empty({0});
  at::Tensor dD = D ? dD_part.sum({0, 2}).reshape({-1}) : empty;
  at::Tensor dbias = bias ? dbias_part.sum({0, 2}).reshape({-1}) : empty;
  return {du, ddelta, dA, dB, dC, dD, p.has_z ? dz : empty, dbias};
}

// The Python-visible functions of a module built with Runner.
template <class Runner>
void define_functions(pybind11::module_& m) {
  m.def(
      "forward",
      [](const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
         const at::Tensor& Cm, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
         const at::Tensor& index, int64_t length, int64_t merge, bool softplus, int64_t chunk, int64_t tile,
         int64_t num_sms) {
        Runner r;
        return scan_forward(r, u, delta, A, Bm, Cm, D, z, bias, index, length, merge, softplus, chunk, tile,
                            num_sms);
      },
      "Fused plan scan forward: (u, delta, A, B, C, D, z, delta_bias, index, length, merge, softplus, chunk, tile, "
      "num_sms) -> out",
      pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"), pybind11::arg("C"),
      pybind11::arg("D"), pybind11::arg("z"), pybind11::arg("delta_bias"), pybind11::arg("index"),
      pybind11::arg("length"), pybind11::arg("merge"), pybind11::arg("delta_softplus"), pybind11::arg("chunk") = 0,
      pybind11::arg("tile") = 0, pybind11::arg("num_sms") = 0);
  m.def(
      "backward",
      [](const at::Tensor& gout, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
         const at::Tensor& Bm, const at::Tensor& Cm, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
         const at::Tensor& index, int64_t length, int64_t merge, bool softplus, int64_t chunk, int64_t tile,
         int64_t sub, int64_t num_sms) {
        Runner r;
        return scan_backward(r, gout, u, delta, A, Bm, Cm, D, z, bias, index, length, merge, softplus, chunk, tile,
                             sub, num_sms);
      },
      "Fused plan scan backward -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias] (empty for absent inputs)",
      pybind11::arg("grad_out"), pybind11::arg("u"), pybind11::arg("delta"), pybind11::arg("A"), pybind11::arg("B"),
      pybind11::arg("C"), pybind11::arg("D"), pybind11::arg("z"), pybind11::arg("delta_bias"),
      pybind11::arg("index"), pybind11::arg("length"), pybind11::arg("merge"), pybind11::arg("delta_softplus"),
      pybind11::arg("chunk") = 0, pybind11::arg("tile") = 0, pybind11::arg("sub") = 0, pybind11::arg("num_sms") = 0);
}

}  // namespace vssm
