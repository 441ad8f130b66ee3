"""MultiMamba: the Mamba-1 mixer over several scan directions of one token sequence (Vim, LocalVim).

in_proj E -> 2*D_inner (x and z, shared) -> per direction: gather x along the direction, causal depthwise
conv1d + SiLU, x_proj -> (dt, B, C), dt_proj -> selective scan gated by SiLU(z) -> merge -> out_proj.
Merge: the mean of the directions (Vim's bidirectional v2 mixer with ``if_divide_out``), or LocalMamba's
per-direction channel gate and sum (``direction_gate=True``).

Every direction owns its conv1d / x_proj / dt_proj / A_log / D (``dirs.{k}``), each its own tensor: the
official Vim names (``conv1d`` / ``conv1d_b``, ``A_log`` / ``A_b_log``, ...) and LocalVim names
(``conv1d_{k}``, ``A_log_{k}``, ...) map onto ``dirs.{k}`` one to one. The scan runs through
``vssm.ops.plan_selective_scan`` with sequence-form u (the conv runs along each direction) and map-form z.

Tokens are channel-last (B, L, E) in and out. ``grid`` gives the (H, W) map the plan reads; without it the
sequence is a 1 x L map (Vim: the whole token sequence, class token included). With ``middle_token`` the
sequence is the grid plus a class token in its middle, which every direction reads at its middle step.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from ..ops import DirectionPlan, cross_scan_rows, plan_selective_scan
from .gates import ChannelGate
from .ss2d import init_ssm_params

__all__ = ['MultiMamba', 'DirectionSSM']


class DirectionSSM(nn.Module):
    """One direction's own parameters, in mamba_ssm's layout: conv1d, x_proj, dt_proj, A_log, D."""

    def __init__(self, d_inner: int, d_state: int, dt_rank: int, d_conv: int, conv_bias: bool,
                 device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dt_rank = dt_rank
        self.conv1d = nn.Conv1d(d_inner, d_inner, d_conv, groups=d_inner, padding=d_conv - 1, bias=conv_bias, **dd)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False, **dd)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=True, **dd)
        self.A_log = nn.Parameter(torch.empty(d_inner, d_state, **dd))
        self.D = nn.Parameter(torch.empty(d_inner, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """mamba_ssm's init: default conv1d / x_proj, dt_proj U(+-rank^-0.5), dt bias in [1e-3, 0.1], S4D-real A."""
        if self.A_log.is_meta:  # nothing to fill (and meta init ops are slow)
            return
        self.conv1d.reset_parameters()
        self.x_proj.reset_parameters()
        init_ssm_params(self.A_log, self.D, self.dt_proj.weight, self.dt_proj.bias, self.dt_rank)


def _causal_depthwise_conv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """Channel-last causal depthwise conv, one kernel per direction: x (B, K, L, C), weight (K, C, k), bias (K, C).

    Same as Conv1d(padding=k-1)[..., :L] on each (B, C, L) sequence, without leaving channel-last memory.
    """
    k = weight.shape[-1]
    L = x.shape[2]
    xp = F.pad(x, (0, 0, k - 1, 0))
    w = weight.transpose(1, 2)[None, :, :, None, :]  # (1, K, k, 1, C)
    out = xp[:, :, 0:L] * w[:, :, 0]
    for j in range(1, k):
        out = out + xp[:, :, j:j + L] * w[:, :, j]
    if bias is not None:
        out = out + bias[None, :, None, :]
    return out


