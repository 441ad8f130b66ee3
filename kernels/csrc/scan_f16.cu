// Forward and backward launchers for __half inputs (one file per element type: they compile in parallel).
#include "cuda_device.cuh"
#include "scan_api.h"

namespace vssm {

void cuda_forward_f16(const ScanParams& p, void* stream) {
  CudaDev dev{static_cast<cudaStream_t>(stream)};
  dispatch_forward<CudaDev, __half>(dev, p);
}

void cuda_backward_f16(const ScanParams& p, void* stream) {
  CudaDev dev{static_cast<cudaStream_t>(stream)};
  dispatch_backward<CudaDev, __half>(dev, p);
}

}  // namespace vssm
