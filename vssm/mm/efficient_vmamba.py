"""EfficientVMamba as an mmdet / mmseg backbone (``type='vssm.EfficientVMamba'``)."""
from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['EfficientVMambaBackbone']


@MODELS.register_module(name='EfficientVMamba')
class EfficientVMambaBackbone(HierarchicalBackbone):
    """EfficientVMamba stages 0..3 (strides 4..32) with per-output LayerNorms. The EVSS conv branches and
    the inverted-residual stages hold BatchNorms: ``norm_eval=True`` keeps their statistics frozen, as usual
    for small detection batches. See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.efficient_vmamba'
    default_arch = 'efficient_vmamba_tiny'