@register_notrace_module  # shape-dependent plans: one leaf for timm's FX feature extraction
class MultiMamba(nn.Module):
    def __init__(
            self,
            dim: int,
            directions: Union[DirectionPlan, Sequence[str]] = ('h', 'h_flip'),
            direction_gate: bool = False,
            d_state: int = 16,
            expand: float = 2.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 4,
            conv_bias: bool = True,
            bias: bool = False,
            gate_ratio: float = 0.125,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: token channels E.
            directions: scan directions (plan names, see vssm.ops.plans) or a DirectionPlan.
            direction_gate: LocalMamba's merge (ChannelGate per direction, then sum) instead of the mean.
            d_state: SSM state size N.
            expand: D_inner = expand * dim.
            dt_rank: rank of dt, 'auto' = ceil(dim / 16).
            d_conv: causal conv1d kernel size.
            conv_bias: bias on the conv1d.
            bias: bias on in_proj / out_proj.
            gate_ratio: hidden ratio of the direction gate.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        names = directions.directions if isinstance(directions, DirectionPlan) else tuple(directions)
        self.plan = DirectionPlan(names, 'none' if direction_gate else 'mean')
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=bias, **dd)
        self.act = nn.SiLU()
        self.dirs = nn.ModuleList([
            DirectionSSM(d_inner, d_state, dt_rank, d_conv, conv_bias, **dd) for _ in names
        ])
        self.direction_gate = ChannelGate(d_inner, ratio=gate_ratio, **dd) if direction_gate else None
        self.out_proj = nn.Linear(d_inner, dim, bias=bias, **dd)

    @property
    def num_directions(self) -> int:
        return self.plan.num_directions

    def init_weights(self, out_proj_scale: float = 1.0) -> None:
        """mamba_ssm's init; out_proj scaled by `out_proj_scale` (Vim: 1/sqrt(depth), GPT-2 style)."""
        self.in_proj.reset_parameters()
        self.out_proj.reset_parameters()
        with torch.no_grad():
            self.out_proj.weight.mul_(out_proj_scale)
        for d in self.dirs:
            d.init_weights()
        if self.direction_gate is not None:
            for m in self.direction_gate.modules():
                if isinstance(m, (nn.Linear, nn.LayerNorm)):
                    m.reset_parameters()

    def _stacked(self):
        """Per-direction tensors in the engine's stacked layout (a cheap copy of small tensors)."""
        dirs = self.dirs
        conv_w = torch.stack([d.conv1d.weight[:, 0] for d in dirs])  # (K, D, k)
        conv_b = torch.stack([d.conv1d.bias for d in dirs]) if dirs[0].conv1d.bias is not None else None
        x_proj = torch.stack([d.x_proj.weight for d in dirs])  # (K, R + 2N, D)
        dt_w = torch.stack([d.dt_proj.weight for d in dirs])  # (K, D, R)
        dt_b = torch.cat([d.dt_proj.bias for d in dirs])  # (K*D,)
        A = -torch.exp(torch.cat([d.A_log for d in dirs]).float())  # (K*D, N)
        D = torch.cat([d.D for d in dirs]).float()
        return conv_w, conv_b, x_proj, dt_w, dt_b.float(), A, D

    def forward(self, x: torch.Tensor, grid: Optional[Tuple[int, int]] = None,
                middle_token: bool = False) -> torch.Tensor:
        """x (B, L, E) -> (B, L, E). ``middle_token``: token (L - 1) // 2 is a class token outside the grid;
        every direction reads it at its own middle step (LocalVim's middle class token)."""
        Bt, L, _ = x.shape
        H, W = grid if grid is not None else (1, L - int(middle_token))
        if H * W + int(middle_token) != L:
            extra = ' plus a class token' if middle_token else ''
            raise ValueError(f'MultiMamba got {L} tokens for a {H}x{W} grid{extra}')
        N, R = self.d_state, self.dt_rank
        index = self.plan.index(H, W, x.device, middle_token=middle_token)
        conv_w, conv_b, x_proj, dt_w, dt_b, A, D = self._stacked()

        xs, z = self.in_proj(x).chunk(2, dim=-1)  # (B, L, D) each, channel-last
        u = self.act(_causal_depthwise_conv(cross_scan_rows(xs, index), conv_w, conv_b))  # (B, K, Lk, D)
        x_dbl = torch.matmul(u, x_proj.transpose(1, 2))  # (B, K, Lk, R + 2N)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=-1)
        y = plan_selective_scan(  # Δ = dt_proj(dts) computed inside the scan (low-rank form)
            u.transpose(-1, -2), dts.transpose(-1, -2), A, Bs.transpose(-1, -2), Cs.transpose(-1, -2), D,
            z=z.transpose(1, 2), delta_bias=dt_b, index=index, length=L, merge=self.plan.merge,
            delta_softplus=True, delta_weight=dt_w,
        )
        if self.direction_gate is not None:
            y = self.direction_gate.merge_directions(y)
        return self.out_proj(y.transpose(1, 2))
