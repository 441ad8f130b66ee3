"""'triton' backend of the plan scan: fused cross-scan + selective scan + merge, forward and backward.

Importing this module imports Triton and registers the backend; vssm.ops.scan imports it lazily the
first time the name 'triton' is asked for (and on CUDA by default). It runs on CUDA tensors, and on
CPU tensors under Triton's interpreter (``TRITON_INTERPRET=1`` set before this module is imported),
which is how CPU CI tests the real kernels.

Same contract as scan.plan_scan_reference, natively in both extended forms (``low_rank``: Δ from its
rank-R factor and delta_weight, formed in registers; ``grouped``: merge='group'). Design
(docs/scan_kernel.md; the work plan and its cost model in _triton_schedule.py and scan_cost.py):
* Chunks are block_t steps along each direction, independent of batch and map size. The forward splits
  each direction into segments (runs of chunks one program walks, the state in registers) only as far as
  needed to fill the device; a segment-state pass and a carry pass give each segment its start state.
* Merge without atomics: one launch per run of position-disjoint directions (VMamba: one per direction),
  in direction order, each adding its contribution into a float32 running sum; the last run finishes
  (scale, gate) and writes the channel-last output. 16-bit outputs keep the exact float32 sum as the two
  halves of its bits, one in the output buffer itself and one in a 16-bit scratch. Bitwise reproducible.
* Backward recomputes chunk states (the op saves only its inputs), runs the adjoint with the same
  chunking, then a sequence-gradient kernel per (chunk, batch element) that loops over all channels, so
  dB, dC and d(dts) are summed in registers (no per-channel-block partials), and a parameter-gradient kernel
  per (direction, channel block, work group) for dA, dD, dΔ-bias and d(delta_weight), with one float32
  partial per work group (their number bounded by the workspace budget).
* No copies around the op: the output is allocated channel-last and written in place; grad_out and every
  input are read through their strides; gradients are written in their inputs' layouts.
* float64 inputs go to the reference backend (the kernels compute in float32).
"""
import contextlib
import os
from collections import OrderedDict
from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
import triton

from . import _triton_kernels as kernels
from ._triton_schedule import ACC_SCRATCH, ACC_SPLIT, ScanConfig, ScanProblem, plan_groups, plan_launch
from .backend import REDUCED_FLOAT_DTYPES, Capabilities, ScanBackend, register_backend

__all__ = ['TritonScanConfig', 'config', 'get_config', 'triton_plan_scan', 'triton_plan_scan_backward',
           'supports_device', 'last_workspace_bytes', 'last_plan']

TritonScanConfig = ScanConfig  # block sizes and work splits (see _triton_schedule.ScanConfig)
_CONFIG = ScanConfig()
# the plan and the scratch bytes of the last forward / backward call (tests compare them with the cost model)
last_workspace_bytes = {'forward': 0, 'backward': 0}
last_plan = {'forward': None, 'backward': None}


def get_config() -> ScanConfig:
    return _CONFIG


@contextlib.contextmanager
def config(**overrides):
    """Temporarily change block sizes / work splits, e.g. ``with config(block_t=16, segments=3): ...``."""
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


def _target_programs(cfg: ScanConfig, device) -> int:
    if cfg.min_programs is not None:
        return cfg.min_programs
    if device.type == 'cuda':
        return 2 * torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def _pow2(n: int, lo: int) -> int:
    return max(lo, triton.next_power_of_2(max(1, n)))


def _map_strides(t: Optional[torch.Tensor], k_offset: int = 0):
    """(b, k, d, l) strides of a (B, C, L) map; ``k_offset`` channels between directions (merge 'group')."""
    if t is None:
        return 0, 0, 0, 0
    return t.stride(0), k_offset * t.stride(1), t.stride(1), t.stride(2)


def _elem(t: Optional[torch.Tensor], default: int = 2) -> int:
    return t.element_size() if t is not None else default


