"""Structure-aware state fusion (Spatial-Mamba): hidden states mixed over their 2D neighbourhood.

Three depthwise 3x3 kernels at dilations 1, 3 and 5, weighted by ``alpha`` and summed; every branch pads
by *replicate* (the border state is repeated, not zeros). The three branches are one 11x11 depthwise kernel
(``alpha[0]*kernel_3`` on rows/cols 4..6, ``alpha[1]*kernel_3_1`` on {2, 5, 8}, ``alpha[2]*kernel_3_2`` on
{0, 5, 10}, the centres added) applied with replicate padding 5: the same taps clamp to the same border
pixels. Training runs the branches (cheapest and what the official training does); eval runs the folded
kernel, computed from the current weights on every call (the official code caches it once and never refreshes
it, so later weight changes are silently ignored). ``reparameterize()`` (timm's reparameterize_model
convention) freezes the folded kernel into a buffer for deployment.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ['StateFusion', 'fold_dilated_kernels', 'replicate_pad']

DILATIONS = (1, 3, 5)
FOLDED_SIZE = 2 * DILATIONS[-1] + 1  # 11


def fold_dilated_kernels(kernels, alpha: torch.Tensor) -> torch.Tensor:
    """(C, 1, 3, 3) kernels at DILATIONS, weights alpha (3,) -> the equivalent (C, 1, 11, 11) kernel."""
    C = kernels[0].shape[0]
    centre = FOLDED_SIZE // 2
    folded = kernels[0].new_zeros(C, 1, FOLDED_SIZE, FOLDED_SIZE)
    for k, a, d in zip(kernels, alpha, DILATIONS):
        # the 3x3 taps at offsets -d, 0, +d of the centre: zero-insert (pad inside) and place by padding
        # around, out of place so gradients reach every kernel and alpha (and torch.export sees plain ops)
        spread = F.pad(k.unsqueeze(-1).unsqueeze(-3), (0, d - 1, 0, 0, 0, d - 1))  # (C, 1, 3, d, 3, d)
        spread = spread.reshape(C, 1, 3 * d, 3 * d)[..., :2 * d + 1, :2 * d + 1]
        folded = folded + a * F.pad(spread, (centre - d,) * 4)
    return folded


def replicate_pad(h: torch.Tensor, p: int) -> torch.Tensor:
    """F.pad(h, (p, p, p, p), mode='replicate'). Under torch.compile the same as a clamped-index gather: inductor
    (torch 2.14) miscompiles replication_pad2d_backward (output strides assert), the gather's backward is plain."""
    if not torch.compiler.is_compiling():
        return F.pad(h, (p, p, p, p), mode='replicate')
    H, W = h.shape[-2:]
    rows = torch.arange(-p, H + p, device=h.device).clamp(0, H - 1)
    cols = torch.arange(-p, W + p, device=h.device).clamp(0, W - 1)
    return h.index_select(-2, rows).index_select(-1, cols)


class StateFusion(nn.Module):
    """Depthwise fusion of a (B, C, H, W) state map; weights ``kernel_3``, ``kernel_3_1``, ``kernel_3_2``, ``alpha``."""

    def __init__(self, dim: int, device=None, dtype=None):
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.dim = dim
        self.kernel_3 = nn.Parameter(torch.ones(dim, 1, 3, 3, **dd))
        self.kernel_3_1 = nn.Parameter(torch.ones(dim, 1, 3, 3, **dd))
        self.kernel_3_2 = nn.Parameter(torch.ones(dim, 1, 3, 3, **dd))
        self.alpha = nn.Parameter(torch.ones(3, **dd))
        self.register_buffer('fused_weight', None)  # set by reparameterize(); None is not in the state_dict

    def reset_parameters(self) -> None:
        for p in (self.kernel_3, self.kernel_3_1, self.kernel_3_2, self.alpha):
            nn.init.ones_(p)

    def kernels(self):
        return self.kernel_3, self.kernel_3_1, self.kernel_3_2

    def folded_weight(self) -> torch.Tensor:
        """The (C, 1, 11, 11) kernel equal to the three weighted branches (with replicate padding)."""
        return fold_dilated_kernels(self.kernels(), self.alpha)

    def forward_branches(self, h: torch.Tensor) -> torch.Tensor:
        if self.fused_weight is not None:
            raise RuntimeError('StateFusion was reparameterized for deployment: its branch kernels are gone')
        out = 0
        for k, a, d in zip(self.kernels(), self.alpha, DILATIONS):
            out = out + a * F.conv2d(replicate_pad(h, d), k.to(h.dtype), dilation=d, groups=self.dim)
        return out

    def forward_folded(self, h: torch.Tensor, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        weight = self.folded_weight() if weight is None else weight
        p = FOLDED_SIZE // 2
        return F.conv2d(replicate_pad(h, p), weight.to(h.dtype), groups=self.dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if h.dim() != 4 or h.shape[1] != self.dim:
            raise ValueError(f'StateFusion expects a (B, {self.dim}, H, W) state map, got {tuple(h.shape)}')
        if self.fused_weight is not None:
            return self.forward_folded(h, self.fused_weight)
        if self.training:
            return self.forward_branches(h)
        return self.forward_folded(h)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Deployment: keep only the folded 11x11 kernel (timm.utils.reparameterize_model calls this).

        The branch weights are removed, so the module cannot train or load branch weights afterwards."""
        fused = self.folded_weight().detach()
        for name in ('kernel_3', 'kernel_3_1', 'kernel_3_2', 'alpha'):
            delattr(self, name)
        self.fused_weight = fused

    def extra_repr(self) -> str:
        return f'{self.dim}, dilations={DILATIONS}, padding=replicate' + (', fused' if self.fused_weight is not None
                                                                          else '')
