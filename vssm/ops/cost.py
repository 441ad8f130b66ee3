"""The engine's one cost record: what one call of a scan backend moves, computes and allocates.

Every backend's ``cost`` function takes a ``ScanShape`` (the sizes of one call) and returns a ``ScanCost`` per
phase (forward, backward). The fields mean the same for every backend:

* ``bytes_moved``: bytes the backend's kernels read and write in DRAM (an upper bound: nothing is assumed to
  stay in cache between passes), ``min_bytes``: the op's minimum (every input read once, every output written
  once; the backward also reads grad_out and writes every gradient once), so ``traffic_ratio`` >= 1 says how
  far a backend is from a single fused pass;
* ``flops``: multiply-adds and elementwise ops of the op itself (the same for every backend: it is a property
  of the maths, counted as vssm/ops/flops.py counts the scan for FLOP tables), so backends differ in bytes,
  not FLOPs;
* ``workspace_bytes``: memory the call allocates besides its inputs and outputs (for the autograd-based
  backends, what their backward keeps alive);
* ``programs``: independent tasks of the smallest launch (GPU programs, CPU tasks), ``launches``: kernel
  launches (or PyTorch op calls) per call; ``details``: backend-specific numbers (chunk lengths, passes, ...).

Backend modules compute their own numbers from their schedules (``triton_scan``: vssm/ops/scan_cost.py;
``cpu``: the header of vssm/ops/csrc/plan_scan_cpu.cpp; ``cuda``: the extension's ``schedule``, whose fields
map one to one); tools/benchmark_scan.py prints them side by side.
"""
from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import torch

__all__ = ['ScanShape', 'ScanCost', 'PHASES', 'scan_shape', 'op_flops', 'op_min_bytes', 'pytorch_path_cost']

PHASES = ('forward', 'backward')
_F32 = 4


@dataclass(frozen=True)
class ScanShape:
    """The sizes of one selective-scan call (see vssm/ops/scan.py for the shapes)."""
    batch: int
    directions: int  # K
    channels: int  # Dm, per direction
    d_state: int  # N
    steps: int  # Lk, per direction
    length: int  # L = H*W map positions
    rank: int = 0  # R of a low-rank Δ; 0: full Δ
    merge: str = 'sum'
    seq_u: bool = False  # u given per direction
    has_z: bool = False
    has_D: bool = True
    dtype: torch.dtype = torch.float32  # of u, Δ, B, C, z, the output and their gradients (parameters: float32)
    heads: int = 0  # SSD (Mamba-2) mode: heads R per direction, channels = R * head dim; 0 for the selective scan
    # the plan's direction names and map size, for backends whose schedule depends on the plan (Triton); empty:
    # K directions that each visit every position
    plan: Tuple[str, ...] = ()
    hw: Tuple[int, int] = (0, 0)
    # or the index map itself (recorded from a real call; see scan.record_scan_shapes)
    index_map: Optional[torch.Tensor] = field(default=None, compare=False, repr=False)

    def index(self) -> torch.Tensor:
        """The plan's index map (K, Lk), or K row-major directions over a 1 x L map when no plan is given."""
        from .plans import build_index
        if self.index_map is not None and self.index_map.device.type == 'cpu':
            return self.index_map
        if self.plan:
            return build_index(self.plan, *self.hw)
        return build_index(('h',) * self.directions, 1, self.length)

    @property
    def elem(self) -> int:
        return torch.finfo(self.dtype).bits // 8

    @property
    def map_channels(self) -> int:
        return self.directions * self.channels if self.merge == 'group' else self.channels

    @property
    def out_elems(self) -> int:
        per = self.directions * self.channels if self.merge in ('none', 'group') else self.channels
        return self.batch * per * self.length

    @property
    def lanes(self) -> int:
        """(batch, direction, channel, state) recurrences, each ``steps`` long."""
        return self.batch * self.directions * self.channels * self.d_state


@dataclass(frozen=True)
class ScanCost:
    backend: str
    phase: str  # 'forward' or 'backward'
    bytes_moved: int
    min_bytes: int
    flops: int
    workspace_bytes: int
    programs: int
    launches: int
    details: Dict[str, float] = field(default_factory=dict)

    @property
    def traffic_ratio(self) -> float:
        return self.bytes_moved / self.min_bytes

    @property
    def intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / max(1, self.bytes_moved)


