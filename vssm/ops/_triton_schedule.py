"""Host-side work plan of the fused Triton plan scan: no Triton here, so it runs (and is tested) on any CPU
for any GPU's shapes.

Two parts:

* ``plan_groups(index, length)``: what the index map says, computed once per index tensor (LRU cache):
  how many real (non-padded) steps each direction has, which directions visit every map position, and
  the cut of the directions into runs ``[k0, k1)`` whose position sets are pairwise disjoint. One launch
  handles one run, so within a launch every map position is written by at most one program and the
  merge needs no atomics; runs go in direction order, which fixes the summation order (deterministic).
* ``plan_launch(groups, problem, cfg, target_programs)``: the launches of one call (pure arithmetic, cached):
  the chunking of each direction into ``block_t``-step scan chunks, forward segments (runs of chunks one
  program walks with the state in registers), backward work splits, accumulator kinds and workspace.

Chunks never depend on batch or map size: a chunk is ``block_t`` consecutive steps of one direction
(the last one shorter). Parallelism comes from splitting each direction into segments (forward) and from
one program per chunk (backward), never from shortening chunks.
"""
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional, Tuple

import numpy as np
import torch

__all__ = ['ScanConfig', 'PlanGroups', 'ScanProblem', 'LaunchPlan', 'Pass', 'build_plan_groups', 'plan_groups',
           'plan_launch', 'input_bytes', 'workspace', 'MAX_GRID_X', 'ACC_NONE', 'ACC_INPLACE', 'ACC_SPLIT',
           'ACC_SCRATCH',
           'MODE_DIRECT', 'MODE_STORE', 'MODE_ADD', 'MODE_FINAL']

MAX_GRID_X = 2 ** 31 - 1  # CUDA's limit on grid dimension x (every launch here is a 1D grid)

# how a launch writes a map target (output, du, the dz accumulator)
MODE_DIRECT = 0  # final value straight away (no other launch writes these positions)
MODE_STORE = 1  # first run: accumulator = value
MODE_ADD = 2  # accumulator += value
MODE_FINAL = 3  # last run: target = finish(accumulator + value)
# where the running fp32 sum of a map target lives between launches
ACC_NONE = 0  # not accumulated (one run, or a target no two directions share)
ACC_INPLACE = 1  # the float32 target itself
ACC_SPLIT = 2  # a 16-bit target holds the high half of the float32 bits, a 16-bit scratch the low half
ACC_SCRATCH = 3  # a zeroed float32 scratch, finished by torch (index maps whose first/last run skips positions)


@dataclass(frozen=True)
class ScanConfig:
    """Block sizes and work splits. Defaults keep the kernels free of register spills on sm_90 (checked
    ahead of time with ptxas); they are not tuned by measurement yet."""
    block_t: int = 32  # steps per chunk: one parallel scan
    block_d: int = 16  # channels per tile
    # warps per kernel: the fewest that keep every kernel free of stack (spills) on sm_90 at d_state 1..16,
    # rank 6..48 (ptxas through Triton; tests/test_triton_scan.py::test_kernels_compile_for_sm90)
    num_warps: int = 4  # forward and carry kernels
    state_num_warps: int = 8  # segment-state and adjoint-state kernels (4 warps: ptxas picks 64 registers, spills)
    seq_grad_num_warps: int = 8  # sequence-gradient kernel (about twice the live tiles)
    param_grad_num_warps: int = 4  # parameter-gradient kernel (8 warps: ptxas caps it at 128 registers, spills)
    carry_block: int = 32  # links (segments / chunks) per step of the carry scan
    min_programs: Optional[int] = None  # programs wanted per launch; None: 2 per SM on CUDA, 1 elsewhere
    # adjustable workspace (channel-split partials, then parameter-gradient partials): at most this fraction of
    # the op's input bytes; the fixed workspace (states, accumulators) stays below about 1x on its own
    workspace_budget: float = 1.0
    segments: Optional[int] = None  # force forward segments per direction
    param_groups: Optional[int] = None  # force work groups of the parameter-gradient kernel
    channel_splits: Optional[int] = None  # force channel splits of the sequence-gradient kernel

    def __post_init__(self):
        for name in ('block_t', 'block_d'):
            v = getattr(self, name)
            if v < 2 or v & (v - 1):
                raise ValueError(f'{name} must be a power of two >= 2, got {v}')
        if self.carry_block < 2 or self.carry_block & (self.carry_block - 1):
            raise ValueError(f'carry_block must be a power of two >= 2, got {self.carry_block}')


