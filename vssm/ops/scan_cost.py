"""Cost model of the fused Triton plan scan (mapped onto the engine's record by ``triton_cost``), computed on the host for any shape (no GPU, no Triton).

For one call it reports what the launch plan (``_triton_schedule.plan_launch``) makes the kernels do:

* bytes moved: every kernel's DRAM reads and writes, counting each per-step input once per pass that
  streams it, gathered map reads by the positions a direction really visits, accumulator traffic by its
  mode (store 4 B, add 8 B, finish 4 B + the target element per channel and position), and the small
  state / partial buffers; against the op's minimum (every input read once, every output written once);
* passes: how many kernels stream the per-step inputs (u, Δ or its factor, B, C, grad_out);
* lanes used: real steps over scan lanes (chunk padding at the end of a direction) and channels over
  channel-tile lanes;
* programs per launch (the smallest launch of each kernel), the largest grid, launches per call;
* chunk and segment lengths, and workspace against the op's input bytes.

The model assumes nothing stays in cache between passes (an upper bound at large batch; small problems
live in L2). Documented in docs/scan_kernel.md; printed by tools/benchmark_scan.py.
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence

import torch

from ._triton_schedule import (ACC_SCRATCH, MAX_GRID_X, MODE_ADD, MODE_DIRECT, MODE_FINAL, MODE_STORE,
                               LaunchPlan, ScanConfig, ScanProblem, build_plan_groups,
                               input_bytes, plan_launch, workspace)

__all__ = ['TritonCost', 'scan_cost', 'layer_cost', 'triton_cost', 'COST_COLUMNS', 'format_cost_table']


@dataclass(frozen=True)
class TritonCost:
    plan: LaunchPlan
    input_bytes: int
    output_bytes: int
    fwd_bytes: int
    bwd_bytes: int
    fwd_min_bytes: int
    bwd_min_bytes: int
    fwd_passes: int
    bwd_passes: int
    fwd_launches: int
    bwd_launches: int
    programs: Dict[str, int]  # kernel -> programs of its smallest launch
    max_grid: int
    steps_per_chunk: float
    steps_per_segment: float
    step_lanes: float  # real steps / scan lanes
    channel_lanes: float  # channels / channel-tile lanes
    fwd_workspace: Dict[str, int]
    bwd_workspace: Dict[str, int]

    @property
    def workspace_ratio(self) -> float:
        """Largest workspace (forward or backward) over the op's input bytes."""
        return max(sum(self.fwd_workspace.values()), sum(self.bwd_workspace.values())) / self.input_bytes

    @property
    def fits_grid(self) -> bool:
        return self.max_grid <= MAX_GRID_X


def _map_traffic(mode: int, acc: int, visits: int, elem: int) -> int:
    """Bytes per channel of one launch's writes to a map target over ``visits`` positions."""
    if mode == MODE_DIRECT:
        return visits * elem
    if mode == MODE_STORE:
        return visits * 4  # split: 2 + 2, float32 in place: 4
    if mode == MODE_ADD:
        return visits * 8
    return visits * (4 + elem)  # FINAL: read the running sum, write the finished element


