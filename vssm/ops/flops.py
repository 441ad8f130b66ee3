"""FLOP counting that includes the selective scan.

fvcore counts convs, linears, matmuls and einsums from a jit trace; the scan is one custom op
(``vssm::plan_scan``) it would skip. The handle below counts it as the official VMamba code does:
9 * B * L * D * N for the recurrence (per direction), + B * D * L for the D skip, + B * D * L for the
z gate. A multiply-add counts as one FLOP (fvcore's convention, the one the papers quote).

The SSD scan (``vssm::plan_ssd``, Mamba-2) is counted as its chunked form computes it (``ssd_flops``): mostly
matmuls, so the count follows the chunk length T as well as the state size N.
"""
from typing import Any, Dict, List, Tuple

import torch

__all__ = ['scan_flops', 'ssd_flops', 'count_flops', 'flops_by_operator', 'flop_count_table']


def scan_flops(batch: int, directions: int, channels: int, length: int, d_state: int,
               with_D: bool = True, with_z: bool = False, map_length: int = 0) -> int:
    """FLOPs of one plan scan: K directions of (channels, length) sequences with N states."""
    flops = 9 * batch * directions * channels * length * d_state
    if with_D:
        flops += batch * directions * channels * length
    if with_z:
        flops += batch * channels * (map_length or length)
    return flops


def ssd_flops(batch: int, directions: int, heads: int, head_dim: int, length: int, d_state: int,
              chunk_size: int = 64, with_D: bool = True) -> int:
    """FLOPs (multiply-adds) of one SSD plan scan in its chunked form (vssm/ops/ssd_core.py), per direction:

    C Bᵀ (T x T per chunk, shared by the heads), the decay mask, (C Bᵀ ∘ Λ) X, the chunk states Xᵀ B, the
    state passing over chunks (a c x c matrix per head), the entering state read by C, and the D skip;
    T = min(chunk_size, length), c = ceil(length / T) chunks (the last one padded: computed, so counted).
    """
    T = min(chunk_size, length)
    c = -(-length // T)
    R, P, N = heads, head_dim, d_state
    per_direction = (c * T * T * N  # C Bᵀ
                     + R * c * T * T * (1 + P)  # ∘ Λ, then @ X
                     + R * c * T * P * (N + 1)  # decay to the chunk end, Xᵀ B
                     + R * c * c * P * N  # state passing
                     + R * c * T * P * (N + 1))  # C · entering state, decay from the chunk start
    if with_D:
        per_direction += R * P * length
    return batch * directions * per_direction


def _plan_ssd_handle(inputs: List[Any], outputs: List[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape
    x_shape = get_shape(inputs[0])
    Bt, K, R, Lk = get_shape(inputs[1])  # dt (B, K, R, Lk)
    N = get_shape(inputs[3])[2]
    merge = inputs[9].toIValue()
    Dm = x_shape[2] if len(x_shape) == 4 else (x_shape[1] // K if merge == 'group' else x_shape[1])
    has_D = get_shape(inputs[5]) is not None
    chunk = inputs[11].toIValue()
    return ssd_flops(Bt, K, R, Dm // R, Lk, N, int(chunk), with_D=has_D)


def _plan_scan_handle(inputs: List[Any], outputs: List[Any]) -> int:
    from fvcore.nn.jit_handles import get_shape
    delta_shape = get_shape(inputs[1])  # (B, K, D, Lk), or the low-rank factor (B, K, R, Lk)
    A_shape = get_shape(inputs[2])  # (K*D, N)
    has_D = get_shape(inputs[5]) is not None
    z_shape = get_shape(inputs[6])
    weight_shape = get_shape(inputs[8])  # (K, D, R) with low-rank Δ
    Bt, K, Dm, Lk = delta_shape
    flops = 0
    if weight_shape is not None:  # Δ = dt_proj(dts) inside the op: the einsum a plain Δ would have cost outside
        Dm, R = weight_shape[1], weight_shape[2]
        flops += Bt * K * Dm * R * Lk
    z_channels = z_shape[1] if z_shape is not None else Dm
    flops += scan_flops(Bt, K, Dm, Lk, A_shape[1], with_D=has_D)
    if z_shape is not None:
        flops += Bt * z_channels * z_shape[-1]
    return flops


def _sdpa_handle(inputs: List[Any], outputs: List[Any]) -> int:
    """F.scaled_dot_product_attention (fvcore has no handle): q @ k^T and weights @ v, multiply-adds."""
    from fvcore.nn.jit_handles import get_shape
    q, k, v = (get_shape(t) for t in inputs[:3])  # (..., Lq, E), (..., Lk, E), (..., Lk, Ev)
    batch = 1
    for s in q[:-2]:
        batch *= s
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


_HANDLES = {'vssm::plan_scan': _plan_scan_handle, 'vssm::plan_ssd': _plan_ssd_handle,
            'aten::scaled_dot_product_attention': _sdpa_handle}


def _analysis(model: torch.nn.Module, input_size: Tuple[int, ...], batch_size: int = 1):
    from .._extras import require
    FlopCountAnalysis = require('fvcore.nn', 'tools', 'FLOP counting (vssm.ops.flops)').FlopCountAnalysis
    p = next(model.parameters())
    x = torch.zeros((batch_size, *input_size), device=p.device, dtype=p.dtype)
    analysis = FlopCountAnalysis(model, x)
    analysis.set_op_handle(**_HANDLES)
    analysis.unsupported_ops_warnings(False)
    analysis.uncalled_modules_warnings(False)
    return analysis


def flops_by_operator(model: torch.nn.Module, input_size: Tuple[int, ...] = (3, 224, 224)) -> Dict[str, int]:
    """FLOPs split by operator kind (conv, linear, einsum, vssm::plan_scan, vssm::plan_ssd, attention, ...)."""
    with torch.no_grad():
        return dict(_analysis(model, input_size).by_operator())


@torch.no_grad()
def count_flops(model: torch.nn.Module, input_size: Tuple[int, ...] = (3, 224, 224), batch_size: int = 1) -> int:
    """Total FLOPs (multiply-adds) of one forward at `input_size`, scan included."""
    was_training = model.training
    model.eval()
    try:
        return int(_analysis(model, input_size, batch_size).total())
    finally:
        model.train(was_training)


@torch.no_grad()
def flop_count_table(model: torch.nn.Module, input_size: Tuple[int, ...] = (3, 224, 224), max_depth: int = 3) -> str:
    """fvcore's per-module table (params and FLOPs), scan included."""
    from fvcore.nn import flop_count_table as _table
    was_training = model.training
    model.eval()
    try:
        return _table(_analysis(model, input_size), max_depth=max_depth)
    finally:
        model.train(was_training)
