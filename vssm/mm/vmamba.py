"""VMamba as an mmdet / mmseg backbone (``type='vssm.VMamba'``)."""
from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['VMambaBackbone']


@MODELS.register_module(name='VMamba')
class VMambaBackbone(HierarchicalBackbone):
    """VMamba stages 0..3 (strides 4..32) with per-output LayerNorms (``outnorm{i}``, as the official
    Backbone_VSSM). Loads our classification checkpoints and the official releases (v0 / v2 layouts).
    See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.vmamba'
    default_arch = 'vmamba_tiny_s1l8'