def scan_cost(plan: LaunchPlan) -> TritonCost:
    """The cost model of one planned call (see the module doc)."""
    p, g = plan.problem, plan.groups
    Bt, K, Lk, L, Dm, N, R = p.batch, g.K, g.Lk, g.length, p.channels, p.d_state, p.rank
    f32 = 4
    S = K * Lk  # steps over all directions
    V = sum(g.real_steps)  # steps with a map position
    eu, ed, eb, ez, eg = p.u_bytes, p.delta_bytes, p.bc_bytes, p.z_bytes, p.grad_bytes
    # per batch element
    x_read = (S if p.seq_u else V) * Dm * eu  # u through the index (sequences: every step)
    delta_read = S * (R if R else Dm) * ed
    bc_read = S * N * eb  # B or C
    g_read = V * Dm * eg
    z_read = V * Dm * ez if p.has_z else 0
    # fixed per pass
    params = K * Dm * (N + R + 2) * p.param_bytes
    out_elems = (K if p.merge in ('none', 'group') else 1) * Dm * L

    def visits(k0, k1):
        return sum(g.real_steps[k0:k1])

    fwd, fwd_fixed = 0, 0
    if plan.fwd_states:
        links = K * plan.fwd_segments
        fwd += x_read + delta_read + bc_read + links * (N + 1) * Dm * f32  # segment states
        fwd += links * (2 * N + 1) * Dm * f32  # carry
        fwd += links * N * Dm * f32  # start states read by the output pass
        fwd_fixed += params
    fwd += x_read + delta_read + 2 * bc_read
    fwd_fixed += params
    for k0, k1, mode in plan.fwd_runs:
        v = visits(k0, k1)
        fwd += Dm * _map_traffic(mode, plan.out_acc, v, eu)
        if p.has_z and mode in (MODE_DIRECT, MODE_FINAL):
            fwd += v * Dm * ez
    if plan.out_acc == ACC_SCRATCH:
        fwd += Dm * L * (4 + eu + (ez if p.has_z else 0))
    if plan.out_zero_fill:
        fwd += out_elems * eu

    bwd, bwd_fixed = 0, 0
    links = K * plan.n_chunks
    states = 2 * links * N * Dm * f32 if plan.bwd_states else 0  # start states and adjoints read per pass
    if plan.bwd_states:
        bwd += x_read + delta_read + bc_read + links * (N + 1) * Dm * f32  # chunk states
        bwd += delta_read + bc_read + g_read + z_read + links * N * Dm * f32  # adjoint states
        bwd += 2 * links * (2 * N + 1) * Dm * f32  # two carries
        bwd_fixed += 2 * params
    # sequence gradients: inputs, states, dB / dC / d(dts) or dΔ written, du and dz
    bwd += x_read + delta_read + 2 * bc_read + g_read + z_read + states + 2 * bc_read + delta_read
    for k0, k1, du_mode, w_mode in plan.bwd_runs:
        v = visits(k0, k1)
        bwd += (k1 - k0) * Lk * Dm * eu if p.seq_u else Dm * _map_traffic(du_mode, plan.du_acc, v, eu)
        if p.has_z:
            bwd += Dm * _map_traffic(w_mode, plan.w_acc, v, ez)
            if w_mode in (MODE_DIRECT, MODE_FINAL):
                bwd += v * Dm * ez  # z for silu'
    if plan.channel_splits > 1:
        bwd += 2 * plan.channel_splits * S * (2 * N + R) * f32 + 2 * bc_read + (delta_read if R else 0)
    if plan.du_acc == ACC_SCRATCH:
        bwd += Dm * L * (4 + eu)
    if p.has_z and plan.w_acc == ACC_SCRATCH:
        bwd += Dm * L * (4 + 2 * ez)
    if plan.du_zero_fill:
        bwd += (K * Dm if p.merge == 'group' else Dm) * L * eu
    bwd_fixed += params
    # parameter gradients: the inputs again; partials written, reduced, gradients written
    bwd += x_read + delta_read + 2 * bc_read + g_read + z_read + states
    bwd_fixed += params + 2 * plan.param_groups * K * Dm * (N + 2 + R) * f32 + params

    inputs = input_bytes(g, p)
    outputs = Bt * out_elems * eu
    programs = {}
    for ps in plan.fwd_passes + plan.bwd_passes:
        programs[ps.kernel] = min(programs.get(ps.kernel, ps.programs), ps.programs)
    fwd_ws, bwd_ws = workspace(plan)
    return TritonCost(
        plan=plan, input_bytes=inputs, output_bytes=outputs,
        fwd_bytes=Bt * fwd + fwd_fixed, bwd_bytes=Bt * bwd + bwd_fixed,
        fwd_min_bytes=inputs + outputs, bwd_min_bytes=2 * inputs + outputs,  # inputs + grad_out read, grads written
        fwd_passes=1 + int(plan.fwd_states), bwd_passes=2 + 2 * int(plan.bwd_states),
        fwd_launches=sum(ps.launches for ps in plan.fwd_passes),
        bwd_launches=sum(ps.launches for ps in plan.bwd_passes),
        programs=programs, max_grid=max(ps.programs for ps in plan.fwd_passes + plan.bwd_passes),
        steps_per_chunk=Lk / plan.n_chunks, steps_per_segment=Lk / plan.fwd_segments,
        step_lanes=Lk / (plan.n_chunks * plan.block_t), channel_lanes=Dm / (plan.n_dblocks * plan.block_d),
        fwd_workspace=fwd_ws, bwd_workspace=bwd_ws,
    )


_DTYPE_BYTES = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


