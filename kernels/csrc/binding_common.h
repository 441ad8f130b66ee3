// Torch side of the extension: checks the tensors (a direct call that bypasses vssm's Python checks must fail
// with a clear error, never write out of bounds), fills ScanParams, allocates outputs and scratch, runs the
// launches through a Runner, and reduces the per-chunk partials. Shared by the CUDA module (binding_cuda.cpp)
// and the CPU emulator module (binding_emulator.cpp).
//
// Runner provides: void check_device(const at::Tensor&, const char* name); int num_sms(const at::Tensor&);
// void forward(const ScanParams&, DType); void backward(const ScanParams&, DType); bool poison_scratch.
#pragma once
// ATen and torch's pybind casters only: torch/extension.h would also compile the whole C++ frontend
#include <ATen/ATen.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include <climits>
#include <iterator>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cost_model.h"

// bad input is a ValueError (TypeError for a dtype) in Python, with what was expected
#define VSSM_CHECK(cond, ...) TORCH_CHECK_VALUE(cond, "vssm cuda scan: ", __VA_ARGS__)

namespace vssm {

using OptTensor = std::optional<at::Tensor>;

inline DType dtype_code(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return kFloat32;
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    default:
      TORCH_CHECK_TYPE(false, "vssm cuda scan: u must be float32, float16 or bfloat16, got ", t.scalar_type());
  }
  return kFloat32;
}

inline void check_shape(const at::Tensor& t, at::IntArrayRef shape, const char* name) {
  VSSM_CHECK(t.sizes() == shape, name, " must have shape ", shape, ", got ", t.sizes());
}

template <class Runner>
void check_like(Runner& r, const at::Tensor& t, const at::Tensor& u, const char* name) {
  r.check_device(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == u.scalar_type(), "vssm cuda scan: ", name, " must have u's dtype ",
                   u.scalar_type(), ", got ", t.scalar_type(), " (the Python wrapper casts mixed inputs)");
}

template <class Runner>
void check_f32(Runner& r, const at::Tensor& t, const char* name) {
  r.check_device(t, name);
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat, "vssm cuda scan: ", name, " must be float32, got ", t.scalar_type());
  VSSM_CHECK(t.is_contiguous(), name, " must be contiguous (the kernels index it densely)");
}

inline void strides4(const at::Tensor& t, int64_t* s) {
  for (int i = 0; i < 4; ++i) s[i] = t.stride(i);
}
// (B, C, L) map as (b, k, d, pos): shared by the directions (k stride 0), or grouped (direction k reads
// channels k*Dm.. : k stride Dm * channel stride)
inline void strides_map(const at::Tensor& t, int64_t* s, int64_t k_channels = 0) {
  s[0] = t.stride(0);
  s[1] = k_channels * t.stride(1);
  s[2] = t.stride(1);
  s[3] = t.stride(2);
}

inline bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// ------------------------------------------------------------------------------------------ index maps

struct IndexInfo {
  bool first_full = false, last_full = false, all_full = false;  // a direction visits every map position
};

// Every value in [-1, L), each position at most once per direction: the kernels write through the map
// without bounds checks or atomics.
inline IndexInfo inspect_index(const at::Tensor& index_cpu, int64_t L) {
  const int64_t K = index_cpu.size(0), Lk = index_cpu.size(1);
  const int64_t* v = index_cpu.data_ptr<int64_t>();
  std::vector<int64_t> seen(static_cast<size_t>(L), -1);
  IndexInfo info;
  info.all_full = true;
  for (int64_t k = 0; k < K; ++k) {
    int64_t visited = 0;
    for (int64_t t = 0; t < Lk; ++t) {
      const int64_t x = v[k * Lk + t];
      VSSM_CHECK(x >= -1 && x < L, "index[", k, ", ", t, "] = ", x, " is outside [-1, ", L,
                 "): index must hold map positions in [0, length) or -1 for padding");
      if (x < 0) continue;
      VSSM_CHECK(seen[x] != k, "index direction ", k, " visits map position ", x,
                 " twice; each position may appear at most once per direction");
      seen[x] = k;
      ++visited;
    }
    const bool full = visited == L;
    if (k == 0) info.first_full = full;
    if (k == K - 1) info.last_full = full;
    info.all_full = info.all_full && full;
  }
  return info;
}