# ------------------------------------------------------------------------------------------ index map

@dataclass(frozen=True)
class PlanGroups:
    K: int
    Lk: int
    length: int
    real_steps: Tuple[int, ...]  # steps with a map position (not -1), per direction
    dir_covers: Tuple[bool, ...]  # direction k visits every map position
    runs: Tuple[Tuple[int, int], ...]  # [k0, k1): consecutive directions with pairwise disjoint positions
    run_covers: Tuple[bool, ...]  # the run's directions together visit every map position
    covers_all: bool  # the directions together visit every map position


def build_plan_groups(index: torch.Tensor, length: int) -> PlanGroups:
    """Read the index map once (numpy, O(K * Lk)); checks what the unchecked kernel writes rely on."""
    idx = index.detach().to('cpu', torch.long).numpy()
    K, Lk = idx.shape
    if idx.size and (idx.max() >= length or idx.min() < -1):
        raise ValueError(f'index map entries must lie in [-1, {length}), got [{idx.min()}, {idx.max()}]')
    masks = []
    for k, row in enumerate(idx):
        counts = np.bincount(row[row >= 0], minlength=length)
        if counts.size and counts.max() > 1:
            raise ValueError(f'direction {k} of the index map visits a position twice; the fused scan needs each '
                             f'direction to be a (padded) permutation of map positions')
        masks.append(counts.astype(bool))
    runs, covers = [], []
    union = np.zeros(length, dtype=bool)
    start = 0
    for k in range(K):
        if k > start and (union & masks[k]).any():
            runs.append((start, k))
            covers.append(bool(union.all()))
            union[:] = False
            start = k
        union |= masks[k]
    runs.append((start, K))
    covers.append(bool(union.all()))
    everything = np.zeros(length, dtype=bool)
    for m in masks:
        everything |= m
    return PlanGroups(K=K, Lk=Lk, length=length, real_steps=tuple(int(m.sum()) for m in masks),
                      dir_covers=tuple(bool(m.all()) for m in masks), runs=tuple(runs), run_covers=tuple(covers),
                      covers_all=bool(everything.all()))


_GROUPS: 'OrderedDict[tuple, tuple]' = OrderedDict()
_GROUPS_SIZE = 64  # least recently used dropped first: multi-scale training meets many map sizes


def plan_groups(index: torch.Tensor, length: int) -> PlanGroups:
    """Cached build_plan_groups, keyed by the index tensor's storage and version; the entry keeps the
    tensor alive so its address cannot be reused by another map (index maps come from plans.build_index's
    own cache, so one tensor comes back every call). A miss copies the index to the CPU once."""
    key = (index.data_ptr(), index._version, tuple(index.shape), str(index.device), int(length))
    hit = _GROUPS.get(key)
    if hit is not None and hit[0] is index:
        _GROUPS.move_to_end(key)
        return hit[1]
    groups = build_plan_groups(index, length)
    _GROUPS[key] = (index, groups)
    while len(_GROUPS) > _GROUPS_SIZE:
        _GROUPS.popitem(last=False)
    return groups


# --------------------------------------------------------------------------------------------- launches

