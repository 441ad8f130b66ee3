// The installed extension `vssm_cuda_scan`: forward/backward of the fused plan scan on CUDA tensors.
// c10/cuda only (not ATen/cuda): these need nothing of the toolkit beyond the CUDA runtime headers
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include "binding_common.h"
#include "scan_api.h"

namespace vssm {

struct CudaRunner {
  bool poison_scratch = false;
  std::optional<c10::cuda::CUDAGuard> guard;

  void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.is_cuda(), "vssm cuda scan: ", name, " must be a CUDA tensor, got ", t.device());
    if (!guard) guard.emplace(t.device());
    TORCH_CHECK_VALUE(t.device() == guard->current_device(), "vssm cuda scan: ", name, " is on ", t.device(),
                ", expected every input on ", guard->current_device());
  }
  int num_sms(const at::Tensor& t) {
    int sms = 0;
    TORCH_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.get_device()) == cudaSuccess,
                "vssm cuda scan: cannot query the device's multiprocessor count");
    return sms;
  }
  void* stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }
  void forward(const ScanParams& p, DType t) {
    switch (t) {
      case kFloat32: return cuda_forward_f32(p, stream());
      case kFloat16: return cuda_forward_f16(p, stream());
      case kBFloat16: return cuda_forward_bf16(p, stream());
    }
  }
  void backward(const ScanParams& p, DType t) {
    switch (t) {
      case kFloat32: return cuda_backward_f32(p, stream());
      case kFloat16: return cuda_backward_f16(p, stream());
      case kBFloat16: return cuda_backward_bf16(p, stream());
    }
  }
};

}  // namespace vssm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vssm: fused cross-scan selective scan (forward and backward) for CUDA tensors";
  vssm::define_functions<vssm::CudaRunner>(m);
}