// Checked once per index tensor: the cache holds a weak reference (the address of a live or weakly held
// TensorImpl cannot be reused by another tensor) with the version, data pointer and length it was checked at.
// A CUDA index is copied to the host the first time only.
inline IndexInfo checked_index(const at::Tensor& index, int64_t L) {
  struct Entry {
    c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl> ref;
    int64_t version, length;
    const void* data;
    IndexInfo info;
  };
  static std::mutex mutex;
  static std::unordered_map<const c10::TensorImpl*, Entry> cache;
  const int64_t version = index.is_inference() ? -1 : index._version();
  std::lock_guard<std::mutex> lock(mutex);
  const c10::TensorImpl* key = index.unsafeGetTensorImpl();
  auto it = cache.find(key);
  if (it != cache.end() && !it->second.ref.expired() && it->second.version == version && it->second.length == L &&
      it->second.data == index.data_ptr())
    return it->second.info;
  const IndexInfo info = inspect_index(index.is_cpu() ? index : index.cpu(), L);
  if (cache.size() >= 256) {
    for (auto e = cache.begin(); e != cache.end();) e = e->second.ref.expired() ? cache.erase(e) : std::next(e);
    if (cache.size() >= 256) cache.clear();
  }
  cache.insert_or_assign(key, Entry{c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>(
                                        index.getIntrusivePtr()),
                                    version, L, index.data_ptr(), info});
  return info;
}

// --------------------------------------------------------------------------------------------- tensors

// Float32 scratch, NaN in the emulator so that a read before a write shows up in the results.
inline at::Tensor scratch(const at::Tensor& like, at::IntArrayRef shape, bool poison, bool zero = false) {
  auto opts = like.options().dtype(at::kFloat);
  if (zero) return at::zeros(shape, opts);
  return poison ? at::full(shape, std::numeric_limits<float>::quiet_NaN(), opts) : at::empty(shape, opts);
}
// An output in the layout of `like` (torch.empty_like's strides: the op passes it on without a copy).
inline at::Tensor output_like(const at::Tensor& like, bool poison, bool zero) {
  at::Tensor t = at::empty_like(like);
  if (zero) t.zero_();
  else if (poison) t.fill_(std::numeric_limits<float>::quiet_NaN());
  return t;
}
inline at::Tensor output_new(const at::Tensor& like, at::IntArrayRef shape, bool poison, bool zero) {
  if (zero) return at::zeros(shape, like.options());
  if (poison) return at::full(shape, std::numeric_limits<float>::quiet_NaN(), like.options());
  return at::empty(shape, like.options());
}