@dataclass(frozen=True)
class ScanProblem:
    """The sizes of one call (element sizes in bytes)."""
    batch: int
    channels: int  # Dm: channels per direction
    d_state: int
    rank: int  # R of the low-rank Δ; 0: full Δ
    merge: str
    seq_u: bool  # u given per direction (B, K, Dm, Lk)
    has_z: bool
    has_D: bool = True
    has_bias: bool = True
    u_bytes: int = 2  # u, the output and du
    delta_bytes: int = 2  # Δ or its factor, and their gradient
    bc_bytes: int = 2
    z_bytes: int = 2
    param_bytes: int = 4  # A, D, bias, delta_weight
    grad_bytes: int = 2  # grad_out


@dataclass(frozen=True)
class Pass:
    """One kernel launch (or a set of identical launches, one per run)."""
    kernel: str
    programs: int  # per launch
    launches: int = 1


@dataclass(frozen=True)
class LaunchPlan:
    groups: PlanGroups
    problem: ScanProblem
    block_t: int
    block_d: int
    n_dblocks: int
    n_chunks: int  # chunks per direction
    fwd_segment_chunks: int  # chunks one forward program walks
    fwd_segments: int  # forward segments per direction
    fwd_runs: Tuple[Tuple[int, int, int], ...]  # (k0, k1, mode of the output)
    out_acc: int
    out_zero_fill: bool  # positions no launch writes must be zeroed first
    bwd_runs: Tuple[Tuple[int, int, int, int], ...]  # (k0, k1, mode of du, mode of the dz accumulator)
    du_acc: int
    du_zero_fill: bool
    w_acc: int
    w_zero_fill: bool
    channel_splits: int  # sequence-gradient kernel: channel ranges per chunk (> 1: fp32 partials of dB/dC/d(dts))
    param_groups: int  # parameter-gradient kernel: work groups per (direction, channel block)
    param_items: int  # (batch, chunk) items per parameter work group
    target_programs: int
    fwd_passes: Tuple[Pass, ...] = field(default=())
    bwd_passes: Tuple[Pass, ...] = field(default=())

    @property
    def K(self):
        return self.groups.K

    @property
    def fwd_states(self) -> bool:
        return self.fwd_segments > 1

    @property
    def bwd_states(self) -> bool:
        return self.n_chunks > 1


def _accumulation(runs, run_covers, dir_covers, accumulate: bool, fp32_target: bool):
    """Modes per run, accumulator kind and whether the target needs zeroing first."""
    if not accumulate:  # no two runs write one element of this target: each direction writes its own
        return [MODE_DIRECT] * len(runs), ACC_NONE, not all(dir_covers)
    if len(runs) == 1:
        return [MODE_DIRECT], ACC_NONE, not run_covers[0]
    if run_covers[0] and run_covers[-1]:
        modes = [MODE_STORE] + [MODE_ADD] * (len(runs) - 2) + [MODE_FINAL]
        return modes, ACC_INPLACE if fp32_target else ACC_SPLIT, False
    return [MODE_ADD] * len(runs), ACC_SCRATCH, False


