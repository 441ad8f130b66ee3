"""The VMamba block: x + drop_path(SS2D or SSD2D (norm(x))), then x + drop_path(MLP(norm2(x))), channel-last."""
from typing import Callable, Union

import torch
import torch.nn as nn
from timm.layers import DropPath, Mlp, get_act_layer

from ..ops import DirectionPlan, VMAMBA_PLAN
from .ss2d import SS2D
from .ssd2d import SSD2D

__all__ = ['VSSBlock']


class VSSBlock(nn.Module):
    def __init__(
            self,
            dim: int,
            drop_path: float = 0.,
            d_state: int = 1,
            ssm_ratio: float = 1.0,
            dt_rank: Union[int, str] = 'auto',
            d_conv: int = 3,
            conv_bias: bool = False,
            ssm_act_layer: Union[str, Callable] = 'silu',
            gate: bool = False,
            plan: DirectionPlan = VMAMBA_PLAN,
            mlp_ratio: float = 4.0,
            mlp_act_layer: Union[str, Callable] = 'gelu',
            norm_eps: float = 1e-5,
            ssm_mode: str = 'selective',
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.norm = nn.LayerNorm(dim, eps=norm_eps, **dd)
        if ssm_mode == 'selective':
            self.op = SS2D(
                dim, d_state=d_state, ssm_ratio=ssm_ratio, dt_rank=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
                act_layer=ssm_act_layer, gate=gate, plan=plan, **dd,
            )
        elif ssm_mode == 'ssd':  # Mamba-2 (VMamba m2): dt_rank is the number of heads; no z gate
            if gate:
                raise ValueError("the SSD mixer has no z gate: VMamba's m2 models are 'noz' (gate=False)")
            self.op = SSD2D(
                dim, d_state=d_state, ssm_ratio=ssm_ratio, num_heads=dt_rank, d_conv=d_conv, conv_bias=conv_bias,
                act_layer=ssm_act_layer, plan=plan, **dd,
            )
        else:
            raise ValueError(f"ssm_mode must be 'selective' (SS2D, Mamba-1) or 'ssd' (SSD2D, Mamba-2), got {ssm_mode!r}")
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim, eps=norm_eps, **dd)
            self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=get_act_layer(mlp_act_layer), **dd)
        else:
            self.norm2 = self.mlp = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
