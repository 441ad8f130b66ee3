"""GroupMamba as an mmdet / mmseg backbone (``type='vssm.GroupMamba'``)."""
from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['GroupMambaBackbone']


@MODELS.register_module(name='GroupMamba')
class GroupMambaBackbone(HierarchicalBackbone):
    """GroupMamba stages 0..3 (strides 4..32) with per-output LayerNorms; the class-token head is pruned. The
    stem holds BatchNorms: ``norm_eval=True`` keeps their ImageNet statistics. Loads the official HF releases
    (bare EMA state dicts) and train.py checkpoints. See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.groupmamba'
    default_arch = 'groupmamba_tiny'