def layer_cost(directions: Sequence[str], H: int, W: int, batch: int, channels: int, d_state: int, rank: int,
               merge: str = 'sum', seq_u: bool = False, has_z: bool = False, dtype=torch.bfloat16,
               cfg: Optional[ScanConfig] = None, n_sm: int = 132, programs_per_sm: int = 2) -> TritonCost:
    """The cost of one scan layer on a GPU with ``n_sm`` SMs (default: an H100's 132), computed here.

    dtype is that of the per-step inputs, the output and their gradients; parameters are float32.
    """
    from .plans import build_index
    index = build_index(tuple(directions), H, W)
    e = _DTYPE_BYTES[dtype]
    problem = ScanProblem(batch=batch, channels=channels, d_state=d_state, rank=rank, merge=merge, seq_u=seq_u,
                          has_z=has_z, u_bytes=e, delta_bytes=e, bc_bytes=e, z_bytes=e, grad_bytes=e)
    return scan_cost(plan_launch(build_plan_groups(index, H * W), problem, cfg or ScanConfig(),
                                 programs_per_sm * n_sm))


# (header, format, value) columns of the cost table printed by tools/benchmark_scan.py and docs/scan_kernel.md
COST_COLUMNS = (
    ('steps/chunk', '{:.1f}', lambda c: c.steps_per_chunk),
    ('steps/segment', '{:.0f}', lambda c: c.steps_per_segment),
    ('lanes', '{:.2f}', lambda c: c.step_lanes * c.channel_lanes),
    ('fwd passes', '{}', lambda c: c.fwd_passes),
    ('bwd passes', '{}', lambda c: c.bwd_passes),
    ('launches f/b', '{}', lambda c: f'{c.fwd_launches}/{c.bwd_launches}'),
    ('programs fwd', '{}', lambda c: c.programs['forward']),
    ('programs seq-grad', '{}', lambda c: c.programs['sequence_grad']),
    ('programs param-grad', '{}', lambda c: c.programs['param_grad']),
    ('max grid', '{}', lambda c: c.max_grid),
    ('fwd MB', '{:.2f}', lambda c: c.fwd_bytes / 1e6),
    ('fwd / min', '{:.2f}', lambda c: c.fwd_bytes / c.fwd_min_bytes),
    ('bwd MB', '{:.2f}', lambda c: c.bwd_bytes / 1e6),
    ('bwd / min', '{:.2f}', lambda c: c.bwd_bytes / c.bwd_min_bytes),
    ('workspace / input', '{:.2f}', lambda c: c.workspace_ratio),
)


def format_cost_table(rows, extra=()) -> str:
    """A markdown table: ``rows`` are (label, TritonCost[, extra values...]); ``extra`` names the extra columns."""
    head = ['layer', *extra, *(h for h, _, _ in COST_COLUMNS)]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for label, cost, *more in rows:
        cells = [label, *map(str, more)] + [fmt.format(get(cost)) for _, fmt, get in COST_COLUMNS]
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def triton_cost(s, n_sm: int = 132, programs_per_sm: int = 2):
    """The Triton backend's (forward, backward) cost in the engine's record (vssm/ops/cost.py), on a GPU with
    ``n_sm`` SMs (default an H100's 132); computed on the host, no GPU needed."""
    from .cost import ScanCost, op_flops
    e = s.elem
    problem = ScanProblem(batch=s.batch, channels=s.channels, d_state=s.d_state, rank=s.rank, merge=s.merge,
                          seq_u=s.seq_u, has_z=s.has_z, has_D=s.has_D, u_bytes=e, delta_bytes=e, bc_bytes=e,
                          z_bytes=e, grad_bytes=e)
    c = scan_cost(plan_launch(build_plan_groups(s.index(), s.length), problem, ScanConfig(),
                              programs_per_sm * n_sm))
    common = dict(steps_per_chunk=c.steps_per_chunk, lanes=c.step_lanes * c.channel_lanes, max_grid=c.max_grid)
    fwd = ScanCost('triton', 'forward', bytes_moved=c.fwd_bytes, min_bytes=c.fwd_min_bytes,
                   flops=op_flops(s, 'forward'), workspace_bytes=sum(c.fwd_workspace.values()),
                   programs=c.programs['forward'], launches=c.fwd_launches, details=dict(passes=c.fwd_passes, **common))
    bwd = ScanCost('triton', 'backward', bytes_moved=c.bwd_bytes, min_bytes=c.bwd_min_bytes,
                   flops=op_flops(s, 'backward'), workspace_bytes=sum(c.bwd_workspace.values()),
                   programs=min(c.programs['sequence_grad'], c.programs['param_grad']), launches=c.bwd_launches,
                   details=dict(passes=c.bwd_passes, **common))
    return fwd, bwd
