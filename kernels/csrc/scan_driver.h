// The order of launches for forward and backward, and the dispatch on element type and d_state bucket.
// Templated on the device policy Dev (CudaDev in cuda_device.cuh, emu::Dev in emulator.h, RecordDev below for
// the cost model), which provides
// `template <class Body> void launch(Dims grid, Dims block, int64_t smem_bytes, const ScanParams&)`.
#pragma once
#include <string>
#include <vector>

#include "scan_kernels.h"

namespace vssm {

inline Dims flat_grid(int64_t total) { return Dims{static_cast<unsigned>(ceil_div(total, kFlatThreads)), 1, 1}; }

template <class Dev, typename T, int kN>
void run_forward(Dev& dev, ScanParams p) {
  const Dims block{static_cast<unsigned>(p.tile), 1, 1};
  const unsigned nch = static_cast<unsigned>(p.nchunks), nti = static_cast<unsigned>(p.ntiles);
  const unsigned bt = static_cast<unsigned>(p.Bt), btk = static_cast<unsigned>(p.Bt * p.K);
  if (p.nchunks > 1) {
    dev.template launch<ChunkStateBody<T, kN>>(Dims{nch, btk, nti}, block, p.smem_scan, p);
    dev.template launch<ChunkCombineBody<T, kN>>(flat_grid(int64_t(p.Bt) * p.K * p.Dm * p.N), Dims{kFlatThreads, 1, 1},
                                                 0, p);
  }
  if (p.merged()) {
    for (int k = 0; k < p.K; ++k) {  // in order: the merge adds directions deterministically
      p.k = k;
      dev.template launch<ChunkOutputBody<T, kN>>(Dims{nch, bt, nti}, block, p.smem_scan, p);
    }
  } else {
    p.k = -1;
    dev.template launch<ChunkOutputBody<T, kN>>(Dims{nch, btk, nti}, block, p.smem_scan, p);
  }
  if (p.finalize)
    dev.template launch<MapFinalizeBody<T, kN>>(flat_grid(int64_t(p.Bt) * p.L * p.Dm), Dims{kFlatThreads, 1, 1}, 0, p);
}

template <class Dev, typename T, int kN>
void run_backward(Dev& dev, ScanParams p) {
  const Dims block{static_cast<unsigned>(p.tile), 1, 1};
  const unsigned nch = static_cast<unsigned>(p.nchunks), nti = static_cast<unsigned>(p.ntiles);
  const unsigned ncs = static_cast<unsigned>(p.chunk_slots);
  const Dims flat_states = flat_grid(int64_t(p.Bt) * p.K * p.Dm * p.N);
  if (p.nchunks > 1) {
    const Dims per_chunk{nch, static_cast<unsigned>(p.Bt * p.K), nti};
    dev.template launch<ChunkStateBody<T, kN>>(per_chunk, block, p.smem_scan, p);
    dev.template launch<ChunkCombineBody<T, kN>>(flat_states, Dims{kFlatThreads, 1, 1}, 0, p);
    dev.template launch<ChunkCarryBody<T, kN>>(per_chunk, block, p.smem_scan, p);
    dev.template launch<CarryCombineBody<T, kN>>(flat_states, Dims{kFlatThreads, 1, 1}, 0, p);
  }
  if (p.k >= 0) {
    for (int k = 0; k < p.K; ++k) {  // in order: map accumulators add directions deterministically
      p.k = k;
      dev.template launch<BackwardMainBody<T, kN>>(Dims{ncs, static_cast<unsigned>(p.slots), 1}, block, p.smem_bytes,
                                                   p);
    }
  } else {
    dev.template launch<BackwardMainBody<T, kN>>(Dims{ncs, static_cast<unsigned>(p.slots * p.K), 1}, block,
                                                 p.smem_bytes, p);
  }
  if (p.finalize)
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

// ------------------------------------------------------------------------------------------- cost model

// One launch as the driver would issue it, with the global-memory bytes it moves (see cost_model.h).
struct LaunchRecord {
  std::string name;
  Dims grid, block;
  int64_t smem = 0;
  int k = -1;  // direction of a per-direction launch
};

// A Dev that records the driver's launches instead of running them: the cost model walks the same code.
struct RecordDev {
  std::vector<LaunchRecord> launches;
  template <class Body>
  void launch(Dims grid, Dims block, int64_t smem_bytes, const ScanParams& p) {
    launches.push_back(LaunchRecord{Body::kName, grid, block, smem_bytes, p.k});
  }
};

}  // namespace vssm