class _Call:
    """Sizes, plan, strides and constexprs one forward or backward call shares between its launches."""

    def __init__(self, u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus,
                 grad_out=None):
        cfg = _CONFIG
        K, Lk = index.shape
        Bt = delta.shape[0]
        Dm = delta_weight.shape[1] if delta_weight is not None else delta.shape[2]
        N = A.shape[1]
        R = delta.shape[2] if delta_weight is not None else 0
        seq_u = u.dim() == 4
        problem = ScanProblem(
            batch=Bt, channels=Dm, d_state=N, rank=R, merge=merge, seq_u=seq_u, has_z=z is not None,
            has_D=D is not None, has_bias=delta_bias is not None, u_bytes=u.element_size(),
            delta_bytes=delta.element_size(), bc_bytes=B.element_size(), z_bytes=_elem(z),
            param_bytes=A.element_size(), grad_bytes=_elem(grad_out))
        self.plan = plan_launch(plan_groups(index, length), problem, cfg, _target_programs(cfg, u.device))
        self.cfg, self.K, self.Lk, self.L, self.Bt, self.Dm, self.N, self.R = cfg, K, Lk, length, Bt, Dm, N, R
        self.merge, self.seq_u = merge, seq_u
        self.index = index if index.dtype == torch.int32 else _int32_index(index)
        self.scale = 1.0 / K if merge == 'mean' else 1.0
        grouped = Dm if merge == 'group' else 0
        self.su = u.stride() if seq_u else _map_strides(u, grouped)
        self.sd = delta.stride()
        self.sw = delta_weight.stride() if delta_weight is not None else (0, 0, 0)
        self.sz = _map_strides(z, grouped)
        self.sA = A.stride()
        self.sB, self.sC = B.stride(), C.stride()
        placeholder = u
        self.W = delta_weight if delta_weight is not None else placeholder
        # D and Δ-bias are read as contiguous (K*D,) vectors (a copy of K*D floats at most)
        self.bias = delta_bias.contiguous() if delta_bias is not None else placeholder
        self.Dv = D.contiguous() if D is not None else placeholder
        self.z = z if z is not None else placeholder
        self.workspace = 0
        self.consts = dict(
            N=N, NP=_pow2(N, 2), RP=_pow2(R, 2), BD=cfg.block_d, BT=cfg.block_t, LOW_RANK=delta_weight is not None,
            HAS_BIAS=delta_bias is not None, SOFTPLUS=delta_softplus,
        )

    def scratch(self, *shape, dtype=torch.float32, zero=False, device):
        t = (torch.zeros if zero else torch.empty)(shape, dtype=dtype, device=device)
        self.workspace += t.numel() * t.element_size()
        return t

    def out_strides(self, t):
        """(b, k, d, l) strides of an output-shaped map: (B, Dm, L), (B, K, Dm, L) ('none'), (B, K*Dm, L) ('group')."""
        if self.merge == 'none':
            return t.stride()
        return _map_strides(t, self.Dm if self.merge == 'group' else 0)


_INT32_INDEX: 'OrderedDict[tuple, tuple]' = OrderedDict()
_INT32_INDEX_SIZE = 64  # least recently used dropped first


def _int32_index(index: torch.Tensor) -> torch.Tensor:
    # the kernels read int32 positions; one copy per index tensor (index maps are cached by plans.build_index;
    # the entry keeps the tensor alive so its address cannot be reused by another map)
    key = (index.data_ptr(), index._version, tuple(index.shape), str(index.device))
    hit = _INT32_INDEX.get(key)
    if hit is not None and hit[0] is index:
        _INT32_INDEX.move_to_end(key)
        return hit[1]
    out = index.to(torch.int32).contiguous()
    _INT32_INDEX[key] = (index, out)
    while len(_INT32_INDEX) > _INT32_INDEX_SIZE:
        _INT32_INDEX.popitem(last=False)
    return out


def _new_output(u, K, Dm, L, merge):
    """The op's output, allocated channel-last: (B, L, Dm) memory for a (B, Dm, L) result."""
    Bt = u.shape[0]
    if merge == 'none':
        return torch.empty(Bt, K, L, Dm, device=u.device, dtype=u.dtype).transpose(2, 3)
    channels = K * Dm if merge == 'group' else Dm
    return torch.empty(Bt, L, channels, device=u.device, dtype=u.dtype).transpose(1, 2)


def _accumulator(c: _Call, kind: int, target: torch.Tensor):
    """(high-half view, scratch) pointers for a map target accumulated with ``kind``."""
    if kind == ACC_SPLIT:
        return target.view(torch.int16), c.scratch(c.Bt, c.L, c.Dm, dtype=torch.int16, device=target.device)
    if kind == ACC_SCRATCH:
        return target, c.scratch(c.Bt, c.L, c.Dm, zero=True, device=target.device)
    return target, target  # unused (ACC_NONE) or the float32 target itself (ACC_INPLACE)


