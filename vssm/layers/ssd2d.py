"""SSD2D: SS2D's Mamba-2 sibling (VMamba's ``SS2Dm0``, forward type ``m0_noz``), the mixer of the m2 models.

in_proj -> depthwise conv + act -> per-direction x_proj (Δ per head, B, C) -> SSD plan scan -> merge
-> out_norm -> out_proj. Per direction k: R heads of dim P = d_inner / R, one Δ and one scalar decay
a = -exp(A_log) per head, B and C (N states) shared by the heads of the direction (ngroups = K); no dt_proj:
Δ = softplus(x_proj's Δ rows + dt_projs_bias). Parameters as the official module (so its checkpoints load by
name): ``x_proj_weight`` (K, R+2N, D), ``dt_projs_bias`` (K, R), ``A_logs`` (K, R), ``Ds`` (K, R, P);
the official ``conv2d.1`` (a Permute / Conv2d / Permute sequence) is our ``conv2d`` (vmamba.checkpoint_filter_fn).
Channel-last (B, H, W, C) in and out, like SS2D; the projection and gather are SS2D's (project_directions).
"""
import math
from typing import Callable, Union

import torch
import torch.nn as nn
from timm.layers import get_act_layer, register_notrace_module, trunc_normal_

from ..ops import VMAMBA_PLAN, DirectionPlan, plan_ssd_scan
from .ss2d import project_directions

__all__ = ['SSD2D']


@register_notrace_module  # shape-dependent plans: one leaf for timm's FX feature extraction
class SSD2D(nn.Module):
    def __init__(
            self,
            dim: int,
            d_state: int = 64,
            ssm_ratio: float = 1.0,
            num_heads: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            act_layer: Union[str, Callable] = 'silu',
            plan: DirectionPlan = VMAMBA_PLAN,
            chunk_size: int = 64,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input / output channels.
            d_state: SSM state size N (64 in VMamba's m2 models).
            ssm_ratio: inner width = ssm_ratio * dim.
            num_heads: heads R per direction; 'auto' = ceil(dim / 16) (VMamba's dt_rank rule); must divide the
                inner width (head dim P = inner / R).
            d_conv: depthwise conv kernel size (<2 disables the conv).
            conv_bias: bias on the depthwise conv.
            act_layer: activation after the conv.
            plan: direction plan of the scan; its merge must give a map ('sum' or 'mean').
            chunk_size: steps per chunk of the chunked SSD (64 as the official models).
            proj_drop: dropout after out_proj.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if plan.merge not in ('sum', 'mean'):
            raise ValueError(f"SSD2D needs a plan merging into one map ('sum' or 'mean'), got {plan.merge!r}")
        self.plan = plan
        K = plan.num_directions
        self.d_inner = d_inner = int(ssm_ratio * dim)
        self.d_state = d_state
        self.num_heads = R = math.ceil(dim / 16) if num_heads == 'auto' else int(num_heads)
        if R < 1 or d_inner % R:
            raise ValueError(f'num_heads {R} must divide the inner width {d_inner} (dim {dim} x ssm_ratio {ssm_ratio})')
        self.head_dim = P = d_inner // R
        self.chunk_size = chunk_size

        self.in_proj = nn.Linear(dim, d_inner, bias=False, **dd)
        self.act = get_act_layer(act_layer)()
        self.conv2d = nn.Conv2d(
            d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=conv_bias, **dd,
        ) if d_conv > 1 else nn.Identity()
        self.x_proj_weight = nn.Parameter(torch.empty(K, R + 2 * d_state, d_inner, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, R, **dd))
        self.A_logs = nn.Parameter(torch.empty(K, R, **dd))
        self.Ds = nn.Parameter(torch.empty(K, R, P, **dd))
        self.out_norm = nn.LayerNorm(d_inner, **dd)
        self.out_proj = nn.Linear(d_inner, dim, bias=False, **dd)
        self.proj_drop = nn.Dropout(proj_drop)
        self.init_weights()

    def init_weights(self) -> None:
        """The official m0 'v2' init: A_log = 0 (a = -1), D = 1, dt bias U(0, 0.1); x_proj as nn.Linear."""
        if self.A_logs.is_meta:
            return
        trunc_normal_(self.in_proj.weight, std=.02)
        trunc_normal_(self.out_proj.weight, std=.02)
        bound = 1 / math.sqrt(self.d_inner)
        with torch.no_grad():
            nn.init.uniform_(self.x_proj_weight, -bound, bound)
            self.A_logs.zero_()
            self.Ds.fill_(1.0)
            self.dt_projs_bias.uniform_(0, 0.1)
        if isinstance(self.conv2d, nn.Conv2d):
            self.conv2d.reset_parameters()
        self.out_norm.reset_parameters()

    def ssm(self, x: torch.Tensor) -> torch.Tensor:
        """Scan the (B, D, H, W) map over the plan; returns the merged (B, D, H, W) map (channel-last memory)."""
        Bt, D, H, W = x.shape
        N, R, L = self.d_state, self.num_heads, H * W
        index = self.plan.index(H, W, x.device)
        x_cl = x.permute(0, 2, 3, 1).reshape(Bt, L, D)
        dts, Bs, Cs = torch.split(project_directions(x_cl, self.x_proj_weight, index), [R, N, N], dim=-1)
        y = plan_ssd_scan(
            x_cl.transpose(1, 2), dts.transpose(-1, -2), -torch.exp(self.A_logs.float()).flatten(),
            Bs.transpose(-1, -2), Cs.transpose(-1, -2), self.Ds.float().flatten(),
            self.dt_projs_bias.float().flatten(), index=index, length=L, merge=self.plan.merge,
            dt_softplus=True, chunk_size=self.chunk_size,
        )
        return y.view(Bt, D, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2d(self.in_proj(x).permute(0, 3, 1, 2)))  # channels-last memory in and out
        y = self.out_norm(self.ssm(x).permute(0, 2, 3, 1))
        return self.proj_drop(self.out_proj(y))
