"""Spatial-Mamba as an mmdet / mmseg backbone (``type='vssm.SpatialMamba'``)."""
from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['SpatialMambaBackbone']


@MODELS.register_module(name='SpatialMamba')
class SpatialMambaBackbone(HierarchicalBackbone):
    """Spatial-Mamba stages 0..3 (strides 4..32) with per-output LayerNorms (``outnorm{i}``, as the official
    backbone). The stem and downsamples hold BatchNorms, which the official detection and segmentation runs keep
    training (``norm_eval=False``). Loads official classification checkpoints (``model`` / ``model_ema``). See
    HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.spatial_mamba'
    default_arch = 'spatial_mamba_tiny'