def _chunk_states(c: _Call, u, delta, A, B, n_links: int, steps: int):
    """Local end states and sums of Δ of every link (steps per link), then chained in place: end states."""
    dev = u.device
    hend = c.scratch(c.Bt, c.K * n_links, c.N, c.Dm, device=dev)
    sdt = c.scratch(c.Bt, c.K * n_links, c.Dm, device=dev)
    nd = c.plan.n_dblocks
    kernels.segment_state_kernel[(c.Bt * c.K * n_links * nd,)](
        u, delta, c.W, c.bias, A, B, c.index, hend, sdt, nd, c.K, n_links, c.Dm, c.Lk, steps, c.R,
        *c.su, *c.sd, *c.sw, *c.sA, *c.sB, SEQ_U=c.seq_u, num_warps=c.cfg.state_num_warps,
        **c.consts,
    )
    _carry(c, A, sdt, hend, n_links, reverse=False)
    return hend, sdt


def _carry(c: _Call, A, sdt, state, n_links, reverse):
    nd = c.plan.n_dblocks
    kernels.carry_kernel[(c.Bt * c.K * nd,)](
        A, sdt, state, nd, c.K, n_links, c.Dm, *c.sA, N=c.N, BD=c.cfg.block_d, CB=c.cfg.carry_block,
        REVERSE=reverse, num_warps=c.cfg.num_warps,
    )


def _gate(z: Optional[torch.Tensor], ct=torch.float32):
    return F.silu(z.to(ct)) if z is not None else 1.0


def triton_plan_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length, merge='sum',
                     delta_softplus=True, delta_weight=None):
    """Forward of the fused plan scan; same contract as plan_scan_reference."""
    c = _Call(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus)
    p = c.plan
    out = _new_output(u, c.K, c.Dm, length, merge)
    if p.out_zero_fill:
        out.zero_()
    hi, acc = _accumulator(c, p.out_acc, out)
    steps = p.fwd_segment_chunks * p.block_t
    hend = _chunk_states(c, u, delta, A, B, p.fwd_segments, steps)[0] if p.fwd_states else u
    nd = p.n_dblocks
    for k0, k1, mode in p.fwd_runs:
        kernels.forward_kernel[(c.Bt * (k1 - k0) * p.fwd_segments * nd,)](
            u, delta, c.W, c.bias, A, B, C, c.Dv, c.z, c.index, hend, out, hi, acc,
            k0, k1 - k0, p.fwd_segments, nd, c.K, c.Dm, c.Lk, length, steps, c.R, c.scale,
            *c.su, *c.sd, *c.sw, *c.sA, *c.sB, *c.sC, *c.sz, *c.out_strides(out),
            SEQ_U=c.seq_u, HAS_D=D is not None, HAS_Z=z is not None, MODE=mode, ACC=p.out_acc,
            STATES=p.fwd_states, num_warps=c.cfg.num_warps, **c.consts,
        )
    if p.out_acc == ACC_SCRATCH:  # runs that skip positions: finish the float32 sum here
        out.copy_((acc.transpose(1, 2) * c.scale * _gate(z)).to(out.dtype))
    last_workspace_bytes['forward'], last_plan['forward'] = c.workspace, p
    return out


