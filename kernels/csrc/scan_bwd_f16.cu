// Backward launcher for float16 inputs (one translation unit per pass and element type).
#include "scan_launch.cuh"

VSSM_DEFINE_LAUNCHER(cuda_backward_f16, dispatch_backward, __half)
