"""'triton' backend of the plan scan: fused cross-scan + selective scan + merge, forward and backward.

Importing this module imports Triton and registers the backend; vssm.ops.scan imports it lazily the
first time the name 'triton' is asked for (and on CUDA by default). It runs on CUDA tensors, and on
CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported),
which is how CPU CI tests the real kernels.

Same contract as scan.plan_scan_reference. Design (docs/scan_kernel.md):
* u is read through the direction plan's index map, never copied per direction; any strides
  (channel-first or channel-last maps) work.
* The map's positions are cut into tiles; one program per (tile, batch element, channel block) owns
  its tile's outputs, so the K directions' contributions are summed in a fixed order in an fp32
  accumulator without atomics: results are bitwise reproducible run to run.
* Sequence parallelism: with more than one tile, a chunk pass computes every chunk's local end
  state, a carry pass chains them along each direction, and the output pass starts each chunk from
  its carried state. With one tile (a small map and enough batch x channel programs to fill the
  device) the output pass walks whole directions and carries the state itself: one pass over the
  inputs. Tiles are capped in size so each program's accumulator stays cache-resident.
* Backward recomputes the chunk states (the op saves only its inputs), runs the adjoint with the same
  chunking (local adjoints + reverse carry) and writes every gradient; map gradients (u, z) are
  accumulated per tile like the forward output, parameter gradients as per-program partials summed
  in a fixed order.
* float64 inputs go to the reference backend (the kernels compute in float32).
"""
import contextlib
import os
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton

from . import _triton_kernels as kernels
from ._triton_schedule import get_schedule
from .scan import Backend, _recompute_backward, plan_scan_reference, register_backend

__all__ = ['TritonScanConfig', 'config', 'get_config', 'triton_plan_scan', 'triton_plan_scan_backward',
           'supports_device']


@dataclass(frozen=True)
class TritonScanConfig:
    """Block sizes and tiling. The defaults keep every kernel free of register spills on sm_90 (checked
    by compiling ahead of time with ptxas); they are not tuned by measurement yet."""
    block_d: int = 16  # channels per program, forward
    num_warps: int = 8  # forward
    bwd_block_d: int = 8  # channels per program, backward (its kernel holds about twice the live tiles)
    bwd_num_warps: int = 4
    block_t: int = 32  # steps per chunk (one parallel scan)
    block_p: int = 64  # positions per vector in the accumulator passes
    min_programs: Optional[int] = None  # programs wanted per launch; None: 2 per SM on CUDA, 1 elsewhere
    # positions per output tile: bounds each program's fp32 accumulator (block_d x positions x 4 B) so the
    # read-modify-writes of the K directions stay in L2; larger maps get several tiles (and the state passes)
    max_tile_positions: Optional[int] = 1024
    tiles: Optional[int] = None  # force the number of output tiles (>= 1); None: from the two limits above


_CONFIG = TritonScanConfig()


def get_config() -> TritonScanConfig:
    return _CONFIG


@contextlib.contextmanager
def config(**overrides):
    """Temporarily change block sizes / tiling, e.g. ``with config(block_t=16, tiles=3): ...``."""
    global _CONFIG
    old = _CONFIG
    _CONFIG = replace(old, **overrides)
    try:
        yield _CONFIG
    finally:
        _CONFIG = old


def supports_device(device) -> bool:
    device = torch.device(device)
    if device.type == 'cuda':
        return True
    return device.type == 'cpu' and os.environ.get('TRITON_INTERPRET') == '1'


def _pow2(n: int, lo: int = 2) -> int:
    return max(lo, triton.next_power_of_2(max(1, n)))


