// One launcher per translation unit: forward or backward for one element type, so that the six kernel
// families compile in parallel (MAX_JOBS) instead of two or three per nvcc process.
#pragma once
#include "cuda_device.cuh"
#include "scan_api.h"

#define VSSM_DEFINE_LAUNCHER(fn, dispatch, T)                   \
  namespace vssm {                                              \
  void fn(const ScanParams& p, void* stream) {                  \
    CudaDev dev{static_cast<cudaStream_t>(stream)};             \
    dispatch<CudaDev, T>(dev, p);                               \
  }                                                             \
  }
