// Entry points compiled by nvcc (one translation unit per element type) and called by the torch binding.
// No torch or CUDA types here: the stream travels as void*.
#pragma once
#include "scan_params.h"

namespace vssm {

void cuda_forward_f32(const ScanParams& p, void* stream);
void cuda_forward_f16(const ScanParams& p, void* stream);
void cuda_forward_bf16(const ScanParams& p, void* stream);
void cuda_backward_f32(const ScanParams& p, void* stream);
void cuda_backward_f16(const ScanParams& p, void* stream);
void cuda_backward_bf16(const ScanParams& p, void* stream);

}  // namespace vssm
