// Forward and backward launchers for float inputs (one file per element type: they compile in parallel).
#include "cuda_device.cuh"
#include "scan_api.h"

namespace vssm {

void cuda_forward_f32(const ScanParams& p, void* stream) {
  CudaDev dev{static_cast<cudaStream_t>(stream)};
  dispatch_forward<CudaDev, float>(dev, p);
}

void cuda_backward_f32(const ScanParams& p, void* stream) {
  CudaDev dev{static_cast<cudaStream_t>(stream)};
  dispatch_backward<CudaDev, float>(dev, p);
}

}  // namespace vssm
