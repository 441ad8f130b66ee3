// The CUDA side of the portable kernels: thread context, half/bfloat16 conversion, and the launcher.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "scan_driver.h"

namespace vssm {

template <>
struct Elem<__half> {
  VSSM_DEVICE static float load(__half x) { return __half2float(x); }
  VSSM_DEVICE static __half store(float x) { return __float2half_rn(x); }
};
template <>
struct Elem<__nv_bfloat16> {
  VSSM_DEVICE static float load(__nv_bfloat16 x) { return __bfloat162float(x); }
  VSSM_DEVICE static __nv_bfloat16 store(float x) { return __float2bfloat16_rn(x); }
};

struct CudaCtx {
  VSSM_DEVICE int tid() const { return threadIdx.x; }
  VSSM_DEVICE int nthreads() const { return blockDim.x; }
  VSSM_DEVICE int bx() const { return blockIdx.x; }
  VSSM_DEVICE int by() const { return blockIdx.y; }
  VSSM_DEVICE int bz() const { return blockIdx.z; }
  VSSM_DEVICE void sync() const { __syncthreads(); }
};

// Launch bounds: at most 256 threads per block (scan bodies use <= 128, element-wise ones 256). By default 2
// blocks of 256 per SM, which caps registers at 128 per thread so the d_state-16 scans keep some occupancy;
// a body that needs more registers (the backward main pass, whose occupancy is bounded by its shared
// memory anyway) declares kMinBlocks = 1.
template <class Body>
__global__ void __launch_bounds__(256, MinBlocksOf<Body>::value) body_kernel(const ScanParams p) {
  extern __shared__ float smem[];
  Body::run(CudaCtx{}, p, smem);
}

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("vssm cuda scan: ") + what + ": " + cudaGetErrorString(e));
}

struct CudaDev {
  cudaStream_t stream;

  template <class Body>
  void launch(Dims grid, Dims block, int64_t smem_bytes, const ScanParams& p) {
    if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
    auto kernel = &body_kernel<Body>;
    if (smem_bytes > 48 * 1024) {  // above the default limit: opt in (sm_80: 163 KB, sm_90: 227 KB)
      int device = 0, optin = 0;
      check_cuda(cudaGetDevice(&device), "cudaGetDevice");
      check_cuda(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "device attribute");
      if (smem_bytes > optin)
        throw std::runtime_error("vssm cuda scan: backward needs " + std::to_string(smem_bytes) +
                                 " bytes of shared memory per block, the device allows " + std::to_string(optin) +
                                 "; use a smaller chunk/tile");
      check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem_bytes)),
                 "cudaFuncSetAttribute");
    }
    kernel<<<dim3(grid.x, grid.y, grid.z), dim3(block.x, block.y, block.z), static_cast<size_t>(smem_bytes), stream>>>(p);
    check_cuda(cudaGetLastError(), "kernel launch");
  }
};

}  // namespace vssm
