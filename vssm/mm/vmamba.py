"""VMamba as an mmdet / mmseg backbone (``type='vssm.VMamba'``)."""
from typing import Optional, Sequence

from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['VMambaBackbone']


@MODELS.register_module(name='VMamba')
class VMambaBackbone(HierarchicalBackbone):
    """VMamba stages 0..3 (strides 4..32) with per-output LayerNorms (``outnorm{i}``, as the official
    Backbone_VSSM). Loads our classification checkpoints and the official releases (v0 / v2 layouts).
    See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.vmamba'

    def __init__(
            self,
            arch: str = 'vmamba_tiny_s1l8',
            out_indices: Sequence[int] = (0, 1, 2, 3),
            frozen_stages: int = -1,
            norm_eval: bool = False,
            out_norm: bool = True,
            with_cp: bool = False,
            pretrained: Optional[str] = None,
            init_cfg=None,
            **model_kwargs,
    ):
        super().__init__(arch, out_indices, frozen_stages, norm_eval, out_norm, with_cp, pretrained, init_cfg,
                         **model_kwargs)
