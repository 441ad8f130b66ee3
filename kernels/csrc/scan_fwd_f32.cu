// Forward launcher for float32 inputs (one translation unit per pass and element type).
#include "scan_launch.cuh"

VSSM_DEFINE_LAUNCHER(cuda_forward_f32, dispatch_forward, float)
