"""Channel gates: squeeze a token map to one vector per image and rescale channels with it.

``ChannelGate`` is LocalMamba's per-direction gate and EfficientVMamba's SE on the EVSS branches:
LayerNorm -> mean over tokens -> Linear C -> C*ratio -> GELU -> Linear -> sigmoid -> x * gate.
Works on channel-last tokens (B, ..., C): every dim between batch and channels is pooled.
"""
from typing import Callable, Union

import torch
import torch.nn as nn
from timm.layers import get_act_layer, register_notrace_module

__all__ = ['ChannelGate']


@register_notrace_module  # pools over x.dim()-dependent axes: one leaf for timm's FX feature extraction
class ChannelGate(nn.Module):
    def __init__(
            self,
            dim: int,
            ratio: float = 0.125,
            act_layer: Union[str, Callable] = 'gelu',
            norm: bool = True,
            device=None,
            dtype=None,
    ):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        hidden = max(1, int(dim * ratio))
        self.norm = nn.LayerNorm(dim, **dd) if norm else nn.Identity()
        self.global_reduce = nn.Linear(dim, hidden, **dd)
        self.act = get_act_layer(act_layer)()
        self.channel_select = nn.Linear(hidden, dim, **dd)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1.., C) sigmoid gate for channel-last x."""
        pooled = self.norm(x).mean(dim=tuple(range(1, x.dim() - 1)), keepdim=True)
        return torch.sigmoid(self.channel_select(self.act(self.global_reduce(pooled))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)

    def merge_directions(self, y: torch.Tensor) -> torch.Tensor:
        """LocalMamba's merge: per-direction maps (B, K, C, L), channel-first -> sum_k y_k * gate(y_k), (B, C, L).

        One shared gate, pooled over each direction's own output (BiAttn in the official code).
        """
        out = None
        for k in range(y.shape[1]):
            yk = y[:, k]
            yk = yk * self.gate(yk.transpose(1, 2)).transpose(1, 2)
            out = yk if out is None else out + yk
        return out
