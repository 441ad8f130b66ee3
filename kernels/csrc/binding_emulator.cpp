// Test-only module: the kernel bodies of scan_kernels.h run by the CPU emulator (emulator.h) on CPU
// tensors, through the same binding code as the CUDA module. Built by tests/test_cuda_ext.py.
#include "binding_common.h"
#include "emulator.h"

namespace vssm {

struct EmulatorRunner {
  bool poison_scratch = true;

  void check_device(const at::Tensor& t, const char* name) {
    TORCH_CHECK_VALUE(t.device().is_cpu(), "vssm scan emulator: ", name, " must be a CPU tensor");
  }
  int num_sms(const at::Tensor&) { return 1; }
  template <typename T>
  static void fwd(const ScanParams& p) {
    emu::Dev dev;
    dispatch_forward<emu::Dev, T>(dev, p);
  }
  template <typename T>
  static void bwd(const ScanParams& p) {
    emu::Dev dev;
    dispatch_backward<emu::Dev, T>(dev, p);
  }
  void forward(const ScanParams& p, DType t) {
    switch (t) {
      case kFloat32: return fwd<float>(p);
      case kFloat16: return fwd<c10::Half>(p);
      case kBFloat16: return fwd<c10::BFloat16>(p);
    }
  }
  void backward(const ScanParams& p, DType t) {
    switch (t) {
      case kFloat32: return bwd<float>(p);
      case kFloat16: return bwd<c10::Half>(p);
      case kBFloat16: return bwd<c10::BFloat16>(p);
    }
  }
};

}  // namespace vssm

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "vssm: the CUDA scan kernels run by a CPU emulator (tests only)";
  vssm::define_functions<vssm::EmulatorRunner>(m);
}
