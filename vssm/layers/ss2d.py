"""SS2D: the 2D selective-scan mixer every family is built from.

in_proj -> (split z) -> depthwise conv + act -> per-direction x_proj / dt_proj -> plan scan -> merge
-> out_norm -> (gate by act(z)) -> out_proj. Parameters are stacked per direction as VMamba does
(``x_proj_weight`` (K, R+2N, D), ``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D),
``A_logs`` (K*D, N), ``Ds`` (K*D,)), so official checkpoints load by name.

Works channel-last: (B, H, W, C) in and out (LayerNorm and Linear are fastest there); the scan itself
reads the channel-first map the depthwise conv produces.
"""
import math
from typing import Callable, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_layer, register_notrace_module, trunc_normal_

from .gates import ChannelGate
from ..ops import DirectionPlan, VMAMBA_PLAN, cross_scan_rows, plan_selective_scan

__all__ = ['SS2D', 'Permute', 'init_dt_bias', 'init_ssm_params', 'project_directions']


class Permute(nn.Module):
    """Permute dims inside an nn.Sequential (keeps official state_dict indices of stems and downsamples)."""

    def __init__(self, *dims: int):
        super().__init__()
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(*self.dims)


def init_dt_bias(bias: torch.Tensor, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
    """dt ~ logU[dt_min, dt_max] (floored), stored as its inverse softplus so softplus(bias) = dt."""
    with torch.no_grad():
        dt = torch.exp(torch.rand_like(bias) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_floor)
        bias.copy_(dt + torch.log(-torch.expm1(-dt)))


def init_ssm_params(A_logs: torch.Tensor, Ds: torch.Tensor, dt_projs_weight: Optional[torch.Tensor],
                    dt_projs_bias: torch.Tensor, dt_rank: int, dt_scale: float = 1.0) -> None:
    """Mamba's initialisation: A = -(1..N) per channel, D = 1, dt_proj U(+-dt_rank^-0.5), dt bias as above."""
    with torch.no_grad():
        N = A_logs.shape[-1]
        A_logs.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float32, device=A_logs.device)).expand_as(A_logs))
        Ds.fill_(1.0)
        if dt_projs_weight is not None:
            std = dt_rank ** -0.5 * dt_scale
            dt_projs_weight.uniform_(-std, std)
        init_dt_bias(dt_projs_bias)


