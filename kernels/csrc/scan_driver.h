// The order of launches for forward and backward, and the dispatch on element type and d_state bucket.
// Templated on the device policy Dev (CudaDev in cuda_device.cuh, EmuDev in emulator.h), which provides
// `template <class Body> void launch(Dims grid, Dims block, int64_t smem_bytes, const ScanParams&)`.
#pragma once
#include "scan_kernels.h"

namespace vssm {

inline Dims flat_grid(int64_t total) { return Dims{static_cast<unsigned>(ceil_div(total, kFlatThreads)), 1, 1}; }

template <class Dev, typename T, int kN>
void run_forward(Dev& dev, ScanParams p) {
  const Dims block{static_cast<unsigned>(p.tile), 1, 1};
  const unsigned nch = static_cast<unsigned>(p.nchunks), nti = static_cast<unsigned>(p.ntiles);
  if (p.nchunks > 1) {
    dev.template launch<ChunkStateBody<T, kN>>(Dims{nch, static_cast<unsigned>(p.Bt * p.K), nti}, block, 0, p);
    dev.template launch<ChunkCombineBody<T, kN>>(flat_grid(int64_t(p.Bt) * p.K * p.Dm * p.N), Dims{kFlatThreads, 1, 1},
                                                 0, p);
  }
  for (int k = 0; k < p.K; ++k) {  // in order: the merge adds directions deterministically
    p.k = k;
    dev.template launch<ChunkOutputBody<T, kN>>(Dims{nch, static_cast<unsigned>(p.Bt), nti}, block, 0, p);
  }
  if (p.merge != kMergeNone && p.finalize)
    dev.template launch<MapFinalizeBody<T, kN>>(flat_grid(int64_t(p.Bt) * p.L * p.Dm), Dims{kFlatThreads, 1, 1}, 0, p);
}

template <class Dev, typename T, int kN>
void run_backward(Dev& dev, ScanParams p) {
  const Dims block{static_cast<unsigned>(p.tile), 1, 1};
  const unsigned nch = static_cast<unsigned>(p.nchunks), nti = static_cast<unsigned>(p.ntiles);
  const Dims flat_states = flat_grid(int64_t(p.Bt) * p.K * p.Dm * p.N);
  if (p.nchunks > 1) {
    const Dims per_chunk{nch, static_cast<unsigned>(p.Bt * p.K), nti};
    dev.template launch<ChunkStateBody<T, kN>>(per_chunk, block, 0, p);
    dev.template launch<ChunkCombineBody<T, kN>>(flat_states, Dims{kFlatThreads, 1, 1}, 0, p);
    dev.template launch<ChunkCarryBody<T, kN>>(per_chunk, block, 0, p);
    dev.template launch<CarryCombineBody<T, kN>>(flat_states, Dims{kFlatThreads, 1, 1}, 0, p);
  }
  for (int k = 0; k < p.K; ++k) {
    p.k = k;
    dev.template launch<BackwardMainBody<T, kN>>(Dims{nch, static_cast<unsigned>(p.Bt), 1}, block, p.smem_bytes, p);
  }
  if (!p.seq_u || p.has_z)
    dev.template launch<BackwardFinalizeBody<T, kN>>(flat_grid(int64_t(p.Bt) * p.L * p.Dm), Dims{kFlatThreads, 1, 1},
                                                     0, p);
}

template <class Dev, typename T>
void dispatch_forward(Dev& dev, const ScanParams& p) {
  switch (state_bucket(p.N)) {
    case 1: return run_forward<Dev, T, 1>(dev, p);
    case 2: return run_forward<Dev, T, 2>(dev, p);
    case 4: return run_forward<Dev, T, 4>(dev, p);
    case 8: return run_forward<Dev, T, 8>(dev, p);
    default: return run_forward<Dev, T, 16>(dev, p);
  }
}

template <class Dev, typename T>
void dispatch_backward(Dev& dev, const ScanParams& p) {
  switch (state_bucket(p.N)) {
    case 1: return run_backward<Dev, T, 1>(dev, p);
    case 2: return run_backward<Dev, T, 2>(dev, p);
    case 4: return run_backward<Dev, T, 4>(dev, p);
    case 8: return run_backward<Dev, T, 8>(dev, p);
    default: return run_backward<Dev, T, 16>(dev, p);
  }
}

}  // namespace vssm