def _ceil(a, b):
    return -(-a // b)


WORKSPACE_CAP = 1.8  # the adjustable workspace stops where the total would pass this many input bytes


def _acc_bytes(kind: int, batch: int, length: int, channels: int) -> int:
    return {ACC_SPLIT: batch * length * channels * 2, ACC_SCRATCH: batch * length * channels * 4}.get(kind, 0)


def _fixed_bwd_workspace(p: 'ScanProblem', g: 'PlanGroups', nch: int, du_acc: int, w_acc: int) -> int:
    states = p.batch * g.K * nch * (2 * p.d_state + 1) * p.channels * 4 if nch > 1 else 0
    return (states + _acc_bytes(du_acc, p.batch, g.length, p.channels)
            + (_acc_bytes(w_acc, p.batch, g.length, p.channels) if p.has_z else 0))


def input_bytes(groups: PlanGroups, p: ScanProblem) -> int:
    """Bytes of every tensor the op takes (the index map aside)."""
    K, Lk, L, Dm, N = groups.K, groups.Lk, groups.length, p.channels, p.d_state
    Bt = p.batch
    u_ch = K * Dm if p.merge == 'group' else Dm
    u = (K * Dm * Lk if p.seq_u else u_ch * L) * Bt * p.u_bytes
    delta = Bt * K * (p.rank or Dm) * Lk * p.delta_bytes
    bc = 2 * Bt * K * N * Lk * p.bc_bytes
    z = Bt * u_ch * L * p.z_bytes if p.has_z else 0
    params = K * Dm * (N + int(p.has_D) + int(p.has_bias) + p.rank) * p.param_bytes
    return u + delta + bc + z + params


def workspace(plan: 'LaunchPlan'):
    """Scratch bytes the backend allocates, {name: bytes} for the forward and for the backward (the op's
    outputs and gradients are not counted). triton_scan allocates exactly these (tests compare)."""
    p, g = plan.problem, plan.groups
    Bt, K, Dm, N, R, L, Lk = p.batch, g.K, p.channels, p.d_state, p.rank, g.length, g.Lk
    f32 = 4

    def acc(kind, elem):
        return _acc_bytes(kind, Bt, L, Dm)

    fwd = {}
    if plan.fwd_states:
        fwd['segment states'] = Bt * K * plan.fwd_segments * (N + 1) * Dm * f32
    fwd['output accumulator'] = acc(plan.out_acc, p.u_bytes)
    bwd = {}
    if plan.bwd_states:
        bwd['chunk states + adjoints'] = Bt * K * plan.n_chunks * (2 * N + 1) * Dm * f32
    bwd['du accumulator'] = acc(plan.du_acc, p.u_bytes)
    bwd['dz accumulator'] = acc(plan.w_acc, p.z_bytes) if p.has_z else 0
    if plan.channel_splits > 1:
        bwd['channel-split partials'] = plan.channel_splits * Bt * K * (2 * N + R) * Lk * f32
    bwd['parameter partials'] = plan.param_groups * K * Dm * (N + 2 + R) * f32
    return ({k: v for k, v in fwd.items() if v}, {k: v for k, v in bwd.items() if v})


@lru_cache(maxsize=256)
def plan_launch(groups: PlanGroups, problem: ScanProblem, cfg: ScanConfig, target_programs: int) -> LaunchPlan:
    """The launches of one call: chunking, forward segments, runs and their write modes, backward work splits.
    ``target_programs``: programs wanted per launch (2 per SM on a GPU)."""
    p = problem
    K, Lk, Dm, N, R, Bt = groups.K, groups.Lk, p.channels, p.d_state, p.rank, p.batch
    T = max(1, target_programs)
    BT, BD = cfg.block_t, cfg.block_d
    nd = _ceil(Dm, BD)
    nch = _ceil(Lk, BT)
    fp32 = p.u_bytes == 4

    # forward: output runs; segments so that each launch has about T programs
    accumulate_out = p.merge in ('sum', 'mean')
    fwd_runs = groups.runs if accumulate_out else ((0, K),)
    fwd_covers = groups.run_covers if accumulate_out else (groups.covers_all,)
    modes, out_acc, out_zero = _accumulation(fwd_runs, fwd_covers, groups.dir_covers, accumulate_out, fp32)
    smallest_run = min(k1 - k0 for k0, k1 in fwd_runs)
    if cfg.segments is not None:
        nseg = cfg.segments
    else:
        nseg = _ceil(T, Bt * smallest_run * nd)
    nseg = min(max(1, nseg), nch)
    seg_chunks = _ceil(nch, nseg)
    nseg = _ceil(nch, seg_chunks)
    fwd = tuple((k0, k1, m) for (k0, k1), m in zip(fwd_runs, modes))

    # backward: du / dz accumulate over directions unless every direction has its own slice
    du_shared = not p.seq_u and p.merge != 'group'
    w_shared = p.has_z and p.merge != 'group'
    bwd_runs = groups.runs if (du_shared or w_shared) else ((0, K),)
    bwd_covers = groups.run_covers if (du_shared or w_shared) else (groups.covers_all,)
    du_modes, du_acc, du_zero = _accumulation(bwd_runs, bwd_covers, groups.dir_covers, du_shared, fp32)
    if p.seq_u:
        du_zero = False  # written at every step
    w_modes, w_acc, w_zero = _accumulation(bwd_runs, bwd_covers, groups.dir_covers, w_shared, p.z_bytes == 4)
    if not p.has_z:
        w_modes, w_acc, w_zero = [MODE_DIRECT] * len(bwd_runs), ACC_NONE, False
    bwd = tuple((k0, k1, dm_, wm) for (k0, k1), dm_, wm in zip(bwd_runs, du_modes, w_modes))

    # adjustable workspace: channel-split partials of the sequence-gradient kernel, then parameter partials;
    # within cfg.workspace_budget x the input bytes and never past WORKSPACE_CAP x with the fixed workspace
    inputs = input_bytes(groups, p)
    fixed = _fixed_bwd_workspace(p, groups, nch, du_acc, w_acc)
    budget = max(0.0, min(cfg.workspace_budget * inputs, WORKSPACE_CAP * inputs - fixed))
    smallest_bwd = min(k1 - k0 for k0, k1 in bwd_runs)
    split_bytes = Bt * K * (2 * N + R) * Lk * 4  # one channel split's fp32 partials (dB, dC, d(dts) rows)
    if cfg.channel_splits is not None:
        ncs = cfg.channel_splits
    else:
        ncs = _ceil(T, Bt * smallest_bwd * nch)
        if ncs > 1:  # at most half the budget
            ncs = min(ncs, int(0.5 * budget // split_bytes))
    ncs = min(max(1, ncs), nd)
    used = split_bytes * ncs if ncs > 1 else 0
    group_bytes = K * Dm * (N + 2 + R) * 4  # one work group's dA, dD, dΔ-bias, d(delta_weight) partials
    items = Bt * nch
    if cfg.param_groups is not None:
        npg = cfg.param_groups
    else:
        npg = min(_ceil(T, K * nd), int((budget - used) // group_bytes))
    npg = min(max(1, npg), items)
    per_group = _ceil(items, npg)
    npg = _ceil(items, per_group)

    fwd_passes, bwd_passes = [], []
    n_fwd = len(fwd)
    if nseg > 1:
        fwd_passes += [Pass('segment_state', Bt * K * nseg * nd), Pass('carry', Bt * K * nd)]
    fwd_passes.append(Pass('forward', Bt * smallest_run * nseg * nd, n_fwd))
    if nch > 1:
        bwd_passes += [Pass('chunk_state', Bt * K * nch * nd), Pass('carry', Bt * K * nd),
                       Pass('adjoint_state', Bt * K * nch * nd), Pass('carry', Bt * K * nd)]
    bwd_passes += [Pass('sequence_grad', Bt * smallest_bwd * nch * ncs, len(bwd)),
                   Pass('param_grad', K * nd * npg)]
    largest = max(Bt * K * nseg * nd, Bt * K * nch * nd, Bt * K * nch * ncs)  # any launch's 1D grid is at most this
    if largest > MAX_GRID_X:
        raise ValueError(f'the fused scan would launch {largest} programs, above CUDA\'s grid limit {MAX_GRID_X}; '
                         f'split the batch ({Bt}) into smaller calls')
    return LaunchPlan(
        groups=groups, problem=p, block_t=BT, block_d=BD, n_dblocks=nd, n_chunks=nch, fwd_segment_chunks=seg_chunks,
        fwd_segments=nseg, fwd_runs=fwd, out_acc=out_acc, out_zero_fill=out_zero, bwd_runs=bwd, du_acc=du_acc,
        du_zero_fill=du_zero, w_acc=w_acc, w_zero_fill=w_zero, channel_splits=ncs, param_groups=npg,
        param_items=per_group, target_programs=T, fwd_passes=tuple(fwd_passes), bwd_passes=tuple(bwd_passes),
    )