// Common checks and fields of forward and backward.
template <class Runner>
ScanParams make_params(Runner& r, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                       const at::Tensor& Bm, const at::Tensor& Cm, const OptTensor& D, const OptTensor& z,
                       const OptTensor& bias, const OptTensor& W, const at::Tensor& index, int64_t length,
                       int64_t merge, bool softplus) {
  r.check_device(u, "u");
  dtype_code(u);
  VSSM_CHECK(merge >= 0 && merge <= 3, "merge code must be 0 (sum), 1 (mean), 2 (none) or 3 (group), got ", merge);
  r.check_device(index, "index");
  VSSM_CHECK(index.dim() == 2 && index.scalar_type() == at::kLong && index.is_contiguous(),
             "index must be a contiguous (K, Lk) int64 tensor, got ", index.sizes(), " ", index.scalar_type());
  VSSM_CHECK(index.size(0) >= 1 && index.size(1) >= 1 && fits_int(index.size(1)) && index.size(0) <= kMaxGridY,
             "index must have 1..65535 directions and at least one step, got ", index.sizes());
  VSSM_CHECK(length >= 1 && fits_int(length), "length must be a positive int (H*W), got ", length);
  ScanParams p;
  p.K = static_cast<int>(index.size(0));
  p.Lk = static_cast<int>(index.size(1));
  p.L = static_cast<int>(length);
  p.merge = static_cast<int>(merge);
  VSSM_CHECK(delta.dim() == 4 && delta.size(0) >= 1, "delta must be (B, K, D, Lk), or (B, K, R, Lk) with "
             "delta_weight, got ", delta.sizes());
  VSSM_CHECK(fits_int(delta.size(0)), "batch ", delta.size(0), " is too large");
  p.Bt = static_cast<int>(delta.size(0));
  if (W) {
    check_f32(r, *W, "delta_weight");
    VSSM_CHECK(W->dim() == 3 && W->size(0) == p.K && W->size(1) >= 1 && fits_int(W->size(1)) &&
               W->size(2) == delta.size(2), "delta_weight must be (K=", p.K, ", D, R=", delta.size(2), "), got ",
               W->sizes());
    p.Dm = static_cast<int>(W->size(1));
    p.R = static_cast<int>(W->size(2));
    VSSM_CHECK(p.R >= 1 && p.R <= kMaxRank, "the rank R of delta_weight must be in 1..", kMaxRank, ", got ", p.R);
    p.W = W->data_ptr<float>();
  } else {
    VSSM_CHECK(delta.size(2) >= 1 && fits_int(delta.size(2)), "delta must have at least one channel");
    p.Dm = static_cast<int>(delta.size(2));
  }
  check_like(r, delta, u, "delta");
  check_shape(delta, {p.Bt, p.K, p.R > 0 ? p.R : p.Dm, p.Lk}, p.R > 0 ? "delta (low-rank factor)" : "delta");
  check_f32(r, A, "A");
  VSSM_CHECK(A.dim() == 2 && A.size(0) == int64_t(p.K) * p.Dm && A.size(1) >= 1 && A.size(1) <= kMaxState,
             "A must be (K*D=", int64_t(p.K) * p.Dm, ", N) with N in 1..", kMaxState, ", got ", A.sizes());
  p.N = static_cast<int>(A.size(1));
  check_like(r, Bm, u, "B");
  check_shape(Bm, {p.Bt, p.K, p.N, p.Lk}, "B");
  check_like(r, Cm, u, "C");
  check_shape(Cm, {p.Bt, p.K, p.N, p.Lk}, "C");
  p.seq_u = u.dim() == 4;
  const int64_t map_ch = p.merge == kMergeGroup ? int64_t(p.K) * p.Dm : p.Dm;
  if (p.seq_u) {
    VSSM_CHECK(p.merge != kMergeGroup, "merge 'group' needs a map u (B, K*D, L), got sequences ", u.sizes());
    check_shape(u, {p.Bt, p.K, p.Dm, p.Lk}, "u (sequences)");
    strides4(u, p.su);
  } else {
    check_shape(u, {p.Bt, map_ch, p.L}, p.merge == kMergeGroup ? "u (grouped map)" : "u (map)");
    strides_map(u, p.su, p.merge == kMergeGroup ? p.Dm : 0);
  }
  p.scale = merge == kMergeMean ? 1.f / p.K : 1.f;
  p.softplus = softplus;
  p.elem_bytes = static_cast<int>(u.element_size());
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
    check_shape(*z, {p.Bt, map_ch, p.L}, "z");
    p.has_z = true;
    p.z = z->data_ptr();
    strides_map(*z, p.sz, p.merge == kMergeGroup ? p.Dm : 0);
  }
  p.u = u.data_ptr();
  p.index = index.data_ptr<int64_t>();
  const IndexInfo info = checked_index(index, p.L);
  p.first_full = info.first_full;
  p.last_full = info.last_full;
  p.all_full = info.all_full;
  return p;
}

// Output: sum/mean -> (B, D, L) laid out channel-last; none -> (B, K, D, L) laid out (B, K, L, D);
// group -> (B, K*D, L) laid out (B, L, K*D).
template <class Runner>
at::Tensor scan_forward(Runner& r, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                        const at::Tensor& Bm, const at::Tensor& Cm, const OptTensor& D, const OptTensor& z,
                        const OptTensor& bias, const OptTensor& W, const at::Tensor& index, int64_t length,
                        int64_t merge, bool softplus, int64_t chunk, int64_t tile, int64_t num_sms) {
  ScanParams p = make_params(r, u, delta, A, Bm, Cm, D, z, bias, W, index, length, merge, softplus);
  choose_forward_config(p, num_sms > 0 ? static_cast<int>(num_sms) : r.num_sms(u), static_cast<int>(chunk),
                        static_cast<int>(tile));
  const bool poison = r.poison_scratch;
  const Workspace ws = forward_workspace(p);
  at::Tensor out, acc, states, sdt;
  if (p.merge == kMergeNone) {
    out = output_new(u, {p.Bt, p.K, p.L, p.Dm}, poison, !p.all_full).transpose(2, 3);  // unvisited: 0
    strides4(out, p.so);
  } else if (p.merge == kMergeGroup) {
    out = output_new(u, {p.Bt, p.L, int64_t(p.K) * p.Dm}, poison, !p.all_full).transpose(1, 2);
    strides_map(out, p.so, p.Dm);
  } else {
    if (fwd_out_is_acc(p)) {
      out = acc = scratch(u, {p.Bt, p.L, p.Dm}, poison, !p.store_first);
    } else {
      if (ws.acc) acc = scratch(u, {p.Bt, p.L, p.Dm}, poison, !p.store_first);
      out = output_new(u, {p.Bt, p.L, p.Dm}, poison, false);
    }
    out = out.transpose(1, 2);
    strides_map(out, p.so);
    if (acc.defined()) p.acc = acc.data_ptr<float>();
  }
  p.out = out.data_ptr();
  if (p.nchunks > 1) {
    states = scratch(u, {ws.states}, poison);
    sdt = scratch(u, {ws.sdt}, poison);
    p.states = states.data_ptr<float>();
    p.sdt = sdt.data_ptr<float>();
  }
  r.forward(p, dtype_code(u));
  return out;
}

