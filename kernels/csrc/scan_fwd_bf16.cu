// Forward launcher for bfloat16 inputs (one translation unit per pass and element type).
#include "scan_launch.cuh"

VSSM_DEFINE_LAUNCHER(cuda_forward_bf16, dispatch_forward, __nv_bfloat16)