def project_directions(x_cl: torch.Tensor, x_proj_weight: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """Per-direction projections of a channel-last map: x_cl (B, L, D), x_proj_weight (K, E, D) -> (B, K, Lk, E)
    in each direction's step order (index (K, Lk) from the plan)."""
    Bt, L, D = x_cl.shape
    K = x_proj_weight.shape[0]
    if index.shape[1] < L:
        # directions shorter than the map (atrous): gather first, project only the visited tokens
        return torch.matmul(cross_scan_rows(x_cl, index), x_proj_weight.transpose(1, 2))
    # x_proj is pointwise: project the map once for all directions, then gather only the E projected channels
    x_dbl = F.linear(x_cl, x_proj_weight.reshape(-1, D)).view(Bt, L, K, -1)
    return cross_scan_rows(x_dbl, index)


@register_notrace_module  # shape-dependent plans and padding: one leaf for timm's FX feature extraction
class SS2D(nn.Module):
    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            act_layer: Union[str, Callable] = 'silu',
            gate: bool = False,
            plan: DirectionPlan = VMAMBA_PLAN,
            proj_drop: float = 0.,
            pad_multiple: int = 1,
            direction_gate: bool = False,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input / output channels.
            d_state: SSM state size N.
            ssm_ratio: inner width = ssm_ratio * dim.
            dt_rank: rank of the delta projection, 'auto' = ceil(dim / 16) (as VMamba).
            d_conv: depthwise conv kernel size (<1 disables the conv).
            conv_bias: bias on the depthwise conv.
            act_layer: activation after the conv and on the z gate.
            gate: multiply by act(z) from a second half of in_proj (VMamba v0); off = "noz".
            plan: direction plan of the scan; its merge must give a map ('sum' or 'mean').
            proj_drop: dropout after out_proj.
            pad_multiple: zero-pad the map to a multiple of this before the scan and crop after
                (EfficientVMamba: the padded tokens sit inside its atrous sequences and advance the state).
            direction_gate: LocalMamba's merge: each direction's output rescaled by one shared ChannelGate,
                then summed (needs a plan with merge='none').
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if (plan.merge == 'none') != direction_gate:
            raise ValueError(f"SS2D needs merge='none' with direction_gate=True and 'sum' or 'mean' otherwise; got "
                             f"merge={plan.merge!r}, direction_gate={direction_gate}")
        self.plan = plan
        K = plan.num_directions
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16) if dt_rank == 'auto' else int(dt_rank)
        self.gate = gate
        if pad_multiple < 1:
            raise ValueError(f'pad_multiple must be at least 1, got {pad_multiple}')
        self.pad_multiple = pad_multiple
        act_layer = get_act_layer(act_layer)

        self.in_proj = nn.Linear(dim, d_inner * (2 if gate else 1), bias=False, **dd)
        self.act = act_layer()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias, **dd,
        ) if d_conv > 1 else nn.Identity()
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state, **dd))
        self.Ds = nn.Parameter(torch.empty(K * d_inner, **dd))
        self.out_norm = nn.LayerNorm(d_inner, **dd)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.direction_gate = ChannelGate(d_inner, **dd) if direction_gate else None
        self.init_weights()

    def init_weights(self) -> None:
        if self.A_logs.is_meta:  # nothing to fill (and meta init ops are slow)
            return
        trunc_normal_(self.in_proj.weight, std=.02)
        trunc_normal_(self.out_proj.weight, std=.02)
        # x_proj keeps nn.Linear's default init, as the official code does
        bound = 1 / math.sqrt(self.d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        init_ssm_params(self.A_logs, self.Ds, self.dt_projs_weight, self.dt_projs_bias, self.dt_rank)
        if isinstance(self.conv2d, nn.Conv2d):
            self.conv2d.reset_parameters()
        self.out_norm.reset_parameters()
        if self.direction_gate is not None:  # as the official LocalVMamba init: trunc_normal Linear, zero bias
            for m in self.direction_gate.modules():
                if isinstance(m, nn.Linear):
                    trunc_normal_(m.weight, std=.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    m.reset_parameters()

    def ssm(self, x: torch.Tensor) -> torch.Tensor:
        """Scan the (B, D, H, W) map over the plan; returns the merged (B, D, H, W) map.

        Channels-last memory (what the depthwise conv gives for NHWC input) avoids every copy here: the
        projections and gathers work on rows of channels and the scan reads the map through its index.
        """
        Bt, D, H, W = x.shape
        pad_h, pad_w = (-H) % self.pad_multiple, (-W) % self.pad_multiple
        if pad_h or pad_w:
            return self.ssm(F.pad(x, (0, pad_w, 0, pad_h)))[..., :H, :W]
        K, N, R = self.plan.num_directions, self.d_state, self.dt_rank
        L = H * W
        index = self.plan.index(H, W, x.device)
        x_cl = x.permute(0, 2, 3, 1).reshape(Bt, L, D)
        dts, Bs, Cs = torch.split(project_directions(x_cl, self.x_proj_weight, index), [R, N, N], dim=-1)
        # Δ = dt_proj(dts) stays in low-rank form: the scan computes it per step, so no (B, K, D, L) tensor
        # is written or saved for backward
        y = plan_selective_scan(
            x_cl.transpose(1, 2), dts.transpose(-1, -2), -torch.exp(self.A_logs.float()),
            Bs.transpose(-1, -2), Cs.transpose(-1, -2), self.Ds.float(),
            delta_bias=self.dt_projs_bias.flatten().float(),
            index=index, length=L, merge=self.plan.merge, delta_softplus=True, delta_weight=self.dt_projs_weight,
        )
        if self.direction_gate is not None:
            y = self.direction_gate.merge_directions(y)
        return y.view(Bt, D, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bt, H, W, _ = x.shape
        x = self.in_proj(x)
        z = None
        if self.gate:
            x, z = x.chunk(2, dim=-1)
        x = self.act(self.conv2d(x.permute(0, 3, 1, 2)))  # channels-last memory in and out
        y = self.out_norm(self.ssm(x).permute(0, 2, 3, 1))
        if z is not None:
            y = y * self.act(z)
        return self.proj_drop(self.out_proj(y))
