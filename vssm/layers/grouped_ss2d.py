"""GroupedSS2D: K independent SS2D mixers, one per channel group, each scanning one direction, in one scan call.

GroupMamba's "VSSS" blocks: the channels are split into K groups (K = 4: row-major, column-major and their
flips); group k goes through its own in_proj (x and z halves), depthwise conv + SiLU, x_proj / dt_proj, a
one-direction selective scan, out_norm, the SiLU(z) gate and out_proj. The official code runs K separate SS2D
modules (K cross-scan copies, K scan launches). Here the K groups' parameters are stacked and the scans are
one ``plan_selective_scan`` call with ``merge='group'``: direction k reads and writes channel group k.

Stacked parameters (K groups, Dg = dim / K channels in, D = ssm_ratio * Dg inner, R dt rank, N state):
``in_proj_weight`` (K, 2D, Dg), ``conv2d`` depthwise over K*D channels, ``x_proj_weight`` (K, R+2N, D),
``dt_projs_weight`` (K, D, R), ``dt_projs_bias`` (K, D), ``A_logs`` (K*D, N), ``Ds`` (K*D,), ``out_norm``
(K, D) affine, ``out_proj_weight`` (K, Dg, D). The projections are block-diagonal: einsums over the group
axis, never a dense (C, C) matrix. Channel-last (B, H, W, C) in and out.
"""
import math
from typing import Callable, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import get_act_layer, register_notrace_module, trunc_normal_

from ..ops import GROUPED_PLAN, DirectionPlan, cross_scan_rows, plan_selective_scan
from .ss2d import init_ssm_params

__all__ = ['GroupedSS2D', 'GroupedLayerNorm']


def _float32_up(t: torch.Tensor) -> torch.Tensor:
    # the per-channel SSM parameters enter the scan in float32 at least (float64 stays float64)
    return t.to(torch.promote_types(t.dtype, torch.float32))