// Returns [du, ddelta, dA, dB, dC, dD, dz, dbias, ddelta_weight]; absent optional inputs get an empty tensor.
// du, ddelta (d(dts) with delta_weight), dB, dC, dz are in u's dtype and their inputs' layouts (empty_like);
// dA, dD, dbias, ddelta_weight are float32.
template <class Runner>
std::vector<at::Tensor> scan_backward(Runner& r, const at::Tensor& gout, const at::Tensor& u, const at::Tensor& delta,
                                      const at::Tensor& A, const at::Tensor& Bm, const at::Tensor& Cm,
                                      const OptTensor& D, const OptTensor& z, const OptTensor& bias,
                                      const OptTensor& W, const at::Tensor& index, int64_t length, int64_t merge,
                                      bool softplus, int64_t chunk, int64_t tile, int64_t sub, int64_t slots,
                                      int64_t chunk_slots, int64_t num_sms) {
  ScanParams p = make_params(r, u, delta, A, Bm, Cm, D, z, bias, W, index, length, merge, softplus);
  check_like(r, gout, u, "grad_out");
  if (p.merge == kMergeNone) {
    check_shape(gout, {p.Bt, p.K, p.Dm, p.L}, "grad_out");
    strides4(gout, p.sg);
  } else {
    check_shape(gout, {p.Bt, p.map_channels(), p.L}, "grad_out");
    strides_map(gout, p.sg, p.merge == kMergeGroup ? p.Dm : 0);
  }
  p.gout = gout.data_ptr();
  choose_backward_config(p, num_sms > 0 ? static_cast<int>(num_sms) : r.num_sms(u), static_cast<int>(chunk),
                         static_cast<int>(tile), static_cast<int>(sub), static_cast<int>(slots),
                         static_cast<int>(chunk_slots));
  const bool poison = r.poison_scratch;
  const Workspace ws = backward_workspace(p);
  const bool group_zero = p.merge == kMergeGroup && !p.all_full;  // positions no direction writes

  at::Tensor du = output_like(u, poison, group_zero);
  p.du = du.data_ptr();
  if (p.seq_u) strides4(du, p.sdu);
  else strides_map(du, p.sdu, p.merge == kMergeGroup ? p.Dm : 0);
  at::Tensor ddelta = output_like(delta, poison, false);
  p.ddelta = ddelta.data_ptr();
  strides4(ddelta, p.sdd);
  at::Tensor dB = output_like(Bm, poison, false), dC = output_like(Cm, poison, false);
  p.dB = dB.data_ptr();
  strides4(dB, p.sdB);
  p.dC = dC.data_ptr();
  strides4(dC, p.sdC);
  at::Tensor dz, acc, accy;
  if (p.has_z) {
    dz = output_like(*z, poison, group_zero);
    p.dz = dz.data_ptr();
    strides_map(dz, p.sdz, p.merge == kMergeGroup ? p.Dm : 0);
  }
  if (ws.acc) {
    acc = scratch(u, {ws.acc}, poison, !p.store_first);
    p.acc = acc.data_ptr<float>();
  }
  if (ws.accy) {
    accy = scratch(u, {ws.accy}, poison, !p.store_first);
    p.accy = accy.data_ptr<float>();
  }
  at::Tensor states, sdt, carries;
  if (p.nchunks > 1) {
    states = scratch(u, {ws.states}, poison);
    carries = scratch(u, {ws.carries}, poison);
    sdt = scratch(u, {ws.sdt}, poison);
    p.states = states.data_ptr<float>();
    p.carries = carries.data_ptr<float>();
    p.sdt = sdt.data_ptr<float>();
  }
  const int64_t KD = int64_t(p.K) * p.Dm;
  at::Tensor dA_part = scratch(u, {p.slots, p.K, p.chunk_slots, p.Dm, p.N}, poison);
  p.dA_part = dA_part.data_ptr<float>();
  at::Tensor dD_part, dbias_part, dW_part;
  if (p.has_D) {
    dD_part = scratch(u, {p.slots, p.K, p.chunk_slots, p.Dm}, poison);
    p.dD_part = dD_part.data_ptr<float>();
  }
  if (p.has_bias) {
    dbias_part = scratch(u, {p.slots, p.K, p.chunk_slots, p.Dm}, poison);
    p.dbias_part = dbias_part.data_ptr<float>();
  }
  if (p.R > 0) {
    dW_part = scratch(u, {p.slots, p.K, p.chunk_slots, p.Dm, p.R}, poison);
    p.dW_part = dW_part.data_ptr<float>();
  }
  r.backward(p, dtype_code(u));

  // partials summed over batch slots and chunks by torch's (deterministic) reductions
  at::Tensor empty = u.new_empty({0});
  at::Tensor dA = dA_part.sum(at::IntArrayRef{0, 2}).reshape({KD, p.N});
  at::Tensor dD = p.has_D ? dD_part.sum(at::IntArrayRef{0, 2}).reshape({KD}) : empty;
  at::Tensor dbias = p.has_bias ? dbias_part.sum(at::IntArrayRef{0, 2}).reshape({KD}) : empty;
  at::Tensor dW = p.R > 0 ? dW_part.sum(at::IntArrayRef{0, 2}) : empty;
  return {du, ddelta, dA, dB, dC, dD, p.has_z ? dz : empty, dbias, dW};
}

