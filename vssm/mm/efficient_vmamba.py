"""EfficientVMamba as an mmdet / mmseg backbone (``type='vssm.EfficientVMamba'``)."""
from typing import Optional, Sequence

from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['EfficientVMambaBackbone']


@MODELS.register_module(name='EfficientVMamba')
class EfficientVMambaBackbone(HierarchicalBackbone):
    """EfficientVMamba stages 0..3 (strides 4..32) with per-output LayerNorms. The EVSS conv branches and
    the inverted-residual stages hold BatchNorms: ``norm_eval=True`` keeps their statistics frozen, as usual
    for small detection batches. See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.efficient_vmamba'

    def __init__(
            self,
            arch: str = 'efficient_vmamba_tiny',
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
