"""GroupMamba as an mmdet / mmseg backbone (``type='vssm.GroupMamba'``)."""
from typing import Optional, Sequence

from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['GroupMambaBackbone']


@MODELS.register_module(name='GroupMamba')
class GroupMambaBackbone(HierarchicalBackbone):
    """GroupMamba stages 0..3 (strides 4..32) with per-output LayerNorms; the class-token head is pruned. The
    stem holds BatchNorms: ``norm_eval=True`` keeps their ImageNet statistics. Loads the official HF releases
    (bare EMA state dicts) and train.py checkpoints. See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.groupmamba'

    def __init__(
            self,
            arch: str = 'groupmamba_tiny',
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
