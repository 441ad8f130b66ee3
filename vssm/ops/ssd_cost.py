"""Cost model of the SSD (Mamba-2) plan scan, computed on the host for any shape.

For one call of ``plan_ssd_scan`` with a map input and a sum / mean merge (the m2 models' case):

* FLOPs (multiply-adds): the chunked form's matmuls (``vssm.ops.flops.ssd_flops``); backward by recompute
  (the PyTorch paths): the forward again plus about twice its matmuls (each product's two input gradients);
* minimum bytes: every input read once, the output written once (forward); the inputs and the output
  gradient read, one gradient per input written (backward) -- what a fused kernel that reads the map through
  the plan's index and keeps its chunk tiles on chip moves;
* workspace: the tensors the chunked PyTorch form materialises (the cross-scanned copy, C Bᵀ, the masked
  decay matrix Λ (per head, the largest), chunk states, entering states, the unmerged output); its bytes
  count each written once and read once on top of the minimum (nothing assumed to stay in cache).

Compared with the selective scan (9·L·D·N FLOPs per direction, elementwise), the SSD is matmul-dominated:
T·P + 2·N·P + T·N / R multiply-adds per step, head and direction, at chunk T, head dim P, N states, R heads.
"""
from dataclasses import dataclass

import torch

from .flops import ssd_flops

__all__ = ['SSDCost', 'ssd_cost']


@dataclass(frozen=True)
class SSDCost:
    fwd_flops: int
    bwd_flops: int
    input_bytes: int
    output_bytes: int
    fwd_min_bytes: int
    bwd_min_bytes: int
    fwd_bytes: int  # the chunked PyTorch path: minimum + its workspace written and read once
    bwd_bytes: int
    fwd_workspace: int  # bytes the chunked PyTorch forward materialises
    bwd_workspace: int  # recompute: the forward's tensors kept for autograd, plus as many gradients
    chunks: int
    chunk: int

    @property
    def workspace_ratio(self) -> float:
        """Largest workspace (forward or backward) over the op's input bytes."""
        return max(self.fwd_workspace, self.bwd_workspace) / self.input_bytes


def ssd_cost(batch: int, directions: int, heads: int, head_dim: int, length: int, d_state: int,
             chunk_size: int = 64, dtype: torch.dtype = torch.float32, steps: int = 0) -> SSDCost:
    """The cost of one SSD plan scan over ``directions`` sequences of ``steps`` (default ``length``) steps of
    a map of ``length`` positions, ``heads`` x ``head_dim`` channels, ``d_state`` states."""
    Bt, K, R, P, N = batch, directions, heads, head_dim, d_state
    Lk = steps or length
    Dm = R * P
    e = torch.finfo(dtype).bits // 8
    f32 = 4  # the chunked form computes in float32 (float64 for float64 inputs)
    if dtype == torch.float64:
        f32 = 8
    T = min(chunk_size, Lk)
    c = -(-Lk // T)
    Lp = c * T
    params = (K * R * 2 + K * Dm) * 4  # A, dt_bias, D
    input_bytes = (Bt * Dm * length + Bt * K * R * Lk + 2 * Bt * K * N * Lk) * e + params
    output_bytes = Bt * Dm * length * e
    fwd_min = input_bytes + output_bytes
    bwd_min = 2 * input_bytes + output_bytes  # read inputs and grad_out, write one gradient per input
    workspace = f32 * (
        Bt * K * Lp * Dm  # cross-scanned x (times Δ)
        + Bt * K * c * T * T  # C Bᵀ
        + 2 * Bt * K * R * c * T * T  # segment sums, then Λ ∘ C Bᵀ
        + 2 * Bt * K * R * c * P * N  # chunk states, entering states
        + Bt * K * R * c * c  # state passing matrix
        + Bt * K * Lp * Dm)  # unmerged output
    flops = ssd_flops(Bt, K, R, P, Lk, N, chunk_size)
    return SSDCost(
        fwd_flops=flops, bwd_flops=3 * flops, input_bytes=input_bytes, output_bytes=output_bytes,
        fwd_min_bytes=fwd_min, bwd_min_bytes=bwd_min, fwd_bytes=fwd_min + 2 * workspace,
        bwd_bytes=bwd_min + 4 * workspace, fwd_workspace=workspace, bwd_workspace=2 * workspace, chunks=c, chunk=T,
    )