// ------------------------------------------------------------------------------------------ cost model

inline pybind11::dict schedule_dict(const CostModel& m) {
  namespace py = pybind11;
  py::list launches;
  for (const auto& c : m.launches) {
    py::dict l;
    l["name"] = c.launch.name;
    l["grid"] = py::make_tuple(c.launch.grid.x, c.launch.grid.y, c.launch.grid.z);
    l["block"] = py::make_tuple(c.launch.block.x, c.launch.block.y, c.launch.block.z);
    l["smem"] = c.launch.smem;
    l["direction"] = c.launch.k;
    l["blocks"] = int64_t(c.launch.grid.x) * c.launch.grid.y * c.launch.grid.z;
    l["threads"] = c.threads;
    l["bytes"] = c.bytes;
    launches.append(l);
  }
  py::dict d;
  d["backward"] = m.backward;
  d["chunk"] = m.p.chunk;
  d["nchunks"] = m.p.nchunks;
  d["mean_steps"] = m.mean_steps;
  d["tile"] = m.p.tile;
  d["ntiles"] = m.p.ntiles;
  d["sub"] = m.p.sub;
  d["slots"] = m.p.slots;
  d["chunk_slots"] = m.p.chunk_slots;
  d["smem_bytes"] = m.backward ? m.p.smem_bytes : m.p.smem_scan;
  d["launches"] = launches;
  d["bytes"] = m.bytes;
  d["min_bytes"] = m.min_bytes;
  d["input_bytes"] = m.input_bytes;
  d["workspace_bytes"] = m.workspace_bytes;
  d["passes"] = m.passes;
  d["scan_threads"] = m.scan_threads;
  d["lanes_used"] = m.lanes_used;
  return d;
}