def _min_tiles(cfg: TritonScanConfig, device, Bt: int, n_dblocks: int, length: int) -> int:
    if cfg.tiles is not None:
        return max(1, cfg.tiles)
    want = cfg.min_programs
    if want is None:
        want = 2 * torch.cuda.get_device_properties(device).multi_processor_count if device.type == 'cuda' else 1
    tiles = -(-want // (Bt * n_dblocks))
    if cfg.max_tile_positions:
        tiles = max(tiles, -(-length // cfg.max_tile_positions))
    return max(1, tiles)


def _strides4(t: torch.Tensor, seq: bool):
    """(b, k, d, l) strides; a map (B, D, L) has no direction stride."""
    if seq:
        return t.stride()
    return t.stride(0), 0, t.stride(1), t.stride(2)


@dataclass
class _Launch:
    """Everything the kernels share for one call."""
    Bt: int
    K: int
    Dm: int
    N: int
    Lk: int
    L: int
    seq_u: bool
    per_dir: bool
    kacc: int
    scale: float
    n_dblocks: int
    block_d: int
    np_: int
    sched: object
    cfg: TritonScanConfig
    num_warps: int


def _setup(u, delta, A, B, C, index, length, merge, backward=False):
    cfg = _CONFIG
    K, Lk = index.shape
    Bt, _, Dm, _ = delta.shape
    N = A.shape[1]
    block_d = min(cfg.bwd_block_d if backward else cfg.block_d, _pow2(Dm))
    n_dblocks = -(-Dm // block_d)
    sched = get_schedule(index, length, cfg.block_t, _min_tiles(cfg, u.device, Bt, n_dblocks, length), u.device)
    per_dir = merge == 'none'
    return _Launch(Bt=Bt, K=K, Dm=Dm, N=N, Lk=Lk, L=length, seq_u=u.dim() == 4, per_dir=per_dir,
                   kacc=K if per_dir else 1, scale=1.0 / K if merge == 'mean' else 1.0, n_dblocks=n_dblocks,
                   block_d=block_d, np_=_pow2(N), sched=sched, cfg=cfg,
                   num_warps=cfg.bwd_num_warps if backward else cfg.num_warps)


def _any_float64(*tensors):
    return any(t is not None and t.dtype == torch.float64 for t in tensors)


def _chunk_states(g: _Launch, u, delta, A, B, delta_bias, delta_softplus):
    """Start state of every chunk (Bt, n_chunks, Dm, N) and its sum of dt (Bt, n_chunks, Dm), fp32."""
    s = g.sched
    f32 = torch.float32
    hloc = torch.empty(g.Bt, s.n_chunks, g.Dm, g.N, device=u.device, dtype=f32)
    sdt = torch.empty(g.Bt, s.n_chunks, g.Dm, device=u.device, dtype=f32)
    bias = delta_bias if delta_bias is not None else delta
    kernels.chunk_state_kernel[(g.n_dblocks, s.n_chunks, g.Bt)](
        u, delta, A, B, bias, s.index, s.chunk_k, s.chunk_start, s.chunk_end, hloc, sdt,
        g.Dm, g.Lk, s.n_chunks, *_strides4(u, g.seq_u), *delta.stride(), *A.stride(), *B.stride(),
        N=g.N, NP=g.np_, BD=g.block_d, BT=s.block_t, SEQ_U=g.seq_u, HAS_BIAS=delta_bias is not None,
        SOFTPLUS=delta_softplus, num_warps=g.num_warps,
    )
    hstart = torch.empty_like(hloc)
    _carry(g, A, sdt, hloc, hstart, reverse=False)
    return hstart, sdt


def _carry(g: _Launch, A, sdt, inc, state, reverse: bool):
    s = g.sched
    kernels.carry_kernel[(g.n_dblocks, g.Bt * g.K)](
        A, sdt, inc, state, s.dir_chunk_ptr, g.Dm, g.K, s.n_chunks, *A.stride(),
        N=g.N, NP=g.np_, BD=g.block_d, REVERSE=reverse, num_warps=g.num_warps,
    )


def triton_plan_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                     delta_softplus=True):
    """Forward of the fused plan scan; same contract as plan_scan_reference."""
    if _any_float64(u, delta, A, B, C, D, z, delta_bias):
        return plan_scan_reference(u, delta, A, B, C, D, z, delta_bias, index=index, length=length, merge=merge,
                                   delta_softplus=delta_softplus)
    g = _setup(u, delta, A, B, C, index, length, merge)
    s = g.sched
    out = torch.empty(g.Bt, g.kacc, g.Dm, length, device=u.device, dtype=u.dtype)
    acc = out if u.dtype == torch.float32 else torch.empty(out.shape, device=u.device, dtype=torch.float32)
    if s.single_tile:
        hstart = acc  # unused
    else:
        hstart, _ = _chunk_states(g, u, delta, A, B, delta_bias, delta_softplus)
    zz = z if z is not None else u
    sz = z.stride() if z is not None else (0, 0, 0)
    kernels.forward_kernel[(g.n_dblocks, s.n_tiles, g.Bt)](
        u, delta, A, B, C, D if D is not None else delta, delta_bias if delta_bias is not None else delta, zz,
        s.index, s.chunk_k, s.chunk_start, s.chunk_end, s.tile_start, s.tile_chunk_ptr, s.tile_chunks,
        hstart, acc, out,
        g.Dm, g.Lk, length, s.n_chunks, g.kacc, g.scale,
        *_strides4(u, g.seq_u), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *sz,
        N=g.N, NP=g.np_, BD=g.block_d, BT=s.block_t, BP=g.cfg.block_p, SEQ_U=g.seq_u,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
        PER_DIR=g.per_dir, LOAD_STATES=not s.single_tile, num_warps=g.num_warps,
    )
    return out if g.per_dir else out.view(g.Bt, g.Dm, length)


def triton_plan_scan_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                              merge='sum', delta_softplus=True):
    """Gradients (u, delta, A, B, C, D, z, delta_bias), None for absent inputs."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    if _any_float64(grad_out, *inputs):
        return _recompute_backward(plan_scan_reference, grad_out, inputs, index, length, merge, delta_softplus)
    g = _setup(u, delta, A, B, C, index, length, merge, backward=True)
    s = g.sched
    dev, f32 = u.device, torch.float32
    gout = grad_out.contiguous().view(g.Bt, g.kacc, g.Dm, length)
    hstart, sdt = _chunk_states(g, u, delta, A, B, delta_bias, delta_softplus)
    zz = z if z is not None else u
    sz = z.stride() if z is not None else (0, 0, 0)
    bias = delta_bias if delta_bias is not None else delta
    if s.single_tile:
        lam = hstart  # unused: the backward program carries the adjoint itself
    else:
        q = torch.empty_like(hstart)
        kernels.adjoint_state_kernel[(g.n_dblocks, s.n_chunks, g.Bt)](
            delta, A, C, bias, zz, gout, s.index, s.chunk_k, s.chunk_start, s.chunk_end, q,
            g.Dm, g.Lk, length, s.n_chunks, g.kacc, g.scale,
            *delta.stride(), *A.stride(), *C.stride(), *sz,
            N=g.N, NP=g.np_, BD=g.block_d, BT=s.block_t, HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
            HAS_Z=z is not None, PER_DIR=g.per_dir, num_warps=g.num_warps,
        )
        lam = torch.empty_like(hstart)
        _carry(g, A, sdt, q, lam, reverse=True)

    du = torch.empty(u.shape, device=dev, dtype=u.dtype)
    du_acc = du if (g.seq_u or u.dtype == f32) else torch.empty(g.Bt, g.Dm, length, device=dev, dtype=f32)
    ddelta = torch.empty(delta.shape, device=dev, dtype=delta.dtype)
    dB = torch.empty(g.Bt, g.n_dblocks, g.K, g.N, g.Lk, device=dev, dtype=f32)
    dC = torch.empty_like(dB)
    dA = torch.zeros(g.Bt, s.n_tiles, g.K, g.Dm, g.N, device=dev, dtype=f32)
    dD = torch.zeros(g.Bt, s.n_tiles, g.K, g.Dm, device=dev, dtype=f32)
    dbias = torch.zeros_like(dD)
    if z is not None:
        dz = torch.empty(g.Bt, g.Dm, length, device=dev, dtype=z.dtype)
        w_acc = dz if z.dtype == f32 else torch.empty(dz.shape, device=dev, dtype=f32)
    else:
        dz = w_acc = du_acc
    kernels.backward_kernel[(g.n_dblocks, s.n_tiles, g.Bt)](
        u, delta, A, B, C, D if D is not None else delta, bias, zz, s.index, gout,
        s.chunk_k, s.chunk_start, s.chunk_end, s.tile_start, s.tile_chunk_ptr, s.tile_chunks_rev,
        hstart, lam, du, du_acc, ddelta, dB, dC, dA, dD, dbias, w_acc, dz,
        g.Dm, g.Lk, length, s.n_chunks, s.n_tiles, g.K, g.kacc, g.scale,
        *_strides4(u, g.seq_u), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *sz,
        N=g.N, NP=g.np_, BD=g.block_d, BT=s.block_t, BP=g.cfg.block_p, SEQ_U=g.seq_u,
        HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus, HAS_D=D is not None, HAS_Z=z is not None,
        PER_DIR=g.per_dir, LOAD_ADJOINT=not s.single_tile, num_warps=g.num_warps,
    )
    # fixed-order reductions of the partials (deterministic)
    grads = [
        du, ddelta,
        dA.sum((0, 1)).reshape(g.K * g.Dm, g.N).to(A.dtype),
        dB.sum(1).to(B.dtype), dC.sum(1).to(C.dtype),
        dD.sum((0, 1)).reshape(-1).to(D.dtype) if D is not None else None,
        dz if z is not None else None,
        dbias.sum((0, 1)).reshape(-1).to(delta_bias.dtype) if delta_bias is not None else None,
    ]
    return grads


register_backend('triton', Backend(forward=triton_plan_scan, backward=triton_plan_scan_backward,
                                   supports=supports_device))
