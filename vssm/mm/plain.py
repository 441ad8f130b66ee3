"""Plain (single-resolution) vssm models as dense backbones: a ViTDet-style simple feature pyramid.

A Vim-like model yields one token map at stride 16. The pyramid turns block outputs into maps at strides
4, 8, 16, 32 (ViTDet, Li et al. 2022): 2x2 transposed convs up (x4: two of them with LayerNorm + GELU
between), identity, 2x2 max-pool down. With one block index every scale comes from that block (ViTDet);
with one index per scale each scale reads its own block (BEiT / Vim segmentation style). The position
embedding follows the input size: the timm model resamples its table to every input grid, and a
checkpoint's table is resampled to the ``img_size`` grid when loaded.
"""
from typing import List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
from timm.layers import LayerNorm2d
from timm.models._features import FeatureGetterNet

from .base import TimmBackboneBase

__all__ = ['PlainBackbone', 'simple_pyramid_level']


def simple_pyramid_level(dim: int, scale: float) -> Tuple[nn.Module, int]:
    """One ViTDet pyramid level from a stride-16 map of `dim` channels -> (module, output channels)."""
    if scale == 4:
        return nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), LayerNorm2d(dim // 2), nn.GELU(),
            nn.ConvTranspose2d(dim // 2, dim // 4, 2, stride=2)), dim // 4
    if scale == 2:
        return nn.ConvTranspose2d(dim, dim // 2, 2, stride=2), dim // 2
    if scale == 1:
        return nn.Identity(), dim
    if scale == 0.5:
        return nn.MaxPool2d(2, stride=2, ceil_mode=True), dim
    raise ValueError(f'pyramid scales must be from (4, 2, 1, 0.5), got {scale}')


class PlainBackbone(TimmBackboneBase):
    """A Vim-like vssm model with a simple feature pyramid (strides 4, 8, 16, 32 for patch 16).

    Args:
        arch: timm model name of the family (e.g. 'vim_tiny'); None: the subclass's ``default_arch``.
        img_size: the training image size the stored position embedding is laid out for (a checkpoint's
            table is resampled to it); other input sizes are resampled on the fly.
        out_indices: block indices to read: one (ViTDet: every scale from it) or one per scale.
        scales: pyramid levels relative to the token map (4, 2, 1, 0.5 -> strides 4, 8, 16, 32).
        frozen_stages: -1 trains everything; 0 freezes the patch embedding, position embedding and class
            token; k > 0 also freezes blocks 0..k-1.
        norm_eval: keep BatchNorm layers in eval mode (none in these models; accepted for uniform configs).
        out_norm: a LayerNorm over channels on each output (``outnorm{i}``).
        with_cp: gradient checkpointing of the blocks.
        pretrained / init_cfg: as HierarchicalBackbone.
        **model_kwargs: passed to the timm constructor (embed_dim, depth, drop_path_rate, ...).
    """

    def __init__(
            self,
            arch: Optional[str] = None,
            img_size: Union[int, Tuple[int, int]] = 512,
            out_indices: Sequence[int] = (-1,),
            scales: Sequence[float] = (4, 2, 1, 0.5),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: bool = True,
            with_cp: bool = False,
            pretrained: Optional[str] = None,
            init_cfg=None,
            **model_kwargs,
    ):
        model_kwargs = dict(model_kwargs, img_size=img_size)
        super().__init__(arch, model_kwargs, pretrained, init_cfg)
        if len(out_indices) not in (1, len(scales)):
            raise ValueError(f'out_indices must hold one block index or one per scale ({len(scales)}), '
                             f'got {tuple(out_indices)}')
        model = timm.create_model(self.arch, pretrained=False, num_classes=0, **model_kwargs)
        # norm=True: each tapped block output goes through the model's final norm (as its classifier sees it)
        self.body = FeatureGetterNet(model, out_indices=list(out_indices), norm=True)
        taps = list(self.body.out_indices)
        self.tap_for_scale = [0] * len(scales) if len(taps) == 1 else list(range(len(scales)))
        self.block_indices = tuple(taps)
        self.out_indices = tuple(range(len(scales)))  # outputs are numbered by pyramid level
        dim = model.embed_dim
        levels, channels = [], []
        for s in scales:
            module, ch = simple_pyramid_level(dim, s)
            levels.append(module)
            channels.append(ch)
        self.pyramid = nn.ModuleList(levels)
        self.channels = tuple(channels)
        stride = model.patch_embed.stride
        self.strides = tuple(int(stride / s) for s in scales)
        self.out_norm = out_norm
        if out_norm:
            for i, ch in enumerate(channels):
                self.add_module(f'outnorm{i}', LayerNorm2d(ch))
        depth = len(model.blocks)
        if not -1 <= frozen_stages <= depth:
            raise ValueError(f'frozen_stages must be in [-1, {depth}] (blocks), got {frozen_stages}')
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        if with_cp:
            model.set_grad_checkpointing(True)
        self._freeze_stages()

    def _extra_state_prefixes(self) -> Tuple[str, ...]:
        return ('outnorm', 'pyramid.')

    def _frozen_parts(self) -> List[Union[nn.Module, nn.Parameter]]:
        if self.frozen_stages < 0:
            return []
        model = self.body.model
        parts = [model.patch_embed, model.pos_embed]
        if getattr(model, 'cls_token', None) is not None:
            parts.append(model.cls_token)
        parts.extend(model.blocks[:self.frozen_stages])
        return parts

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        taps = self.body(x)
        outs = []
        for i, (level, tap) in enumerate(zip(self.pyramid, self.tap_for_scale)):
            y = level(taps[tap])
            if self.out_norm:
                y = getattr(self, f'outnorm{i}')(y)
            outs.append(y.contiguous())
        return tuple(outs)
