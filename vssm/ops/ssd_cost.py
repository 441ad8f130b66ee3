"""Cost model of the SSD (Mamba-2) plan scan, computed on the host for any shape.

For one call of ``plan_ssd_scan`` with a map input and a sum / mean merge (the m2 models' case):

Returned as the engine's one cost record (vssm.ops.cost.ScanCost), one per phase.

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
from typing import Tuple

import torch

from .cost import ScanCost
from .flops import ssd_flops

__all__ = ['ssd_cost']


def ssd_cost(batch: int, directions: int, heads: int, head_dim: int, length: int, d_state: int,
             chunk_size: int = 64, dtype: torch.dtype = torch.float32, steps: int = 0,
             backend: str = 'fast') -> Tuple[ScanCost, ScanCost]:
    """(forward, backward) engine cost records (vssm.ops.cost.ScanCost) of one SSD plan scan over ``directions``
    sequences of ``steps`` (default ``length``) steps of a map of ``length`` positions, ``heads`` x ``head_dim``
    channels, ``d_state`` states, on ``backend`` ('reference', 'fast', 'export': the PyTorch paths; 'triton':
    the fused kernels)."""
    Bt, K, R, P, N = batch, directions, heads, head_dim, d_state
    Lk = steps or length
    Dm = R * P
    e = torch.finfo(dtype).bits // 8
    f32 = 8 if dtype == torch.float64 else 4  # the compute dtype
    T = min(chunk_size, Lk)
    c = -(-Lk // T)
    Lp = c * T
    params = (K * R * 2 + K * Dm) * 4  # A, dt_bias, D
    input_bytes = (Bt * Dm * length + Bt * K * R * Lk + 2 * Bt * K * N * Lk) * e + params
    output_bytes = Bt * Dm * length * e
    fwd_min = input_bytes + output_bytes
    bwd_min = 2 * input_bytes + output_bytes  # read the inputs and grad_out, write one gradient per input
    workspace = f32 * (
        Bt * K * Lp * Dm  # cross-scanned x (times Δ)
        + Bt * K * c * T * T  # C Bᵀ
        + 2 * Bt * K * R * c * T * T  # segment sums, then Λ ∘ C Bᵀ
        + 2 * Bt * K * R * c * P * N  # chunk states, entering states
        + Bt * K * R * c * c  # state passing matrix
        + Bt * K * Lp * Dm)  # unmerged output
    flops = ssd_flops(Bt, K, R, P, Lk, N, chunk_size)
    details = dict(chunk=T, chunks=c, heads=R, head_dim=P)
    # backward by recompute: the forward's tensors kept for autograd plus as many gradients, each written and
    # read once; FLOPs: the forward again plus two products per product
    backward = ScanCost(backend, 'backward', bytes_moved=bwd_min + 4 * workspace, min_bytes=bwd_min,
                        flops=3 * flops, workspace_bytes=2 * workspace, programs=1, launches=0, details=details)
    if backend == 'triton':
        acc = Bt * length * Dm * 4  # the float32 merged accumulator, read and written once per direction
        forward = ScanCost(backend, 'forward', bytes_moved=input_bytes + 2 * K * acc + (output_bytes if e != 4 else 0),
                           min_bytes=fwd_min, flops=flops, workspace_bytes=acc if e != 4 else 0, programs=Bt * R,
                           launches=1, details=details)
        # fused backward: the inputs streamed twice per head pass (state recompute, adjoint), the chunk states
        # written and read back, per-direction dX written and summed, dB / dC added head by head in float32
        states = Bt * K * c * P * N * 4
        dxs = Bt * K * length * Dm * 4
        bc = 2 * Bt * K * Lk * N * 4
        moved = (2 * input_bytes + output_bytes + input_bytes + 2 * states + 2 * dxs + (2 * R - 1) * bc
                 + Bt * K * R * Lk * 4)
        backward = ScanCost(backend, 'backward', bytes_moved=moved, min_bytes=bwd_min, flops=3 * flops,
                            workspace_bytes=states + dxs + bc + Bt * K * R * Lk * 4, programs=Bt * K, launches=1,
                            details=details)
    else:
        forward = ScanCost(backend, 'forward', bytes_moved=fwd_min + 2 * workspace, min_bytes=fwd_min, flops=flops,
                           workspace_bytes=workspace, programs=1, launches=0, details=details)
    return forward, backward

