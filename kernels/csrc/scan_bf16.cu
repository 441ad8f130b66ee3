// Forward and backward launchers for __nv_bfloat16 inputs (one file per element type: they compile in parallel).
#include "cuda_device.cuh"
#include "scan_api.h"

namespace vssm {

void cuda_forward_bf16(const ScanParams& p, void* stream) {
  CudaDev dev{static_cast<cudaStream_t>(stream)};
  dispatch_forward<CudaDev, __nv_bfloat16>(dev, p);
}

void cuda_backward_bf16(const ScanParams& p, void* stream) {
  CudaDev dev{static_cast<cudaStream_t>(stream)};
  dispatch_backward<CudaDev, __nv_bfloat16>(dev, p);
}

}  // namespace vssm
