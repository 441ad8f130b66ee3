"""MobileMamba as an mmdet / mmseg backbone (``type='vssm.MobileMamba'``)."""
from .base import HierarchicalBackbone
from .registry import MODELS

__all__ = ['MobileMambaBackbone']


@MODELS.register_module(name='MobileMamba')
class MobileMambaBackbone(HierarchicalBackbone):
    """MobileMamba stages 0..2 at strides 16, 32, 64 (the network starts at stride 16; there are no stride-4 / 8
    maps). The model is BatchNorm throughout: ``norm_eval=True`` keeps the ImageNet statistics. Loads the
    official trainer checkpoints ({net, net_E}: EMA preferred) and bare net.pth / net_E.pth. See
    HierarchicalBackbone for the arguments; ``out_indices`` are 0..2 here."""
    family_module = 'vssm.models.mobilemamba'
    default_arch = 'mobilemamba_b'
