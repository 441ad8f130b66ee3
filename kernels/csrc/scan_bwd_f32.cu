// Backward launcher for float32 inputs (one translation unit per pass and element type).
#include "scan_launch.cuh"

VSSM_DEFINE_LAUNCHER(cuda_backward_f32, dispatch_backward, float)
