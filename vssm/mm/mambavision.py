"""MambaVision as an mmdet / mmseg backbone (``type='vssm.MambaVision'``)."""
from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['MambaVisionBackbone']


@MODELS.register_module(name='MambaVision')
class MambaVisionBackbone(HierarchicalBackbone):
    """MambaVision stages 0..3 (strides 4..32) with per-output LayerNorms; the BatchNorm head is pruned. The stem
    and conv stages hold BatchNorms: ``norm_eval=True`` keeps their ImageNet statistics. Loads NVIDIA's HF files
    (CheckpointSaver .pth.tar, safetensors). Window sizes follow ``window_sizes`` (default the 224 px ones);
    any map size is padded to whole windows. See HierarchicalBackbone for the arguments."""
    family_module = 'vssm.models.mambavision'
    default_arch = 'mambavision_tiny'