def scan_shape(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, index: torch.Tensor, length: int, merge: str,
               z=None, D=None, delta_weight=None) -> ScanShape:
    """The ScanShape of a call with these inputs (same arguments as plan_selective_scan)."""
    K, Lk = index.shape
    Dm = delta_weight.shape[1] if delta_weight is not None else delta.shape[2]
    return ScanShape(batch=u.shape[0], directions=K, channels=Dm, d_state=A.shape[1], steps=Lk, length=int(length),
                     rank=delta.shape[2] if delta_weight is not None else 0, merge=merge, seq_u=u.dim() == 4,
                     has_z=z is not None, has_D=D is not None, dtype=u.dtype,
                     index_map=index if index.device.type in ('cpu', 'meta') else None)


def op_flops(s: ScanShape, phase: str = 'forward') -> int:
    """The op's FLOPs, as vssm/ops/flops.py counts them (a multiply-add is one): 9·N per (lane, step) for the
    recurrence and C·h, one per (channel, step) for D, one per output for z, one per (channel, step, rank) for a
    low-rank Δ. The backward is counted as twice the forward (the recurrence again in reverse plus the forward
    recompute every fused backend does), the usual convention."""
    per_dir = s.batch * s.directions * s.channels * s.steps
    fwd = 9 * per_dir * s.d_state + (per_dir if s.has_D else 0) + per_dir * s.rank
    if s.has_z:
        fwd += s.batch * s.map_channels * s.length
    return fwd if phase == 'forward' else 2 * fwd


def _input_bytes(s: ScanShape) -> int:
    e, B, K = s.elem, s.batch, s.directions
    u = B * K * s.channels * s.steps * e if s.seq_u else B * s.map_channels * s.length * e
    delta = B * K * (s.rank or s.channels) * s.steps * e
    bc = 2 * B * K * s.d_state * s.steps * e
    z = B * s.map_channels * s.length * e if s.has_z else 0
    params = K * s.channels * (s.d_state + 2 + s.rank) * _F32
    return u + delta + bc + z + params


def op_min_bytes(s: ScanShape, phase: str = 'forward') -> int:
    """Every input read once and the output written once; backward: inputs and grad_out read, gradients written."""
    inputs, outputs = _input_bytes(s), s.out_elems * s.elem
    return inputs + outputs if phase == 'forward' else 2 * inputs + outputs


def pytorch_path_cost(backend: str, s: ScanShape, passes: int, chunk: int, launches_per_chunk: int,
                      extra_workspace: int = 0) -> Sequence[ScanCost]:
    """Cost of a scan made of PyTorch ops over (lanes, steps) state tensors (the 'reference', 'fast' and 'export'
    paths): each of ``passes`` elementwise ops reads and writes one float32 (batch, K, Dm, N, Lk) tensor, on top
    of the cross-scan copy (u and Δ gathered into sequences) and the merge; the backward (autograd) keeps those
    tensors and streams them about twice. ``chunk``: steps handled per group of ``launches_per_chunk`` op calls.
    """
    states = s.lanes * s.steps * _F32
    seq = s.batch * s.directions * s.channels * s.steps * _F32  # one (B, K, Dm, Lk) float32 sequence tensor
    gather = 2 * seq * (3 if s.rank else 2)  # u gathered, Δ expanded (low-rank: einsum in, out) and softplus
    merge = 2 * seq + s.out_elems * s.elem
    fwd_bytes = gather + 2 * passes * states + merge
    n_chunks = -(-s.steps // chunk)
    fwd = ScanCost(backend, 'forward', bytes_moved=fwd_bytes, min_bytes=op_min_bytes(s, 'forward'),
                   flops=op_flops(s, 'forward'), workspace_bytes=min(passes, 3) * states + extra_workspace,
                   programs=1, launches=n_chunks * launches_per_chunk + 6,
                   details=dict(steps_per_chunk=min(chunk, s.steps), state_passes=passes))
    bwd = ScanCost(backend, 'backward', bytes_moved=fwd_bytes + 2 * (2 * passes * states + gather + merge),
                   min_bytes=op_min_bytes(s, 'backward'), flops=op_flops(s, 'backward'),
                   workspace_bytes=passes * states + gather + extra_workspace, programs=1,
                   launches=3 * (n_chunks * launches_per_chunk + 6), details=dict(steps_per_chunk=min(chunk, s.steps)))
    return fwd, bwd
