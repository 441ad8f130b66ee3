// Backward launcher for bfloat16 inputs (one translation unit per pass and element type).
#include "scan_launch.cuh"

VSSM_DEFINE_LAUNCHER(cuda_backward_bf16, dispatch_backward, __nv_bfloat16)