def triton_plan_scan_backward(grad_out, u, delta, A, B, C, D=None, z=None, delta_bias=None, *, index, length,
                              merge='sum', delta_softplus=True, delta_weight=None):
    """Gradients (u, delta, A, B, C, D, z, delta_bias[, delta_weight]), None for absent inputs; each in its
    input's dtype and the strides torch.empty_like(input) has."""
    c = _Call(u, delta, A, B, C, D, z, delta_bias, delta_weight, index, length, merge, delta_softplus, grad_out)
    p = c.plan
    dev, f32 = u.device, torch.float32
    K, Dm, N, R, Bt, nd, nch = c.K, c.Dm, c.N, c.R, c.Bt, p.n_dblocks, p.n_chunks
    sg = c.out_strides(grad_out)
    if p.bwd_states:
        hend, sdt = _chunk_states(c, u, delta, A, B, nch, p.block_t)
        lam = c.scratch(Bt, K * nch, N, Dm, device=dev)
        kernels.adjoint_state_kernel[(Bt * K * nch * nd,)](
            delta, c.W, c.bias, A, C, c.z, grad_out, c.index, lam, nd, K, nch, Dm, c.Lk, c.R, c.scale,
            *c.sd, *c.sw, *c.sA, *c.sC, *c.sz, *sg, HAS_Z=z is not None, num_warps=c.cfg.state_num_warps,
            **c.consts,
        )
        _carry(c, A, sdt, lam, nch, reverse=True)
    else:
        hend = lam = u  # unused: one chunk per direction

    du, ddelta, dB, dC = (torch.empty_like(t) for t in (u, delta, B, C))
    dz = torch.empty_like(z) if z is not None else u
    if p.du_zero_fill:
        du.zero_()
    if p.w_zero_fill:
        dz.zero_()
    du_hi, du_acc = _accumulator(c, p.du_acc, du)
    dz_hi, w_acc = _accumulator(c, p.w_acc, dz) if z is not None else (u, u)
    ncs = p.channel_splits
    rows = 2 * N + R
    part = c.scratch(ncs, Bt, K, rows, c.Lk, device=dev) if ncs > 1 else u
    sdu = du.stride() if c.seq_u else _map_strides(du, Dm if merge == 'group' else 0)
    sdz = _map_strides(dz if z is not None else None, Dm if merge == 'group' else 0)
    for k0, k1, du_mode, w_mode in p.bwd_runs:
        kernels.sequence_grad_kernel[(Bt * (k1 - k0) * nch * ncs,)](
            u, delta, c.W, c.bias, A, B, C, c.Dv, c.z, grad_out, c.index, hend, lam,
            du, du_hi, du_acc, dz, dz_hi, w_acc, ddelta, dB, dC, part,
            k0, k1 - k0, nch, ncs, nd, Bt, K, Dm, c.Lk, length, R, c.scale,
            *c.su, *c.sd, *c.sw, *c.sA, *c.sB, *c.sC, *c.sz, *sg, *sdu, *sdz, *ddelta.stride(),
            *dB.stride(), *dC.stride(),
            SEQ_U=c.seq_u, HAS_D=D is not None, HAS_Z=z is not None, DU_MODE=du_mode, DU_ACC=p.du_acc,
            W_MODE=w_mode, W_ACC=p.w_acc, STATES=p.bwd_states, SPLIT=ncs > 1, num_warps=c.cfg.seq_grad_num_warps,
            **c.consts,
        )
    if ncs > 1:  # fixed-order sums over the channel splits
        sums = part.sum(0)
        dB.copy_(sums[:, :, :N])
        dC.copy_(sums[:, :, N:2 * N])
        if delta_weight is not None:
            ddelta.copy_(sums[:, :, 2 * N:])
    if p.du_acc == ACC_SCRATCH:
        du.copy_(du_acc.transpose(1, 2))
    if z is not None and p.w_acc == ACC_SCRATCH:
        zf = z.to(f32)
        sgm = torch.sigmoid(zf)
        dz.copy_(w_acc.transpose(1, 2) * sgm * (1 + zf * (1 - sgm)))

    npg = p.param_groups
    pA = c.scratch(npg, K * Dm, N, device=dev)
    pD = c.scratch(npg, K * Dm, device=dev)
    pbias = c.scratch(npg, K * Dm, device=dev)
    pW = c.scratch(npg, K, Dm, R, device=dev) if R else u
    kernels.param_grad_kernel[(K * nd * npg,)](
        u, delta, c.W, c.bias, A, B, C, c.z, grad_out, c.index, hend, lam, pA, pD, pbias, pW,
        npg, p.param_items, Bt * nch, nch, nd, K, Dm, c.Lk, R, c.scale,
        *c.su, *c.sd, *c.sw, *c.sA, *c.sB, *c.sC, *c.sz, *sg,
        SEQ_U=c.seq_u, HAS_Z=z is not None, STATES=p.bwd_states, num_warps=c.cfg.param_grad_num_warps,
        **c.consts,
    )
    last_workspace_bytes['backward'], last_plan['backward'] = c.workspace, p
    grads = [
        du, ddelta, pA.sum(0).to(A.dtype), dB, dC,
        pD.sum(0).to(D.dtype) if D is not None else None,
        dz if z is not None else None,
        pbias.sum(0).to(delta_bias.dtype) if delta_bias is not None else None,
    ]
    if delta_weight is not None:
        grads.append(pW.sum(0).to(delta_weight.dtype))
    return grads


# float64 goes to the PyTorch paths; CPU tensors only under the interpreter (tests), never by default there
def _cost(s):
    from .scan_cost import triton_cost
    return triton_cost(s)


register_backend(ScanBackend(
    name='triton', cost=_cost, forward=triton_plan_scan, backward=triton_plan_scan_backward, available=supports_device,
    priority=30, default_devices=frozenset({'cuda'}),
    capabilities=Capabilities(devices=frozenset({'cuda', 'cpu'}), dtypes=REDUCED_FLOAT_DTYPES, low_rank_delta=True)))