// The Python-visible functions of a module built with Runner.
template <class Runner>
void define_functions(pybind11::module_& m) {
  namespace py = pybind11;
  m.def(
      "forward",
      [](const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& Bm,
         const at::Tensor& Cm, const OptTensor& D, const OptTensor& z, const OptTensor& bias, const OptTensor& W,
         const at::Tensor& index, int64_t length, int64_t merge, bool softplus, int64_t chunk, int64_t tile,
         int64_t num_sms) {
        Runner r;
        return scan_forward(r, u, delta, A, Bm, Cm, D, z, bias, W, index, length, merge, softplus, chunk, tile,
                            num_sms);
      },
      "Fused plan scan forward -> out (channel-last)", py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"),
      py::arg("C"), py::arg("D"), py::arg("z"), py::arg("delta_bias"), py::arg("delta_weight"), py::arg("index"),
      py::arg("length"), py::arg("merge"), py::arg("delta_softplus"), py::arg("chunk") = 0, py::arg("tile") = 0,
      py::arg("num_sms") = 0);
  m.def(
      "backward",
      [](const at::Tensor& gout, const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
         const at::Tensor& Bm, const at::Tensor& Cm, const OptTensor& D, const OptTensor& z, const OptTensor& bias,
         const OptTensor& W, const at::Tensor& index, int64_t length, int64_t merge, bool softplus, int64_t chunk,
         int64_t tile, int64_t sub, int64_t slots, int64_t chunk_slots, int64_t num_sms) {
        Runner r;
        return scan_backward(r, gout, u, delta, A, Bm, Cm, D, z, bias, W, index, length, merge, softplus, chunk, tile,
                             sub, slots, chunk_slots, num_sms);
      },
      "Fused plan scan backward -> [du, ddelta, dA, dB, dC, dD, dz, ddelta_bias, ddelta_weight] (empty for absent "
      "inputs)",
      py::arg("grad_out"), py::arg("u"), py::arg("delta"), py::arg("A"), py::arg("B"), py::arg("C"), py::arg("D"),
      py::arg("z"), py::arg("delta_bias"), py::arg("delta_weight"), py::arg("index"), py::arg("length"),
      py::arg("merge"), py::arg("delta_softplus"), py::arg("chunk") = 0, py::arg("tile") = 0, py::arg("sub") = 0,
      py::arg("slots") = 0, py::arg("chunk_slots") = 0, py::arg("num_sms") = 0);
  m.def(
      "schedule",
      [](bool backward, int64_t Bt, int64_t K, int64_t Dm, int64_t N, int64_t R, int64_t Lk, int64_t L, int64_t merge,
         bool seq_u, bool has_z, bool has_D, bool has_bias, int64_t elem_bytes, int64_t num_sms, bool first_full,
         bool last_full, bool all_full, int64_t chunk, int64_t tile, int64_t sub, int64_t slots, int64_t chunk_slots) {
        VSSM_CHECK(merge >= 0 && merge <= 3, "merge code must be 0..3");
        VSSM_CHECK(fits_int(Bt) && fits_int(K) && fits_int(Dm) && fits_int(N) && fits_int(R) && fits_int(Lk) &&
                   fits_int(L), "sizes must be non-negative ints");
        ScanParams p;
        p.Bt = int(Bt), p.K = int(K), p.Dm = int(Dm), p.N = int(N), p.R = int(R), p.Lk = int(Lk), p.L = int(L);
        p.merge = int(merge), p.seq_u = seq_u, p.has_z = has_z, p.has_D = has_D, p.has_bias = has_bias;
        p.scale = merge == kMergeMean ? 1.f / std::max<int64_t>(1, K) : 1.f;
        p.elem_bytes = int(elem_bytes);
        p.first_full = first_full, p.last_full = last_full, p.all_full = all_full;
        return schedule_dict(
            cost_model(p, backward, int(num_sms), int(chunk), int(tile), int(sub), int(slots), int(chunk_slots)));
      },
      "Launch configuration and cost model of one call (no tensors): chunks, tiles, launches with grids, threads "
      "and bytes, workspace, the op's input and minimum bytes",
      py::arg("backward"), py::arg("Bt"), py::arg("K"), py::arg("Dm"), py::arg("N"), py::arg("R"), py::arg("Lk"),
      py::arg("L"), py::arg("merge") = 0, py::arg("seq_u") = false, py::arg("has_z") = false,
      py::arg("has_D") = true, py::arg("has_bias") = true, py::arg("elem_bytes") = 2, py::arg("num_sms") = 132,
      py::arg("first_full") = true, py::arg("last_full") = true, py::arg("all_full") = true, py::arg("chunk") = 0,
      py::arg("tile") = 0, py::arg("sub") = 0, py::arg("slots") = 0, py::arg("chunk_slots") = 0);
}

}  // namespace vssm