class GroupedLayerNorm(nn.Module):
    """LayerNorm over the last dim of (..., K, D), with its own affine per group: K LayerNorm(D) side by side."""

    def __init__(self, num_groups: int, dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_groups, dim, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(num_groups, dim, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=self.eps) * self.weight + self.bias


@register_notrace_module  # shape-dependent plans: one leaf for timm's FX feature extraction
class GroupedSS2D(nn.Module):
    def __init__(
            self,
            dim: int,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = True,
            act_layer: Union[str, Callable] = 'silu',
            plan: DirectionPlan = GROUPED_PLAN,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: input / output channels (all groups); must be a multiple of the plan's direction count.
            d_state: SSM state size N.
            ssm_ratio: inner width of each group = ssm_ratio * dim / K.
            dt_rank: rank of the delta projection, 'auto' = ceil(group width / 16) (as each official SS2D).
            d_conv: depthwise conv kernel size.
            conv_bias: bias on the depthwise conv.
            act_layer: activation after the conv and on the z gate.
            plan: a grouped plan (merge='group'): direction k scans channel group k.
        """
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        if plan.merge != 'group':
            raise ValueError(f"GroupedSS2D needs a grouped plan (merge='group'), got {plan}")
        K = plan.num_directions
        if dim % K:
            raise ValueError(f'GroupedSS2D splits {dim} channels into {K} groups: dim must be a multiple of {K}')
        self.plan = plan
        self.num_groups = K
        self.group_dim = group_dim = dim // K
        self.d_inner = d_inner = int(ssm_ratio * group_dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(group_dim / 16) if dt_rank == 'auto' else int(dt_rank)
        if d_inner < 1 or d_conv < 1:
            raise ValueError(f'GroupedSS2D needs an inner width and a conv size of at least 1, got '
                             f'd_inner={d_inner}, d_conv={d_conv}')
        self.act = get_act_layer(act_layer)()

        self.in_proj_weight = nn.Parameter(torch.empty(K, 2 * d_inner, group_dim, **dd))  # x then z, per group
        self.conv2d = nn.Conv2d(K * d_inner, K * d_inner, d_conv, padding=(d_conv - 1) // 2, groups=K * d_inner,
                                bias=conv_bias, **dd)
        self.x_proj_weight = nn.Parameter(torch.empty(K, dt_rank + 2 * d_state, d_inner, **dd))
        self.dt_projs_weight = nn.Parameter(torch.empty(K, d_inner, dt_rank, **dd))
        self.dt_projs_bias = nn.Parameter(torch.empty(K, d_inner, **dd))
        self.A_logs = nn.Parameter(torch.empty(K * d_inner, d_state, **dd))
        self.Ds = nn.Parameter(torch.empty(K * d_inner, **dd))
        self.out_norm = GroupedLayerNorm(K, d_inner, **dd)
        self.out_proj_weight = nn.Parameter(torch.empty(K, group_dim, d_inner, **dd))
        self.init_weights()

    def init_weights(self) -> None:
        """Each group as an official SS2D: Linear trunc_normal .02, x_proj nn.Linear default, Mamba's dt / A / D."""
        if self.A_logs.is_meta:  # nothing to fill (and meta init ops are slow)
            return
        trunc_normal_(self.in_proj_weight, std=.02)
        trunc_normal_(self.out_proj_weight, std=.02)
        bound = 1 / math.sqrt(self.d_inner)
        nn.init.uniform_(self.x_proj_weight, -bound, bound)
        init_ssm_params(self.A_logs, self.Ds, self.dt_projs_weight, self.dt_projs_bias, self.dt_rank)
        self.conv2d.reset_parameters()
        self.out_norm.reset_parameters()

    def ssm(self, x: torch.Tensor) -> torch.Tensor:
        """Scan the (B, K*D, H, W) map, group k along direction k: returns (B, H, W, K, D).

        Channels-last memory (what the depthwise conv gives for NHWC input) makes every reshape here a view.
        """
        Bt, _, H, W = x.shape
        K, D, N, R = self.num_groups, self.d_inner, self.d_state, self.dt_rank
        L = H * W
        index = self.plan.index(H, W, x.device)
        x_cl = x.permute(0, 2, 3, 1).reshape(Bt, L, K, D)
        # x_proj is pointwise: project every position of every group once, then gather the R + 2N channels of
        # group k along direction k (row position * K + k of the (B, L*K, .) view)
        x_dbl = cross_scan_rows(torch.einsum('blkd,kcd->blkc', x_cl, self.x_proj_weight), index)
        dts, Bs, Cs = torch.split(x_dbl, [R, N, N], dim=-1)  # (B, K, L, .)
        # Δ = dt_proj(dts) stays in low-rank form: the scan computes it per step
        y = plan_selective_scan(
            x_cl.reshape(Bt, L, K * D).transpose(1, 2), dts.transpose(-1, -2), -torch.exp(_float32_up(self.A_logs)),
            Bs.transpose(-1, -2), Cs.transpose(-1, -2), _float32_up(self.Ds),
            delta_bias=_float32_up(self.dt_projs_bias.flatten()), index=index, length=L, merge='group',
            delta_softplus=True, delta_weight=self.dt_projs_weight,
        )
        return y.transpose(1, 2).reshape(Bt, H, W, K, D)  # the scan writes channel-last: a view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Bt, H, W, C = x.shape
        K, D = self.num_groups, self.d_inner
        xz = torch.einsum('bhwkc,kdc->bhwkd', x.reshape(Bt, H, W, K, self.group_dim), self.in_proj_weight)
        xs, z = xz.split(D, dim=-1)
        xs = self.act(self.conv2d(xs.reshape(Bt, H, W, K * D).permute(0, 3, 1, 2)))  # channels-last in and out
        y = self.out_norm(self.ssm(xs)) * self.act(z)
        return torch.einsum('bhwkd,kcd->bhwkc', y, self.out_proj_weight).reshape(Bt, H, W, C)
